"""ResNets with torchvision's ImageNet layout: a 7x7 stride-2 stem and a 3x3 stride-2 max-pool before the stages.

They exist so that checkpoints saved from ``torchvision.models.resnet18`` / ``resnet50`` (and the robust ImageNet
models built on them, e.g. RobustBench's Salman2020Do / Engstrom2019Robustness entries) can be imported
(:mod:`robustprune.models.keymaps` maps torchvision's tensor names onto these). Module names follow the rest of the
zoo::

    normalize -> stem (conv 7x7/2, BN, ReLU, max-pool 3x3/2) -> layer1 .. layer4 -> pool -> flatten -> fc

``layer2.0.shortcut.0`` / ``.1`` are the 1x1 projection conv and its BN (torchvision's ``downsample.0`` / ``.1``).
The bottleneck block strides in its 3x3 conv (torchvision's "ResNet v1.5").
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from robustprune.models.base import MODELS, Net, Normalize, init_resnet_, scaled
from robustprune.models.resnets import BasicBlock, projection_shortcut


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here), 1x1 expand (x4), each followed by BN; ReLU after the residual sum."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = projection_shortcut(c_in, c_out, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def _imagenet_resnet(bottleneck: bool, blocks: tuple[int, ...], *, num_classes: int, in_channels: int,
                     width: float, mean, std) -> Net:
    stem = scaled(64, width)
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    parts["stem"] = nn.Sequential(
        nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    c_in = stem
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
        planes = scaled(planes, width)
        layer = []
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            if bottleneck:
                layer.append(Bottleneck(c_in, planes, stride))
                c_in = planes * Bottleneck.expansion
            else:
                layer.append(BasicBlock(c_in, planes, stride))
                c_in = planes
        parts[f"layer{i + 1}"] = nn.Sequential(*layer)
    parts["pool"] = nn.AdaptiveAvgPool2d(1)
    parts["flatten"] = nn.Flatten(1)
    parts["fc"] = nn.Linear(c_in, num_classes)
    model = Net(Normalize(mean, std), parts)
    init_resnet_(model)
    return model


@MODELS.register("resnet18-tv")
def resnet18_tv(*, num_classes=10, in_channels=3, input_size=224, width=1.0, mean=(0.0,), std=(1.0,)) -> Net:
    """ResNet-18 in torchvision's ImageNet layout (7x7/2 stem + max-pool); loads torchvision resnet18 weights.

    [2,2,2,2] basic blocks of 64..512 channels, FC. ``width`` scales every channel count."""
    del input_size
    return _imagenet_resnet(False, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, width=width,
                            mean=mean, std=std)


@MODELS.register("resnet50-tv")
def resnet50_tv(*, num_classes=10, in_channels=3, input_size=224, width=1.0, mean=(0.0,), std=(1.0,)) -> Net:
    """ResNet-50 in torchvision's ImageNet layout (7x7/2 stem + max-pool); loads torchvision resnet50 weights.

    [3,4,6,3] bottlenecks (stride in the 3x3 conv), 2048-d FC. ``width`` scales every channel count."""
    del input_size
    return _imagenet_resnet(True, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, width=width,
                            mean=mean, std=std)
