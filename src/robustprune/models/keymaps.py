"""Key maps: the tensor names of other model zoos -> the names of the architectures here.

A checkpoint saved by another tool names its tensors after that tool's modules (RobustBench's WideResNet says
``block1.layer.0.conv1.weight``, torchvision's ResNet ``layer2.0.downsample.0.weight``); the same network here says
``layer1.0.conv1.weight`` and ``layer2.0.shortcut.0.weight``. A :class:`KeyMap` is the list of renaming rules of one
zoo's layout (regular expressions, first match wins) plus the names that layout holds but never uses in its forward
pass (RobustBench's ``sub_block1``), read from the zoo's own model definitions:

- ``robustbench-wideresnet``: ``robustbench/model_zoo/architectures/wide_resnet.py`` (the TRADES WideResNet):
  ``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``; fills ``wrn-*``.
- ``robustbench-preactresnet``: ``resnet.py``'s ``PreActResNet``: ``conv1``, ``layer{1..4}.{i}.{bn1,conv1,bn2,conv2,
  shortcut.0}``, ``bn`` (only with ``bn_before_fc``), ``linear``; fills ``preact-resnet18`` (with ``bn``: the
  Rice2020 / Kireev2021 variant) and ``preact-resnet18-rb`` (without: ``PreActResNet18()``, Wong2020Fast).
- ``robustbench-resnet``: ``resnet.py``'s ``ResNet`` (the common CIFAR ResNet-18): ``conv1``, ``bn1``,
  ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2,shortcut.{0,1}}``, ``linear``; fills ``resnet18``.
- ``torchvision-resnet``: ``torchvision/models/resnet.py``: ``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,
  bn2[,conv3,bn3],downsample.{0,1}}``, ``fc``; fills ``resnet18-tv`` / ``resnet50-tv`` (and ``resnet18`` when the
  stem is a 3x3 conv).
- ``deepmind-wideresnet``: ``dm_wide_resnet.py``'s ``DMWideResNet``: ``init_conv``, ``layer.{g}.block.{i}.{batchnorm_0,
  conv_0,batchnorm_1,conv_1,shortcut}``, ``batchnorm``, ``logits``; fills ``dm-wrn-*``.
- ``deepmind-preactresnet``: ``dm_wide_resnet.py``'s ``DMPreActResNet``: ``conv_2d``, ``layer_{g}.{i}.{batchnorm_0,
  conv_2d_1,batchnorm_1,conv_2d_2,shortcut}``, ``batchnorm``, ``logits``; fills ``dm-preact-resnet18``.

:func:`fit_keys` tries every map (and the names as they are) against a model's state dict and keeps the one that
places the most tensors; whatever is left over is for the caller to report.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyMap:
    """One zoo's tensor names. ``rules``: (pattern, replacement string or function) for :func:`re.sub`, the first
    matching pattern wins
    and a name no pattern matches stays as it is; ``unused``: patterns of tensors the zoo's forward pass never
    reads (dropped, and listed in the provenance); ``source``: where the names were read."""

    name: str
    source: str
    rules: tuple[tuple[str, str | Callable[[re.Match], str]], ...]
    unused: tuple[str, ...] = ()
    raw_pixels: str = ""
    """Non-empty when the zoo's model takes raw [0, 1] pixels unless the file holds its normalisation (the reason,
    for the provenance); empty: its users normalise with the dataset's statistics."""

    def rename(self, key: str) -> str:
        for pattern, repl in self.rules:
            if re.match(pattern, key):
                return re.sub(pattern, repl, key, count=1)
        return key

    def is_unused(self, key: str) -> bool:
        return any(re.match(p, key) for p in self.unused)


_DM_BLOCK = {"batchnorm_0": "bn1", "conv_0": "conv1", "conv_2d_1": "conv1", "batchnorm_1": "bn2", "conv_1": "conv2",
             "conv_2d_2": "conv2"}



def _dm_block_name(m: re.Match) -> str:
    """``layer.G.block.I.NAME.`` / ``layer_G.I.NAME.`` -> ``layer{G+1}.I.{ours}.`` (DeepMind counts stages from 0)."""
    return f"layer{int(m[1]) + 1}.{m[2]}.{_DM_BLOCK.get(m[3], m[3])}."


_RB_RAW = ("RobustBench's (TRADES') WideResNet takes raw [0, 1] pixels; its entries that normalise carry mu/sigma "
           "buffers, which the file would hold")

IDENTITY = KeyMap("none", "the names as they are (a robustprune model, or your own model's names)", ())

