"""Measurements: clean / robust accuracy, parameter counts, dense and effective FLOPs.

Sparsity reports live in :func:`robustprune.sparsity.sparsity_report`; this package does not
import ``sparsity`` (any layer above ``attacks`` / ``models`` may use ``metrics``).
"""

from robustprune.metrics.accuracy import accuracy, correct_under_attack, eval_mode, predict, robust_accuracy
from robustprune.metrics.complexity import count_params, flops, layer_flops

__all__ = [
    "accuracy",
    "correct_under_attack",
    "count_params",
    "eval_mode",
    "flops",
    "layer_flops",
    "predict",
    "robust_accuracy",
]
