"""Adversarial attacks: pure functions ``attack(model, x, y, *, eps, ..., generator=None) -> x_adv``.

Contract (docs/contracts.md): input gradients only (``torch.autograd.grad``), the model's
train/eval mode and its parameters' ``.grad`` are never changed (the caller chooses the mode),
deterministic given a ``torch.Generator``, batched, CPU and CUDA. ``x_adv`` is detached, inside the
L∞ ε-ball of ``x`` and inside [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

from robustprune.attacks._common import project_linf, rand_like, randn_like, uniform_start
from robustprune.attacks.fgsm import fgsm
from robustprune.attacks.losses import ATTACK_LOSSES, ce_loss, cw_loss, dlr_loss, get_loss, loss_names, margin
from robustprune.attacks.pgd import pgd_linf, pgd_linf_last
from robustprune.registry import Registry

ATTACKS: Registry[Callable[..., object]] = Registry("attack")
ATTACKS.add("fgsm", fgsm)
ATTACKS.add("pgd", pgd_linf)
ATTACKS.add("pgd-linf", pgd_linf)


def attack_names() -> list[str]:
    """Registered attack names."""
    return ATTACKS.names()


def get_attack(name: str) -> Callable[..., object]:
    """The attack function registered under ``name`` (UnknownNameError lists the choices)."""
    return ATTACKS.get(name)


__all__ = [
    "ATTACKS",
    "ATTACK_LOSSES",
    "attack_names",
    "ce_loss",
    "cw_loss",
    "dlr_loss",
    "fgsm",
    "get_attack",
    "get_loss",
    "loss_names",
    "margin",
    "pgd_linf",
    "pgd_linf_last",
    "project_linf",
    "rand_like",
    "randn_like",
    "uniform_start",
]
