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
