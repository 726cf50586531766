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

__all__ = [
    "OBJECTIVES",
    "PGDAT",
    "TRADES",
    "AdversarialObjective",
    "FastAT",
    "Mix",
    "Natural",
    "Objective",
    "ObjectiveOutput",
    "build_objective",
    "eval_mode",
    "forward_pair",
    "objective_names",
]
