"""Adversarial attacks: pure functions with one signature ``fn(model, x, y, *, ..., generator=None)``.

Contract (docs/contracts.md): input gradients only (``torch.autograd.grad``), the model's
train/eval mode and its parameters' ``.grad`` are never changed (the caller chooses the mode),
deterministic given a ``torch.Generator``, batched, CPU and CUDA.

- Budget attacks return a detached ``x_adv`` inside the ε-ball of their norm and inside [0, 1]:
  ``fgsm``, ``pgd``/``pgd-linf``, ``pgd-l2``, ``cw-linf``, in-house APGD (Croce2020: ``apgd-ce``,
  ``apgd-t``, ``apgd`` = APGD-CE then APGD-T on the survivors), ``autoattack`` (official code, extra
  ``autoattack``). The evaluation attacks (PGD, CW-L∞, APGD) drop a point from the batch as soon as it
  is misclassified (clean or adversarial; ``early_exit=False`` keeps every point to the end).
- Minimal-norm attacks return a :class:`MinNormResult` (``x_adv``, per-sample ``norms``):
  ``cw-l2``, ``min-norm``/``fmn-linf`` (FMN L∞, Pintor2021: robust accuracy at every ε from one run),
  ``l0`` (in-house, counts pixels), ``bb-l0`` (extra ``foolbox``). Given ``eps=`` they return a budget
  attack's ``x_adv``.

``ATTACKS`` maps names to functions; ``ATTACK_INFO`` / :func:`get_attack_info` say each one's norm,
kind and extra (:class:`AttackInfo`); :class:`AttackConfig` is an attack to run (name, budgets, settings).
"""

from __future__ import annotations

from robustprune.attacks._common import (
    project_l2,
    project_linf,
    rand_like,
    randn_like,
    uniform_l2_start,
    uniform_start,
)
from robustprune.attacks.adapters import autoattack, bb_l0, require_extra
from robustprune.attacks.apgd import apgd, apgd_ce, apgd_t, dlr_targeted_loss
from robustprune.attacks.cw import cw_l2
from robustprune.attacks.fgsm import fgsm
from robustprune.attacks.l0 import greedy_l0
from robustprune.attacks.losses import ATTACK_LOSSES, ce_loss, cw_loss, dlr_loss, get_loss, loss_names, margin
from robustprune.attacks.pgd import cw_linf, pgd_l2, pgd_linf, pgd_linf_last
from robustprune.attacks.min_norm import fmn_linf, min_norm_linf
from robustprune.attacks.registry import (
    ATTACK_INFO,
    ATTACKS,
    AttackInfo,
    attack_names,
    get_attack,
    get_attack_info,
    register_attack,
)
from robustprune.attacks.config import DEFAULT_EVAL_STEPS, AttackConfig
from robustprune.attacks.results import (
    MinNormResult,
    perturbation_norm,
    robust_accuracy_from_norms,
    security_curve,
)

__all__ = [
    "ATTACKS",
    "AttackConfig",
    "DEFAULT_EVAL_STEPS",
    "apgd",
    "apgd_ce",
    "apgd_t",
    "dlr_targeted_loss",
    "fmn_linf",
    "min_norm_linf",
    "ATTACK_INFO",
    "ATTACK_LOSSES",
    "AttackInfo",
    "MinNormResult",
    "attack_names",
    "autoattack",
    "bb_l0",
    "ce_loss",
    "cw_l2",
    "cw_linf",
    "cw_loss",
    "dlr_loss",
    "fgsm",
    "get_attack",
    "get_attack_info",
    "get_loss",
    "greedy_l0",
    "loss_names",
    "margin",
    "perturbation_norm",
    "pgd_l2",
    "pgd_linf",
    "pgd_linf_last",
    "project_l2",
    "project_linf",
    "rand_like",
    "randn_like",
    "register_attack",
    "require_extra",
    "robust_accuracy_from_norms",
    "security_curve",
    "uniform_l2_start",
    "uniform_start",
]
