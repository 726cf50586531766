"""Physical removal of pruned output units: a smaller *dense* model whose logits equal the masked model's.

Structured pruning methods (Beta-Bernoulli dropout, VIB, filter pruning) switch off whole output units of a
layer (a Conv2d filter / a Linear neuron). Zeros in a mask save nothing on dense hardware; this module cuts the
units out so that the FLOPs, activation memory and latency of the smaller model can be *measured*.

**What can be cut (who is coupled).** :func:`unit_sites` reads the ``torch.fx`` graph (modules and the
functional style alike: ``torch.relu``, ``F.max_pool2d``, ``torch.flatten(x, 1)``, ``x.view(x.size(0), -1)``;
forward hooks for a model fx cannot trace) and follows each hidden ``Conv2d`` / ``Linear`` output through
operations that act on each unit separately -- BatchNorm (sliced), element-wise activations with ``f(0) = 0`` (ReLU, LeakyReLU, ELU, GELU,
SiLU, Tanh, ...), max/avg pooling, Dropout, Identity, ``Flatten(1)`` -- to the single ``Conv2d`` (groups = 1)
or ``Linear`` that consumes them. Such a *site* is supported: the producer's output units, its BatchNorm and
the consumer's input channels (or, after a ``Flatten``, the consumer's input columns ``c*P .. c*P+P-1`` for a
unit with ``P`` positions) are cut together. Anything else breaks the chain and makes the site unsupported, with
the reason: an output used by two modules (a residual shortcut), used by no module (a functional residual sum
``out + shortcut``), or passing through a module we cannot reason about. On the sequential models
(``lenet5-caffe``, ``cnn5``, ``vgg*``, ``lenet-*-w``) every hidden layer is supported; on ResNets only the inner
conv of each block (``layerX.Y.conv1``) is, whose output feeds ``bn1 -> relu1 -> conv2`` alone.

**What the masked model is (how to cut).** ``unit_scales[name]`` is a vector with one factor per output unit of
layer ``name``: the masked model multiplies the unit *after* its BatchNorm (or after the layer itself when no
BatchNorm follows), before the activation -- where :mod:`robustprune.methods.bayesian` puts its gates. A factor
0 removes the unit; a non-zero factor is folded into the BatchNorm's affine parameters (``gamma, beta``) or into
the layer's weight row and bias, which is exact. ``input_scales[name]`` multiplies the *input features* of a
``Linear`` fed by a ``Flatten`` (the Beta-Bernoulli gate on LeNet's 800 flattened features); non-zero factors
are folded into the weight columns, zero ones dropped with :class:`SelectLinear` (an ``nn.Linear`` that first
picks the kept input features), and a unit whose every flattened feature is dropped is removed upstream too.

:func:`slim_model` checks by default that the slim model's logits equal the reference's on the example (real
inputs) and random inputs (``atol`` relative to the logit scale) and raises when they do not -- so a structure the
tracer misread can never produce a silently wrong model. With ``masks=`` (a pruned checkpoint) the reference is the
pruned model itself, not a masked re-definition of it: a unit is cut only when it is removed entirely (weights,
bias, BatchNorm; :mod:`robustprune.sparsity.units`) or never read.

Files: :mod:`.trace` (sites), :mod:`.cut` (:func:`slim_model`), :mod:`.fold` (:func:`fold_unit_scales`),
:mod:`.check` (the equivalence check), :mod:`.shapes` (layer shapes of a slim checkpoint).
"""

from robustprune.sparsity.slim.check import check_equivalent, masked_forward_hooks
from robustprune.sparsity.slim.cut import SelectLinear, SlimResult, slim_model
from robustprune.sparsity.slim.fold import fold_unit_scales
from robustprune.sparsity.slim.shapes import layer_shapes, rebuild_layers
from robustprune.sparsity.slim.trace import (
    PER_UNIT,
    ZERO_PRESERVING,
    UnitSite,
    example_input,
    supported_sites,
    unit_sites,
    units_per_layer,
)

__all__ = [
    "PER_UNIT", "ZERO_PRESERVING", "SelectLinear", "SlimResult", "UnitSite", "check_equivalent", "example_input",
    "fold_unit_scales", "layer_shapes", "masked_forward_hooks", "rebuild_layers", "slim_model", "supported_sites",
    "unit_sites", "units_per_layer",
]
