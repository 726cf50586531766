"""Pruning groups: which weights are removed together, and which layers can be pruned.

A *group* is the unit a pruning decision is taken on. For a weight tensor ``w`` every group
scheme is a reshaping of ``w`` into a matrix ``(n_groups, group_size)`` (one row per group):

=================  ==============================================  ===============================
group              one group is                                    rows of
=================  ==============================================  ===============================
``unstructured``   one weight (Ye2019 "irregular")                 ``w.reshape(-1, 1)``
``kernel``         one ``k x k`` kernel ``w[o, i]`` of a Conv2d    ``w.reshape(O * I, kh * kw)``
``filter``         one output channel ``w[o]`` (Ye2019 Eq. 11)     ``w.reshape(O, -1)``
``column``         one index of the ``C*H*W`` axis across all      ``w.reshape(O, -1).T``
                   filters, ``w[:, c, h, w]`` (Ye2019 Eq. 12)
=================  ==============================================  ===============================

Which layers are prunable (:func:`prunable_layers`): ``unstructured`` prunes every
``nn.Conv2d`` and ``nn.Linear``; the structured groups prune ``nn.Conv2d`` only (Merkle2022 §3.3:
"When pruning structures, we only prune the convolutional layers").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError

GROUPS: tuple[str, ...] = ("unstructured", "kernel", "filter", "column")

#: other spellings accepted wherever a group name is read
GROUP_ALIASES: dict[str, str] = {"irregular": "unstructured", "weight": "unstructured"}


def check_group(group: str) -> str:
    """Return the canonical group name, or raise :class:`ConfigError`."""
    g = str(group).lower()
    g = GROUP_ALIASES.get(g, g)
    if g not in GROUPS:
        raise ConfigError(f"unknown pruning group {group!r}; choose one of: {', '.join(GROUPS)}")
    return g


def check_keep(keep: float) -> float:
    """``keep`` must be a fraction in (0, 1]; return it as a float."""
    try:
        k = float(keep)
    except (TypeError, ValueError):
        raise ConfigError(f"keep must be a number in (0, 1], got {keep!r}") from None
    if not (0.0 < k <= 1.0):
        raise ConfigError(
            f"keep must be in (0, 1] (the fraction of weights that remain, 1/compression), got {keep!r}"
        )
    return k


def prunable_layers(model: nn.Module, group: str = "unstructured") -> dict[str, nn.Module]:
    """Modules whose ``weight`` is pruned under ``group``, keyed by qualified name, in model order.

    ``unstructured``: every ``nn.Conv2d`` and ``nn.Linear``. ``kernel`` / ``filter`` / ``column``:
    ``nn.Conv2d`` only. Modules without a weight (``bias``-only, ``weight=None``) are skipped.
    """
    g = check_group(group)
    kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear) if g == "unstructured" else (nn.Conv2d,)
    out: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, kinds) and isinstance(getattr(mod, "weight", None), Tensor):
            out[name] = mod
    return out


def _check_shape(shape: torch.Size | tuple[int, ...], group: str) -> None:
    if group in ("kernel",) and len(shape) < 3:
        raise ConfigError(
            f"group 'kernel' needs a conv weight (out, in, kh, kw), got shape {tuple(shape)}; "
            "use 'unstructured' or 'filter' for linear layers"
        )
    if group in ("filter", "column") and len(shape) < 2:
        raise ConfigError(f"group {group!r} needs a weight with at least 2 dims, got shape {tuple(shape)}")


def group_view(t: Tensor, group: str) -> Tensor:
    """``t`` (shaped like a weight) as a matrix ``(n_groups, group_size)``, one row per group."""
    g = check_group(group)
    _check_shape(t.shape, g)
    if g == "unstructured":
        return t.reshape(-1, 1)
    if g == "kernel":
        return t.reshape(t.shape[0] * t.shape[1], -1)
    if g == "filter":
        return t.reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1).t()  # column


def expand_groups(group_mask: Tensor, group: str, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Broadcast a per-group vector ``(n_groups,)`` back to a tensor of ``shape`` (inverse of
    :func:`group_view` for per-group values)."""
    g = check_group(group)
    _check_shape(shape, g)
    shape = torch.Size(shape)
    if g == "unstructured":
        return group_mask.reshape(shape)
    if g == "kernel":
        return group_mask.reshape(shape[0], shape[1], *([1] * (len(shape) - 2))).expand(shape).contiguous()
    if g == "filter":
        return group_mask.reshape(shape[0], *([1] * (len(shape) - 1))).expand(shape).contiguous()
    inner = shape[1:]  # column
    return group_mask.reshape(1, *inner).expand(shape).contiguous()


def num_groups(shape: torch.Size | tuple[int, ...], group: str) -> int:
    """Number of groups of a weight of ``shape``."""
    g = check_group(group)
    _check_shape(shape, g)
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    if g == "unstructured":
        return numel
    if g == "kernel":
        return shape[0] * shape[1]
    if g == "filter":
        return shape[0]
    return numel // shape[0] if shape[0] else 0


def num_keep(n_groups: int, keep: float) -> int:
    """Groups kept in one layer: ``round(keep * n_groups)`` (halves round up), at least 1 (a layer is
    never removed entirely)."""
    return min(n_groups, max(1, int(math.floor(keep * n_groups + 0.5))))
