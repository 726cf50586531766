"""Settings shared by the ADMM methods (AdvPrune, Ye2019; PwoA, Jian2022) and how they become engine arguments."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from robustprune.methods.admm import (
    JIAN2022_RHO,
    JIAN2022_RHO_FACTOR,
    JIAN2022_RHO_MAX,
    auto_update_every,
)
from robustprune.methods.interface import MethodSettings, PruneTask, PruningMethod, setting
from robustprune.train import TrainConfig


class ADMMSettings(MethodSettings):
    """The ADMM schedule (rho, its growth and cap, when Z/U update) and the convergence criterion."""

    rho: float = setting(JIAN2022_RHO, "Jian2022 App. B (Ye2019 gives no rho)", "initial ADMM penalty", gt=0)
    rho_factor: float = setting(JIAN2022_RHO_FACTOR, "Jian2022 App. B", "rho *= factor at every Z/U update", ge=1)
    rho_max: float | None = setting(JIAN2022_RHO_MAX, "Jian2022 App. B", "cap of rho", gt=0)
    update_every: int | Literal["auto"] = setting(
        "auto", "robustprune: Jian2022 App. B's proportion (rho reaches its cap at the end of the ADMM phase: 16 "
        "updates in 48 of 50 epochs) for any budget", "Z/U update interval in update_units, or 'auto'")
    update_unit: Literal["step", "epoch"] = setting("step", "robustprune (Jian2022 App. B updates every 3 epochs)",
                                                    "unit of update_every")
    converge_tol: float = Field(0.1, gt=0, le=1, json_schema_extra={
        "source": "robustprune convergence criterion"},
        description="ADMM has converged when ||W - Z|| / ||W|| before the hard prune is at most this")

    def engine_kwargs(self, cfg: TrainConfig, n_train: int, augment: str | None) -> dict[str, Any]:
        """Keyword arguments of :func:`robustprune.methods.admm.admm_prune` for an ADMM phase run with ``cfg``."""
        update_every = self.update_every
        if update_every == "auto":
            # as the training loop batches: the last partial batch is dropped once there are two full ones
            steps = n_train // cfg.batch_size if n_train >= 2 * cfg.batch_size else -(-n_train // cfg.batch_size)
            if cfg.max_steps_per_epoch is not None:
                steps = min(steps, cfg.max_steps_per_epoch)
            total = max(1, cfg.epochs) * (steps if self.update_unit == "step" else 1)
            update_every = auto_update_every(self.rho, self.rho_factor, self.rho_max, total)
        return dict(rho=self.rho, rho_factor=self.rho_factor, rho_max=self.rho_max, update_every=update_every,
                    update_unit=self.update_unit, augment=augment)

    def converged(self, convergence: dict[str, Any]) -> bool:
        """Converged: rho reached its cap (when it grows) and the relative primal residual is within tolerance."""
        rho_ok = (self.rho_max is None or self.rho_factor <= 1
                  or convergence.get("rho_final", 0.0) >= self.rho_max * (1 - 1e-6))
        return bool(rho_ok and convergence.get("primal_rel", float("inf")) <= self.converge_tol)


class ADMMMethod(PruningMethod):
    """Base of the ADMM methods: one registered method per scheme (``<prefix>-irregular|column|filter``), rates set
    per layer when the prunable scope is a ``{layer: rate}`` dict."""

    per_layer_rates = True
    prefix = ""
    summary = ""

    def __init__(self, scheme: str) -> None:
        from robustprune.methods.admm import scheme_group

        self.scheme = scheme
        self.group = scheme_group(scheme)
        self.name = f"{self.prefix}-{scheme}"
        self.description = self.summary.format(scheme=scheme)


def admm_rate(method: Any, model: Any, rate: float, settings: ADMMSettings) -> Any:
    """The ``rate`` argument of the ADMM engine under the prunable scope: one number (every layer), or
    ``{layer: rate}`` for the selected layers (the others stay dense)."""
    if isinstance(settings.layers, dict):
        method.scope_layers(model, settings)
        return {n: float(r) for n, r in settings.layers.items()}
    names = method.scope_layers(model, settings)
    return rate if names is None else {n: rate for n in names}


def admm_task_result(method: Any, model: Any, task: PruneTask, rate: float, settings: ADMMSettings, result: Any,
                     admm_cfg: TrainConfig, retrain_cfg: TrainConfig) -> Any:
    """The :class:`PruneResult` of an ADMM run (``result``: :class:`ADMMResult`)."""
    from robustprune.methods.interface import history_of, mechanism, steps_of

    conv = dict(result.extras.get("convergence", {}))
    conv["tolerance"] = settings.converge_tol
    updates = int(conv.get("updates") or 0)
    mech = mechanism("ADMM: gradient steps of the ADMM phase and at least one Z/U update, so that the residual "
                     "||W - Z|| / ||W|| before the hard prune measures an ADMM phase (else the hard prune is a "
                     "one-shot magnitude projection)", steps_of(result.admm) > 0 and updates > 0,
                     admm_steps=steps_of(result.admm), zu_updates=updates, primal_rel=conv.get("primal_rel"))
    return method.result(
        model, result.masks, rate, settings,
        history={"admm": history_of(result.admm), "retrain": history_of(result.retrain),
                 "admm_updates": list(result.admm_history)},
        times=dict(result.times), convergence=conv, converged=settings.converged(conv),
        steps=steps_of(result.admm) + steps_of(result.retrain),
        epochs=float(admm_cfg.epochs + retrain_cfg.epochs),
        extras={k: v for k, v in result.extras.items() if k != "convergence"}, mechanism=mech)
