"""Pruning methods as short recipes over the training loop and the sparsity pieces."""

from robustprune.methods.magnitude import (
    METHODS,
    PruneStep,
    PruningSpec,
    check_rates,
    get_method,
    halving_schedule,
    iterative_prune,
    method_names,
    prune_once,
)
from robustprune.methods.admm import (  # ADMM engine, AdvPrune; registers admm-* in RECIPES
    RECIPES,
    ADMMHook,
    ADMMResult,
    RecipeSpec,
    admm_prune,
    advprune,
    auto_update_every,
    get_recipe,
    recipe_names,
)
from robustprune.methods.pwoa import load_teacher, pwoa, pwoa_configs  # registers pwoa-* in RECIPES

__all__ = [
    "ADMMHook",
    "ADMMResult",
    "METHODS",
    "RECIPES",
    "RecipeSpec",
    "admm_prune",
    "advprune",
    "auto_update_every",
    "get_recipe",
    "load_teacher",
    "pwoa",
    "pwoa_configs",
    "recipe_names",
    "PruneStep",
    "PruningSpec",
    "check_rates",
    "get_method",
    "halving_schedule",
    "iterative_prune",
    "method_names",
    "prune_once",
]
from robustprune.methods.bayesian import (  # noqa: E402  registers bp/anp/anp-vs/pat-bbd in RECIPES
    ANPObjective,
    BayesianResult,
    BetaBernoulliGate,
    GatedObjective,
    GateSet,
    UnitGate,
    at_vs,
    bayesian_prune,
    fold_gates,
    gate_param_groups,
    insert_gates,
    remove_gates,
    route_gradients,
)
from robustprune.methods.vib import VIBGate, vib_prune  # noqa: E402  registers bp-vib, anp-vib
from robustprune.methods.hydra import HydraResult, hydra  # noqa: E402  registers hydra

__all__ += [
    "ANPObjective", "BayesianResult", "BetaBernoulliGate", "GatedObjective", "GateSet", "HydraResult", "UnitGate",
    "VIBGate", "at_vs", "bayesian_prune", "fold_gates", "gate_param_groups", "hydra", "insert_gates", "remove_gates",
    "route_gradients", "vib_prune",
]
