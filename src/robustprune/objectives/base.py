"""The objective protocol, its output, and helpers for crafting in eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class ObjectiveOutput:
    """``loss``: scalar to backpropagate. ``logits``: for train accuracy — the clean logits when the
    loss has a clean term (Natural, TRADES, Mix with β > 0), else the adversarial ones (PGD-AT,
    Fast-AT, Mix with β = 0). ``adv_logits``: the adversarial logits when computed, else None."""

    loss: Tensor
    logits: Tensor
    adv_logits: Tensor | None = None


@runtime_checkable
class Objective(Protocol):
    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput: ...


@runtime_checkable
class AdversarialObjective(Objective, Protocol):
    """An objective that also exposes how it crafts its adversarial examples (used by ``Mix``)."""

    def craft(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor: ...


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; on exit restore every submodule's own ``training`` flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _batch_dependent(model: nn.Module) -> bool:
    """True when a forward's per-sample output depends on the rest of the batch (BN in training)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def forward_pair(model: nn.Module, x: Tensor, x_adv: Tensor) -> tuple[Tensor, Tensor]:
    """Logits of ``x`` and ``x_adv`` in the model's current mode.

    One forward on ``cat([x, x_adv])`` when that is equivalent (no BatchNorm in training mode),
    otherwise two separate forwards so each batch's statistics stay its own.
    """
    if _batch_dependent(model):
        return model(x), model(x_adv)
    logits = model(torch.cat([x, x_adv], dim=0))
    return logits[: x.shape[0]], logits[x.shape[0] :]