KEY_MAPS: dict[str, KeyMap] = {m.name: m for m in (
    KeyMap(
        "robustbench-wideresnet",
        "RobustBench robustbench/model_zoo/architectures/wide_resnet.py (WideResNet, from TRADES)",
        (
            (r"^conv1\.", "stem.0."),
            (r"^block(\d)\.layer\.(\d+)\.convShortcut\.", r"layer\1.\2.shortcut.0."),
            (r"^block(\d)\.layer\.(\d+)\.", r"layer\1.\2."),
            (r"^bn1\.", "final.0."),
            (r"^fc\.", "fc."),
        ),
        unused=(r"^sub_block1\.",),
        raw_pixels=_RB_RAW,
    ),
    KeyMap(
        "robustbench-preactresnet",
        "RobustBench robustbench/model_zoo/architectures/resnet.py (PreActResNet)",
        (
            (r"^conv1\.", "stem.0."),
            (r"^bn\.", "final.0."),
            (r"^linear\.", "fc."),
        ),
    ),
    KeyMap(
        "robustbench-resnet",
        "RobustBench robustbench/model_zoo/architectures/resnet.py (ResNet; the common CIFAR ResNet-18 layout)",
        (
            (r"^conv1\.", "stem.0."),
            (r"^bn1\.", "stem.1."),
            (r"^linear\.", "fc."),
        ),
    ),
    KeyMap(
        "torchvision-resnet",
        "torchvision torchvision/models/resnet.py (ResNet with BasicBlock / Bottleneck)",
        (
            (r"^conv1\.", "stem.0."),
            (r"^bn1\.", "stem.1."),
            (r"^(layer\d\.\d+)\.downsample\.", r"\1.shortcut."),
        ),
    ),
    KeyMap(
        "deepmind-wideresnet",
        "RobustBench robustbench/model_zoo/architectures/dm_wide_resnet.py (DMWideResNet)",
        (
            (r"^init_conv\.", "stem.0."),
            (r"^layer\.(\d+)\.block\.(\d+)\.shortcut\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.shortcut.0."),
            (r"^layer\.(\d+)\.block\.(\d+)\.(\w+)\.", lambda m: _dm_block_name(m)),
            (r"^batchnorm\.", "final.0."),
            (r"^logits\.", "fc."),
        ),
    ),
    KeyMap(
        "deepmind-preactresnet",
        "RobustBench robustbench/model_zoo/architectures/dm_wide_resnet.py (DMPreActResNet)",
        (
            (r"^conv_2d\.", "stem.0."),
            (r"^layer_(\d+)\.(\d+)\.shortcut\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.shortcut.0."),
            (r"^layer_(\d+)\.(\d+)\.(\w+)\.", lambda m: _dm_block_name(m)),
            (r"^batchnorm\.", "final.0."),
            (r"^logits\.", "fc."),
        ),
    ),
)}

#: (architecture, a tensor the best map left missing or unexpected) -> what to do instead.
HINTS: tuple[tuple[str, str, str], ...] = (
    ("preact-resnet18", "final.0.weight",
     "this file has no BN before the classifier: it is RobustBench's PreActResNet18() (Wong2020Fast, projection "
     "shortcuts on the block input); import it with --arch preact-resnet18-rb"),
    ("preact-resnet18-rb", "bn.weight",
     "this file has a BN before the classifier (RobustBench's PreActResNet with bn_before_fc, e.g. Rice2020 / "
     "Kireev2021); import it with --arch preact-resnet18"),
    ("resnet18", "stem.0.weight",
     "if the file's first conv is 7x7 it is torchvision's ImageNet ResNet-18: use --arch resnet18-tv"),
)

_DM_MARKERS = (re.compile(r"^init_conv\.weight$"), re.compile(r"^conv_2d\.weight$"))


def deepmind_layout(keys: list[str]) -> bool:
    """Whether the names are those of DeepMind's WideResNet / PreActResNet (RobustBench's ``DMWideResNet`` and
    ``DMPreActResNet``: ``init_conv`` / ``conv_2d``, ``batchnorm_0``, ``logits``), which compute differently (Swish
    activations, asymmetric "SAME" padding of the strided convs): only the ``dm-*`` architectures load them."""
    has_logits = any(k.startswith("logits.") for k in keys)
    return has_logits and any(p.match(k) for p in _DM_MARKERS for k in keys)


@dataclass
class KeyFit:
    """The outcome of :func:`fit_keys`: the map kept, ``state`` renamed, what was renamed and dropped, and what
    does not fit (``missing``: model tensors with no counterpart; ``unexpected``: file tensors with no place,
    as (file name, renamed name))."""

    key_map: KeyMap
    state: dict
    renamed: dict[str, str]
    dropped: list[str]
    missing: list[str]
    unexpected: list[tuple[str, str]]

    @property
    def fits(self) -> bool:
        return not self.missing and not self.unexpected


def _apply(key_map: KeyMap, state: dict, own: list[str], optional: set[str]) -> KeyFit:
    own_set = set(own)
    out, renamed, dropped, unexpected = {}, {}, [], []
    for k, v in state.items():
        if key_map.is_unused(k):
            dropped.append(k)
            continue
        new = key_map.rename(k)
        if new != k:
            renamed[k] = new
        if new not in own_set:
            unexpected.append((k, new))
            continue
        out[new] = v
    missing = [k for k in own if k not in out and k not in optional]
    return KeyFit(key_map, out, renamed, dropped, missing, unexpected)


def fit_keys(state: dict, own: list[str], *, optional: set[str] = frozenset(), only: str | None = None) -> KeyFit:
    """Rename ``state``'s keys onto ``own`` (the model's state-dict names) with the map that fits best: every map
    in :data:`KEY_MAPS` and :data:`IDENTITY` is tried, the one with the fewest missing + unexpected tensors is
    kept (the names as they are win ties). ``optional``: model names a file may lack (e.g.
    ``num_batches_tracked``); ``only``: try just this map (a name in :data:`KEY_MAPS` or ``"none"``)."""
    if only is not None:
        maps = [IDENTITY] if only == "none" else [KEY_MAPS[only]]
    else:
        maps = [IDENTITY, *KEY_MAPS.values()]
    fits = [_apply(m, state, own, optional) for m in maps]
    return min(fits, key=lambda f: len(f.missing) + len(f.unexpected))


def hint_for(arch: str | None, names: list[str]) -> str:
    """Advice for a known near miss (see :data:`HINTS`), or ``""``."""
    for a, key, text in HINTS:
        if a == arch and key in names:
            return text
    return ""
