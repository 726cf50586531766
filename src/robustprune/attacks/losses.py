"""Per-sample losses that attacks maximise.

Each takes ``(logits (N, C), y)`` and returns a per-sample tensor ``(N,)``; higher means more
adversarial. Attacks sum it over the batch before differentiating.

- ``ce``: cross-entropy.
- ``cw``: Carlini–Wagner margin ``max_{j≠y} z_j − z_y`` (> 0 ⇔ misclassified, ties aside).
- ``dlr``: difference of logits ratio of Croce & Hein (2020),
  ``−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12)`` with π the logits sorted in decreasing
  order; shift- and scale-invariant, needs at least 3 classes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustprune.errors import ConfigError
from robustprune.registry import Registry

ATTACK_LOSSES: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("attack loss")


def _other_max(logits: Tensor, y: Tensor) -> Tensor:
    """max_{j≠y} z_j per sample."""
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
    return logits.masked_fill(mask, float("-inf")).amax(dim=1)


@ATTACK_LOSSES.register("ce")
def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per sample."""
    return F.cross_entropy(logits, y, reduction="none")


@ATTACK_LOSSES.register("cw")
def cw_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini–Wagner margin max_{j≠y} z_j − z_y per sample (positive when misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return _other_max(logits, y) - z_y


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Classification margin z_y − max_{j≠y} z_j (negative when misclassified) = −cw_loss."""
    return -cw_loss(logits, y)


@ATTACK_LOSSES.register("dlr")
def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Croce & Hein (2020) DLR loss −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12)."""
    if logits.shape[1] < 3:
        raise ConfigError(
            f"the dlr loss needs at least 3 classes, the model has {logits.shape[1]}; use loss='cw'"
        )
    top = logits.topk(3, dim=1).values
    return cw_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def get_loss(loss: str | Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """A loss by name (``ce``, ``cw``, ``dlr``), or a callable ``(logits, target) -> (N,)`` as is."""
    if callable(loss):
        return loss
    return ATTACK_LOSSES.get(loss)


def loss_names() -> list[str]:
    return ATTACK_LOSSES.names()
