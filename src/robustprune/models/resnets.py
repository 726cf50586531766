"""Residual networks for small inputs: ResNet-18, pre-activation ResNets and WideResNets.

Layout (module names)::

    normalize -> stem -> layer1 -> layer2 -> ... -> [final (pre-activation nets)] -> pool -> flatten -> fc

``stem`` is a 3x3 stride-1 conv (plus BN + ReLU for post-activation ResNets); ``pool`` is
``AdaptiveAvgPool2d(1)``, so any input size works (>= 8 recommended: three stride-2 stages).
Blocks name their layers ``conv1``, ``bn1``, ``relu1``, ``conv2``, ``bn2``, ``relu2`` and
``shortcut`` (``shortcut.0`` is the 1x1 projection conv when shapes change), e.g. ``layer2.0.conv1``.
Convs are Kaiming-normal (fan_out) initialised; BN weight 1, bias 0.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from robustprune.errors import ConfigError
from robustprune.models.base import MODELS, Net, Normalize, init_resnet_, scaled


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def projection_shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """A residual block's shortcut: 1x1 conv + BatchNorm when the shape changes, else the identity (the names
    ``shortcut.0`` / ``shortcut.1`` are what checkpoints and the key maps expect)."""
    if stride != 1 or c_in != c_out:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
    return nn.Identity()


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016a): conv-BN-ReLU-conv-BN (+ shortcut) -ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = projection_shortcut(c_in, c_out, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b): BN-ReLU-conv-BN-ReLU-conv + shortcut.

    When the shape changes, the 1x1 projection shortcut takes the pre-activated input (as in the
    reference PreActResNet and WideResNet codes); otherwise the shortcut is the identity on ``x``.
    This is also the WideResNet block (Zagoruyko & Komodakis) with dropout 0. ``shortcut_on_input=True`` feeds
    the projection the block's raw input instead (RobustBench's ``PreActBlock`` with ``out_shortcut=False``, the
    block of its ``PreActResNet18()``, e.g. Wong2020Fast).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, *, shortcut_on_input: bool = False) -> None:
        super().__init__()
        self.shortcut_on_input = shortcut_on_input
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv3x3(c_out, c_out)
        self.projects = stride != 1 or c_in != c_out
        if self.projects:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        shortcut = self.shortcut(x if self.shortcut_on_input else pre) if self.projects else x
        out = self.conv1(pre)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


def _resnet(
    *,
    block: type[BasicBlock] | type[PreActBlock],
    stem_channels: int,
    stage_channels: Sequence[int],
    blocks_per_stage: Sequence[int],
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    final: bool = True,
    shortcut_on_input: bool = False,
) -> Net:
    """Stem conv (stride 1), stages (first stage stride 1, then stride 2), [final BN-ReLU], pool, fc.

    Pre-activation nets only: ``final=False`` drops the BN-ReLU before the pool, ``shortcut_on_input`` is passed to
    every :class:`PreActBlock`."""
    preact = block is PreActBlock
    extra = {"shortcut_on_input": True} if preact and shortcut_on_input else {}
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    if preact:
        parts["stem"] = nn.Sequential(_conv3x3(in_channels, stem_channels))
    else:
        parts["stem"] = nn.Sequential(
            _conv3x3(in_channels, stem_channels), nn.BatchNorm2d(stem_channels), nn.ReLU()
        )
    c_in = stem_channels
    for i, (c_out, n) in enumerate(zip(stage_channels, blocks_per_stage, strict=True)):
        stride = 1 if i == 0 else 2
        blocks = []
        for j in range(n):
            blocks.append(block(c_in, c_out, stride if j == 0 else 1, **extra))
            c_in = c_out
        parts[f"layer{i + 1}"] = nn.Sequential(*blocks)
    if preact and final:
        parts["final"] = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU())
    parts["pool"] = nn.AdaptiveAvgPool2d(1)
    parts["flatten"] = nn.Flatten(1)
    parts["fc"] = nn.Linear(c_in, num_classes)
    model = Net(Normalize(mean, std), parts)
    init_resnet_(model)
    return model


@MODELS.register("resnet18")
def resnet18(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """ResNet-18, CIFAR style: 3x3 stem (64), [2,2,2,2] basic blocks of 64/128/256/512, avg-pool, FC.

    ``width`` scales every channel count. ``input_size`` only needs to be >= 1 (global pooling).
    """
    del input_size
    return _resnet(
        block=BasicBlock,
        stem_channels=scaled(64, width),
        stage_channels=[scaled(c, width) for c in (64, 128, 256, 512)],
        blocks_per_stage=(2, 2, 2, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )


@MODELS.register("resnet18-w")
def resnet18_w(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """ResNet-18 of Ye2019 (AdvPrune) (Table 1) with base widths 4w, 8w, 16w, 32w (1/16 of 64..512, times w).

    ``width`` is the factor w: w = 16 is the standard CIFAR ResNet-18.
    """
    return resnet18(
        num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        width=width / 16.0, mean=mean, std=std,
    )


@MODELS.register("preact-resnet8")
def preact_resnet8(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """Pre-activation ResNet-8 (Merkle2022): 3x3 stem (16), three stages of one pre-act block each
    (16, 32, 64 channels; strides 1, 2, 2), final BN-ReLU, avg-pool, FC(64, classes).

    8 weight layers = stem conv + 3 blocks x 2 convs + FC (1x1 projection shortcuts not counted).
    ``width`` scales every channel count.
    """
    del input_size
    return _resnet(
        block=PreActBlock,
        stem_channels=scaled(16, width),
        stage_channels=[scaled(c, width) for c in (16, 32, 64)],
        blocks_per_stage=(1, 1, 1),
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )


@MODELS.register("preact-resnet18")
def preact_resnet18(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """Pre-activation ResNet-18: 3x3 stem (64), [2,2,2,2] pre-act blocks of 64/128/256/512,
    final BN-ReLU, avg-pool, FC(512, classes). ``width`` scales every channel count.
    """
    del input_size
    return _resnet(
        block=PreActBlock,
        stem_channels=scaled(64, width),
        stage_channels=[scaled(c, width) for c in (64, 128, 256, 512)],
        blocks_per_stage=(2, 2, 2, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )


def wide_resnet(
    depth: int,
    widen: int,
    *,
    num_classes=10,
    in_channels=1,
    input_size=28,
    width=1.0,
    mean=(0.0,),
    std=(1.0,),
) -> Net:
    """WideResNet-depth-widen (Zagoruyko & Komodakis 2016), dropout 0.

    3x3 stem (16), three stages of (depth - 4) / 6 pre-act blocks with 16k, 32k, 64k channels
    (strides 1, 2, 2), final BN-ReLU, avg-pool, FC. ``width`` scales every channel count.
    """
    del input_size
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ConfigError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
    n = (depth - 4) // 6
    return _resnet(
        block=PreActBlock,
        stem_channels=scaled(16, width),
        stage_channels=[scaled(c * widen, width) for c in (16, 32, 64)],
        blocks_per_stage=(n, n, n),
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )


@MODELS.register("wrn-28-4")
def wrn_28_4(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """WideResNet-28-4: 16 stem, 3 stages x 4 pre-act blocks of 64/128/256 channels, dropout 0."""
    return wide_resnet(
        28, 4, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        width=width, mean=mean, std=std,
    )


@MODELS.register("wrn-34-10")
def wrn_34_10(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """WideResNet-34-10: 16 stem, 3 stages x 5 pre-act blocks of 160/320/640 channels, dropout 0."""
    return wide_resnet(
        34, 10, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        width=width, mean=mean, std=std,
    )


@MODELS.register("preact-resnet18-rb")
def preact_resnet18_rb(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """RobustBench's PreActResNet18() (Wong2020Fast): shortcuts on the block input, no BN before the pool.

    As ``preact-resnet18`` but the 1x1 projection shortcuts take the block's raw input and there is no BN-ReLU before
    the pool. ``width`` scales every channel count.
    """
    del input_size
    return _resnet(
        block=PreActBlock,
        stem_channels=scaled(64, width),
        stage_channels=[scaled(c, width) for c in (64, 128, 256, 512)],
        blocks_per_stage=(2, 2, 2, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
        final=False,
        shortcut_on_input=True,
    )


@MODELS.register("wrn-28-10")
def wrn_28_10(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """WideResNet-28-10: 16 stem, 3 stages x 4 pre-act blocks of 160/320/640 channels, dropout 0.

    RobustBench's ``WideResNet(depth=28, widen_factor=10)``, the most common CIFAR-10 L-inf entry."""
    return wide_resnet(
        28, 10, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        width=width, mean=mean, std=std,
    )


@MODELS.register("wrn-70-16")
def wrn_70_16(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """WideResNet-70-16: 16 stem, 3 stages x 11 pre-act blocks of 256/512/1024 channels, dropout 0.

    RobustBench's ``WideResNet(depth=70, widen_factor=16)``, e.g. Jia2022LAS-AT_70_16."""
    return wide_resnet(
        70, 16, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        width=width, mean=mean, std=std,
    )
