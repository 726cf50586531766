"""Architecture registry. Every model takes float32 NCHW pixels in [0, 1] and returns logits.

The first module of every model is :class:`Normalize` (mean/std as buffers), so every ε is in pixel
units. Features are taken with forward hooks on named modules (``features.3``, ``layer2.0.conv1``).

>>> from robustprune.models import create_model
>>> m = create_model("lenet5-caffe", num_classes=10, in_channels=1, input_size=28)
>>> sum(p.numel() for p in m.parameters())
431080
"""

from robustprune.models.base import MODELS, Net, Normalize
from robustprune.models.convnets import VGG_CFGS
from robustprune.models.custom import build_model, load_factory
from robustprune.models.factory import create_model, model_for_dataset, model_names
from robustprune.models.resnets import BasicBlock, PreActBlock, wide_resnet

__all__ = [
    "MODELS",
    "VGG_CFGS",
    "build_model",
    "load_factory",
    "BasicBlock",
    "Net",
    "Normalize",
    "PreActBlock",
    "create_model",
    "model_for_dataset",
    "model_names",
    "wide_resnet",
]
