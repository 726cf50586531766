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
from robustprune.metrics.vulnerability import (  # noqa: E402
    LatentLayer,
    LatentVulnerability,
    latent_layers,
    latent_vulnerability,
)

__all__ += ["LatentLayer", "LatentVulnerability", "latent_layers", "latent_vulnerability"]
from robustprune.metrics.efficiency import (  # noqa: E402
    activation_memory,
    compare_latency,
    efficiency_report,
    measure_latency,
)

__all__ += ["activation_memory", "compare_latency", "efficiency_report", "measure_latency"]
