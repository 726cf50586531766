"""AdvPrune (Ye2019 Alg. 1): concurrent PGD adversarial training and ADMM pruning, then masked retraining.

Schemes (Ye2019 Eq. 11-13): ``irregular`` (single weights, group ``unstructured``), ``column``, ``filter``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from robustprune.methods.admm import ADMMResult, admm_prune
from robustprune.methods.admm_settings import ADMMMethod, ADMMSettings, admm_rate, admm_task_result
from robustprune.methods.interface import PAPERS, PhaseSettings, PruneResult, PruneTask, phase
from robustprune.methods.interface import register_method
from robustprune.objectives import PGDAT

#: Ye2019 App.: PGD iterations of adversarial training (40 on MNIST, eps 0.3, alpha 0.01; 10 on CIFAR, 2/255)
YE2019_PGD_STEPS = {"mnist": 40, "cifar": 10}


def advprune(
    model: nn.Module,
    *,
    eps: float,
    steps: int = 10,
    alpha: float | None = None,
    val_eps: float | None = None,
    **kwargs: Any,
) -> ADMMResult:
    """AdvPrune (Ye2019 Alg. 1): :func:`admm_prune` with PGD-AT (L∞ ``eps``, ``steps`` steps, step ``alpha``,
    default 2.5 eps / steps) as the objective of both the ADMM and the retraining phase. Ye2019 uses Adam for the
    W-step. ``val_eps`` defaults to ``eps``; every other keyword (train, val, admm_cfg, retrain_cfg, scheme, keep /
    rate, rho schedule, ...) is :func:`robustprune.methods.admm.admm_prune`'s."""
    objective = PGDAT(eps=eps, alpha=alpha, steps=steps)
    return admm_prune(model, objective=objective, val_eps=eps if val_eps is None else val_eps, **kwargs)


def _is_mnist_like(dataset: str | None) -> bool:
    return str(dataset or "").lower() in ("mnist", "fashion-mnist")


class AdvPruneSettings(ADMMSettings):
    pgd_steps: int | None = Field(None, ge=1, le=1000, json_schema_extra={
        "source": "Ye2019 App. (40 on MNIST, 10 on CIFAR)"}, description="PGD steps of adversarial training "
        "(None: the paper's value for the dataset)")
    pgd_alpha: float | None = Field(None, gt=0, json_schema_extra={"source": "2.5 eps / steps (Madry et al.)"},
                                    description="PGD step size (None: 2.5 eps / steps)")
    admm: PhaseSettings = phase("Ye2019 Alg. 1 line 9 and App. (Adam, lr 1e-4 for LeNet)",
                                "the ADMM phase (W-step under PGD-AT, Z/U updates)", optimizer="adam", lr=1e-4,
                                schedule="constant", select="last")
    retrain: PhaseSettings = phase("Ye2019 App. (Adam, lr 1e-4 for LeNet)", "masked retraining under PGD-AT",
                                   optimizer="adam", lr=1e-4, schedule="cosine")


class AdvPruneMethod(ADMMMethod):
    paper = PAPERS["Ye2019"]
    Settings = AdvPruneSettings
    needs_eps = True
    prefix = "admm"
    summary = "AdvPrune: ADMM {scheme} pruning concurrent with PGD adversarial training, then masked retraining"

    def passes_per_image(self, settings: AdvPruneSettings, phase: str, *, objective_passes: float | None,
                         dataset: str | None) -> float:
        steps = settings.pgd_steps or YE2019_PGD_STEPS["mnist" if _is_mnist_like(dataset) else "cifar"]
        return 1.0 + steps

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: AdvPruneSettings) -> PruneResult:
        assert rate is not None
        eps = task.need_eps(self.name)
        steps = settings.pgd_steps or YE2019_PGD_STEPS["mnist" if _is_mnist_like(task.dataset) else "cifar"]
        admm_cfg = settings.admm.train_config(task)
        retrain_cfg = settings.retrain.train_config(task, seed_offset=1)
        res = advprune(model, eps=eps, steps=steps, alpha=settings.pgd_alpha, train=task.train, val=task.val,
                       rate=admm_rate(self, model, rate, settings), scheme=self.scheme, admm_cfg=admm_cfg,
                       retrain_cfg=retrain_cfg, val_eps=eps,
                       **settings.engine_kwargs(admm_cfg, len(task.train), task.augment))
        return admm_task_result(self, model, task, rate, settings, res, admm_cfg, retrain_cfg)


for _scheme in ("irregular", "column", "filter"):
    register_method(AdvPruneMethod(_scheme))
