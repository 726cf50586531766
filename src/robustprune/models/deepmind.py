"""DeepMind's WideResNet and PreActResNet as RobustBench runs them (``DMWideResNet`` / ``DMPreActResNet`` in
``robustbench/model_zoo/architectures/dm_wide_resnet.py``; Gowal2020/2021, Rebuffi2021, Wang2023 and most entries at
the top of the CIFAR leaderboards), so their checkpoints can be imported and pruned.

They differ from ``wrn-*`` / ``preact-resnet18`` in what they compute, not only in names: Swish (SiLU) activations,
and TensorFlow's "SAME" padding of the first conv of each block -- the input is padded by (1, 1, 1, 1) for stride
1 and by (0, 1, 0, 1), right and bottom only, for stride 2, then convolved without padding. The pre-activation
ResNet's projection shortcuts are 3x3 convs on the (padded) raw block input. Module names follow the rest of the
zoo (``stem.0``, ``layer1.0.conv1`` ... ``final.0``, ``fc``; :mod:`robustprune.models.keymaps` maps DeepMind's).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from robustprune.models.base import MODELS, Net, Normalize, init_resnet_, scaled


class DMBlock(nn.Module):
    """BN-SiLU, SAME-padded 3x3 conv (stride here), BN-SiLU, 3x3 conv, + shortcut.

    ``wide=True`` (DMWideResNet's ``_Block``): a 1x1 projection of the pre-activated input when the channel count
    changes. ``wide=False`` (DMPreActResNet's ``_PreActBlock``): a SAME-padded 3x3 projection of the raw input when
    the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, *, wide: bool = True) -> None:
        super().__init__()
        self.wide = wide
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.act1 = nn.SiLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = nn.SiLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.projects = c_in != c_out if wide else (stride != 1 or c_in != c_out)
        if self.projects:
            k = 1 if wide else 3
            self.shortcut: nn.Module = nn.Sequential(nn.Conv2d(c_in, c_out, k, stride=stride, padding=0, bias=False))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        if not self.projects:
            shortcut = x
        elif self.wide:
            shortcut = self.shortcut(pre)
        else:
            shortcut = self.shortcut(F.pad(x, self.pad))
        out = self.conv1(F.pad(pre, self.pad))
        out = self.conv2(self.act2(self.bn2(out)))
        return out + shortcut


def _dm_net(*, stem: int, stages: list[int], blocks: int | tuple[int, ...], wide: bool, num_classes: int,
            in_channels: int, mean, std) -> Net:
    counts = (blocks,) * len(stages) if isinstance(blocks, int) else blocks
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    parts["stem"] = nn.Sequential(nn.Conv2d(in_channels, stem, 3, padding=1, bias=False))
    c_in = stem
    for i, (c_out, n) in enumerate(zip(stages, counts, strict=True)):
        stride = 1 if i == 0 else 2
        layer = []
        for j in range(n):
            layer.append(DMBlock(c_in, c_out, stride if j == 0 else 1, wide=wide))
            c_in = c_out
        parts[f"layer{i + 1}"] = nn.Sequential(*layer)
    parts["final"] = nn.Sequential(nn.BatchNorm2d(c_in), nn.SiLU())
    parts["pool"] = nn.AdaptiveAvgPool2d(1)
    parts["flatten"] = nn.Flatten(1)
    parts["fc"] = nn.Linear(c_in, num_classes)
    model = Net(Normalize(mean, std), parts)
    init_resnet_(model)
    return model


def dm_wide_resnet(depth: int, widen: int, *, num_classes=10, in_channels=3, width=1.0, mean=(0.0,), std=(1.0,)
                   ) -> Net:
    """DMWideResNet(depth, width=widen, activation_fn=Swish): 16 stem, 3 stages of (depth - 4) / 6 blocks."""
    return _dm_net(stem=scaled(16, width), stages=[scaled(c * widen, width) for c in (16, 32, 64)],
                   blocks=(depth - 4) // 6, wide=True, num_classes=num_classes, in_channels=in_channels, mean=mean,
                   std=std)


def _register_wrn(depth: int, widen: int) -> None:
    name = f"dm-wrn-{depth}-{widen}"

    def build(*, num_classes=10, in_channels=3, input_size=32, width=1.0, mean=(0.0,), std=(1.0,)) -> Net:
        del input_size
        return dm_wide_resnet(depth, widen, num_classes=num_classes, in_channels=in_channels, width=width,
                              mean=mean, std=std)

    build.__doc__ = (f"DeepMind's WideResNet-{depth}-{widen} as RobustBench runs it (DMWideResNet, Swish, SAME "
                     "padding); loads its checkpoints (e.g. Gowal2020/2021, Rebuffi2021, Wang2023 entries).")
    MODELS.register(name)(build)


for _depth, _widen in ((28, 10), (34, 10), (34, 20), (70, 16)):
    _register_wrn(_depth, _widen)


@MODELS.register("dm-preact-resnet18")
def dm_preact_resnet18(*, num_classes=10, in_channels=3, input_size=32, width=1.0, mean=(0.0,), std=(1.0,)) -> Net:
    """DeepMind's PreActResNet-18 as RobustBench runs it (DMPreActResNet, Swish, SAME padding).

    3x3 projection shortcuts on the block input; loads its checkpoints (e.g. Rebuffi2021Fixing_R18)."""
    del input_size
    return _dm_net(stem=scaled(64, width), stages=[scaled(c, width) for c in (64, 128, 256, 512)], blocks=2,
                   wide=False, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
