"""Evaluation: robust accuracy under any registered attack, transfer attacks, security curves of minimal-norm
attacks, latent vulnerability and sanity checks, reported together.

Layer: between ``metrics`` and ``study`` (imports attacks, metrics, sparsity, checkpoint, data, models; ``study``
and ``cli`` import it).
"""

from robustprune.attacks import MinNormResult, robust_accuracy_from_norms  # re-exported: defined by the attacks
from robustprune.evaluation.attack_info import (
    DEFAULT_EVAL_STEPS,
    AttackConfig,
    EvalAttackInfo,
    attack_info,
    attack_kwargs,
    is_min_norm_result,
    register_attack_info,
    robust_mask_from_norms,
    unregister_attack_info,
)
from robustprune.evaluation.checks import (
    CheckThresholds,
    check_input_gradients,
    check_large_eps,
    check_min_norm,
    check_monotone,
    check_more_iterations,
    check_pgd_vs_apgd,
    check_transfer,
    failed,
    sanity_checks,
)
from robustprune.evaluation.curves import default_eps_grid, security_curve
from robustprune.evaluation.pipeline import JSON_FORMAT, EvaluationReport, SanityCheckWarning, evaluate_model
from robustprune.evaluation.run import AttackRun, clean_correct, evaluate_attacks, run_attacks, size_metrics
from robustprune.evaluation.transfer import (
    TRANSFER_PREFIX,
    TransferExamples,
    apply_transfer,
    craft_transfer,
    run_transfer,
    transfer_attack,
)

__all__ = [
    "DEFAULT_EVAL_STEPS",
    "JSON_FORMAT",
    "TRANSFER_PREFIX",
    "TransferExamples",
    "apply_transfer",
    "craft_transfer",
    "AttackConfig",
    "AttackRun",
    "CheckThresholds",
    "EvalAttackInfo",
    "EvaluationReport",
    "MinNormResult",
    "SanityCheckWarning",
    "attack_info",
    "attack_kwargs",
    "check_input_gradients",
    "check_large_eps",
    "check_min_norm",
    "check_monotone",
    "check_more_iterations",
    "check_pgd_vs_apgd",
    "check_transfer",
    "clean_correct",
    "default_eps_grid",
    "evaluate_attacks",
    "evaluate_model",
    "failed",
    "is_min_norm_result",
    "register_attack_info",
    "robust_accuracy_from_norms",
    "robust_mask_from_norms",
    "run_attacks",
    "run_transfer",
    "sanity_checks",
    "security_curve",
    "size_metrics",
    "transfer_attack",
    "unregister_attack_info",
]
