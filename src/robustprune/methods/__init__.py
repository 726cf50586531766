"""Pruning methods: one interface (:class:`PruningMethod`), one registry (:data:`METHODS`).

Every method is registered once, by the module of its family:

* :mod:`.magnitude`: magnitude / random x unstructured / kernel / filter x local / global, one-shot or iterative
  (Merkle2022);
* :mod:`.advprune`: AdvPrune ``admm-{irregular,column,filter}`` (Ye2019) over the ADMM engine :mod:`.admm`;
* :mod:`.pwoa`: PwoA ``pwoa-{irregular,column,filter}`` (Jian2022);
* :mod:`.anp`: BP, ANP, ANP-VS, PAT with Beta-Bernoulli gates and BP / ANP with VIB gates (Madaan2020), over the
  gates of :mod:`.bayesian` and :mod:`.vib`;
* :mod:`.hydra`: HYDRA (Sehwag2020).
* :mod:`.harp`: HARP (Zhao2023), HYDRA's scores plus learned per-layer keep rates;
* :mod:`.sparse_training`: Flying Bird, Flying Bird+ and Robust Bird (Chen2022);
* :mod:`.twin_rep`: Twin-Rep, unstructured and filter (Li2023).

Adding a method: subclass :class:`PruningMethod` in a new module, call :func:`register_method`, import the module
here. The CLI, the study runner and :func:`robustprune.prune` then accept it by name.
"""

from robustprune.methods.interface import (
    METHODS,
    PAPERS,
    MethodSettings,
    Paper,
    PhaseSettings,
    PruneResult,
    PruneTask,
    PruningMethod,
    achieved_compression,
    get_method,
    method_names,
    register_method,
    setting,
)
from robustprune.methods.magnitude import (
    MagnitudeMethod,
    PruneStep,
    check_rates,
    halving_schedule,
    iterative_prune,
    prune_once,
)
from robustprune.methods.admm import ADMMHook, ADMMResult, admm_prune, auto_update_every
from robustprune.methods.advprune import AdvPruneMethod, advprune
from robustprune.methods.pwoa import PwoAMethod, load_teacher, pwoa, pwoa_configs
from robustprune.methods.bayesian import (
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
    vib_prune,
)
from robustprune.methods.vib import VIBGate
from robustprune.methods.anp import BayesianMethod
from robustprune.methods.hydra import HydraMethod, HydraResult, hydra
from robustprune.methods.harp import HarpMethod, HarpResult, harp
from robustprune.methods.sparse_training import FlyingBirdMethod, RobustBirdMethod
from robustprune.methods.twin_rep import TwinRepMethod, twin_rep

__all__ = [
    "ADMMHook", "ADMMResult", "ANPObjective", "AdvPruneMethod", "BayesianMethod", "BayesianResult",
    "BetaBernoulliGate", "GateSet", "GatedObjective", "HydraMethod", "HydraResult", "METHODS", "MagnitudeMethod",
    "MethodSettings", "PAPERS", "Paper", "PhaseSettings", "PruneResult", "PruneStep", "PruneTask", "PruningMethod",
    "PwoAMethod", "UnitGate", "VIBGate", "achieved_compression", "admm_prune", "advprune", "at_vs",
    "auto_update_every", "bayesian_prune", "check_rates", "fold_gates", "gate_param_groups", "get_method",
    "halving_schedule", "hydra", "insert_gates", "iterative_prune", "load_teacher", "method_names", "prune_once",
    "pwoa", "pwoa_configs", "register_method", "remove_gates", "route_gradients", "setting", "vib_prune",
]
