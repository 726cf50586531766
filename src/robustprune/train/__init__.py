"""The one training loop (``fit``), its configuration and hooks."""

from robustprune.train.config import TrainConfig, format_validation_error, validated
from robustprune.train.loop import Hook, TrainResult, build_optimizer, evaluate_split, fit, lr_factor

__all__ = [
    "Hook",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "evaluate_split",
    "fit",
    "format_validation_error",
    "lr_factor",
    "validated",
]
