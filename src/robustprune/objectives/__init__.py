"""Training objectives: callable loss terms ``(model, x, y, *, generator=None) -> ObjectiveOutput``.

Adversarial objectives craft their examples with the model in eval mode (every module's own
train/eval flag is restored afterwards) and then run the training forward pass in the caller's
mode. A PGD-k objective costs k forward + k input-gradient backward passes (no weight gradients,
see :mod:`robustprune.attacks`) plus the one training forward whose loss the caller backpropagates.
"""

from __future__ import annotations

from robustprune.objectives.base import (
    AdversarialObjective,
    Objective,
    ObjectiveOutput,
    eval_mode,
    forward_pair,
)
from robustprune.objectives.standard import (
    OBJECTIVES,
    PGDAT,
    TRADES,
    FastAT,
    Mix,
    Natural,
    build_objective,
    objective_names,
)
from robustprune.objectives.distill import Distillation, kd_kl  # registers "distill"
from robustprune.objectives.hsic import (  # registers "hbar"
    HBaR,
    default_feature_layers,
    gaussian_kernel,
    hsic,
    linear_kernel,
)

__all__ = [
    "OBJECTIVES",
    "PGDAT",
    "TRADES",
    "AdversarialObjective",
    "Distillation",
    "HBaR",
    "FastAT",
    "Mix",
    "Natural",
    "Objective",
    "ObjectiveOutput",
    "build_objective",
    "eval_mode",
    "default_feature_layers",
    "forward_pair",
    "gaussian_kernel",
    "hsic",
    "kd_kl",
    "linear_kernel",
    "objective_names",
]
from robustprune.objectives.vulnerability import (  # noqa: E402  registers "at-vs"
    ATVS,
    FeatureTap,
    VulnerabilitySuppression,
    forward_pair_features,
    vulnerability_loss,
)

__all__ += ["ATVS", "FeatureTap", "VulnerabilitySuppression", "forward_pair_features", "vulnerability_loss"]
