"""Kept for compatibility: evaluation lives in :mod:`robustprune.evaluation`."""

from __future__ import annotations

from robustprune.evaluation.attack_info import attack_kwargs
from robustprune.evaluation.run import evaluate_attacks, size_metrics

__all__ = ["attack_kwargs", "evaluate_attacks", "size_metrics"]
