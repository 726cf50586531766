"""The ADMM pruning engine (Zhang et al. 2018) over the one training loop, used by AdvPrune (Ye2019 Alg. 1, see
:mod:`robustprune.methods.advprune`) and PwoA (Jian2022, :mod:`robustprune.methods.pwoa`).

Problem: ``min_W L(W)  s.t.  W_l in S_l`` for every prunable layer ``l``, with ``S_l`` the set of
weights with at most ``round(keep_l * n_groups)`` non-zero groups (Ye2019 Eq. 11-13: filters,
columns, single weights). Scaled-dual ADMM (Boyd et al. 2011 §3.1.1) alternates

* **W-step** -- SGD/Adam on ``L(W) + sum_l rho_l / 2 ||W_l - Z_l + U_l||_F^2`` (Ye2019 Eq. 8); the
  augmented term is :meth:`ADMMHook.extra_loss`, added by :func:`robustprune.train.fit` at every step;
* **Z-step** -- ``Z_l = Π_S(W_l + U_l)`` (Eq. 10), the Euclidean projection
  :func:`robustprune.sparsity.project` (the same one magnitude pruning's sparsity package exposes);
* **dual step** -- ``U_l += W_l - Z_l``.

Z/U updates run every ``update_every`` epochs (or steps). ``U`` is the *scaled* dual (``u / rho``), as in
the ADMM-NN/PwoA codes; Ye2019 writes the unscaled ``u += rho (W - Z)``, the same iteration. ``rho``
follows a schedule: constant (``rho_factor = 1``) or multiplied by ``rho_factor`` at every Z/U update
up to ``rho_max`` (Jian2022 App. B: 0.01, x1.35 per update, capped at 1, an update every 3 epochs --
the defaults of :func:`admm_prune`). Like the reference codes the scaled dual is not rescaled when rho
changes (``rescale_dual=True`` does ``U *= rho_old / rho_new``, Boyd §3.4.1).

After the ADMM phase, **hard pruning** keeps exactly the ``round(keep_l * n_groups)`` groups of largest
L2 norm of ``W_l`` in every layer (:func:`robustprune.sparsity.project_mask`; ties go to the lower index,
so the per-layer count is exact), then **masked retraining** fine-tunes with the masks held fixed.

Layers: :func:`robustprune.sparsity.prunable_layers` -- Conv2d + Linear for ``irregular``; Conv2d only for
``column`` / ``filter`` (and ``kernel``). Every pruned layer gets the same keep fraction by default
(Ye2019 §2.2 and Jian2022 "identical pruning rates per layer"); a dict gives per-layer fractions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.objectives import Objective
from robustprune.sparsity import MaskSet, check_keep, num_keep, group_view, project, project_mask, prunable_layers
from robustprune.sparsity import sparsity_report
from robustprune.train import Hook, TrainConfig, TrainResult, fit

#: Ye2019's schemes (and the kernel group, which the projection also supports)
SCHEMES: tuple[str, ...] = ("irregular", "column", "filter", "kernel")
_SCHEME_GROUP = {"irregular": "unstructured", "unstructured": "unstructured", "column": "column",
                 "filter": "filter", "kernel": "kernel"}

#: Jian2022 App. B: rho starts at 0.01, x1.35 at every ADMM update, capped at 1; an update every 3 epochs
JIAN2022_RHO = 0.01
JIAN2022_RHO_FACTOR = 1.35
JIAN2022_RHO_MAX = 1.0
JIAN2022_UPDATE_EVERY = 3


def check_scheme(scheme: str) -> str:
    """Canonical scheme name (``irregular`` / ``column`` / ``filter`` / ``kernel``; ``unstructured`` is
    read as ``irregular``)."""
    s = str(scheme).lower()
    if s == "unstructured":
        s = "irregular"
    if s not in SCHEMES:
        raise ConfigError(f"unknown ADMM pruning scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    return s


def scheme_group(scheme: str) -> str:
    """The sparsity group of a scheme (``irregular`` -> ``unstructured``)."""
    return _SCHEME_GROUP[check_scheme(scheme)]


def _rate_to_keep(rate: Any, who: str) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"{who} must be a compression rate >= 1, got {rate!r}") from None
    if not (math.isfinite(r) and r >= 1):
        raise ConfigError(f"{who} must be a compression rate >= 1 (1/rate of the weights remain), got {rate!r}")
    return 1.0 / r


def resolve_keep(
    model: nn.Module,
    scheme: str,
    keep: float | Mapping[str, float] | None = None,
    rate: float | Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-layer keep fractions for the layers ADMM constrains (those with keep < 1).

    Give exactly one of ``keep`` (fraction kept, in (0, 1]) or ``rate`` (compression c >= 1, keep = 1/c),
    each either one number for every prunable layer or a dict ``{module name: value}``; layers a dict
    does not name stay dense.
    """
    if (keep is None) == (rate is None):
        raise ConfigError("give exactly one of keep (fraction of weights kept) or rate (compression, keep = 1/rate)")
    group = scheme_group(scheme)
    layers = prunable_layers(model, group)
    if not layers:
        raise ConfigError(
            f"model has no layers prunable with scheme {scheme!r} (irregular prunes Conv2d/Linear, "
            "column/filter prune Conv2d only)"
        )
    value = keep if keep is not None else rate
    if isinstance(value, Mapping):
        unknown = [n for n in value if n not in layers]
        if unknown:
            raise ConfigError(
                f"keep/rate names layers that are not prunable with scheme {scheme!r}: {', '.join(map(str, unknown[:5]))}; "
                f"prunable: {', '.join(list(layers)[:8])}"
            )
        raw = {n: value[n] for n in layers if n in value}
    else:
        raw = {n: value for n in layers}
    out: dict[str, float] = {}
    for n, v in raw.items():
        k = check_keep(v) if keep is not None else _rate_to_keep(v, f"rate of {n!r}")
        if k < 1.0:
            out[n] = k
    return out


def rho_schedule(rho: float, factor: float = 1.0, rho_max: float | None = None, updates: int = 10) -> list[float]:
    """The rho in force after 0, 1, ..., ``updates`` Z/U updates: ``min(rho * factor^k, rho_max)``."""
    cap = math.inf if rho_max is None else rho_max
    vals, r = [], float(rho)
    for _ in range(updates + 1):
        vals.append(r)
        r = min(r * factor, cap) if r < cap else r
    return vals


def updates_to_cap(rho: float, factor: float, rho_max: float | None) -> int:
    """How many Z/U updates take rho from ``rho`` to ``rho_max`` (1 when rho never grows)."""
    if rho_max is None or factor <= 1.0 or rho >= rho_max:
        return 1
    return max(1, math.ceil(math.log(rho_max / rho) / math.log(factor) - 1e-9))


def auto_update_every(rho: float, factor: float, rho_max: float | None, total: int) -> int:
    """The update interval (in steps or epochs) with which rho reaches ``rho_max`` at the end of an ADMM phase of
    ``total`` steps (or epochs): Jian2022 App. B's proportion (0.01 x1.35 every 3 epochs reaches the cap of 1 after
    16 updates, 48 of its 50 epochs) for any budget. A short phase with a fixed interval leaves rho far below the
    cap, ``W`` far from the sparse ``Z``, and hard pruning then destroys the network."""
    if total < 1:
        raise ConfigError(f"the ADMM phase has no steps (total={total}); give it at least one epoch with data")
    return max(1, int(total) // updates_to_cap(rho, factor, rho_max))


def _pos(value: Any, who: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{who} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{who} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


class ADMMHook(Hook):
    """ADMM state ``Z``, ``U``, ``rho`` per constrained layer, plugged into :func:`robustprune.train.fit`.

    * :meth:`extra_loss`: ``sum_l rho_l / 2 ||W_l - Z_l + U_l||^2`` (added to the objective every step);
    * :meth:`update`: ``Z = Π_S(W + U)``, ``U += W - Z``, then ``rho = min(rho * rho_factor, rho_max)``;
      called every ``update_every`` epochs (``unit="epoch"``, at the epoch's end) or optimiser steps
      (``unit="step"``); counters persist across ``fit`` calls and through :meth:`state_dict`;
    * :meth:`hard_masks` / :meth:`hard_prune`: the exact-target masks of the current weights.

    ``Z`` starts at ``Π_S(W)`` and ``U`` at 0 (as ADMM-NN/PwoA). ``keep`` / ``rate``: see
    :func:`resolve_keep`. ``rho``: one value or ``{layer: value}``. The epoch metrics of ``fit`` gain
    ``admm_primal`` (``sqrt(sum_l ||W_l - Z_l||^2)``), ``admm_primal_rel`` (divided by ``||W||``) and
    ``admm_rho`` (mean rho), and :attr:`history` one row per update.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        scheme: str = "irregular",
        keep: float | Mapping[str, float] | None = None,
        rate: float | Mapping[str, float] | None = None,
        rho: float | Mapping[str, float] = JIAN2022_RHO,
        rho_factor: float = 1.0,
        rho_max: float | None = None,
        update_every: int = 1,
        unit: str = "epoch",
        rescale_dual: bool = False,
    ) -> None:
        self.scheme = check_scheme(scheme)
        self.group = scheme_group(self.scheme)
        self.keep = resolve_keep(model, self.scheme, keep, rate)
        if not self.keep:
            raise ConfigError("nothing to prune: every layer has keep = 1 (rate 1); give keep < 1 or rate > 1")
        self.rho_factor = _pos(rho_factor, "rho_factor")
        self.rho_max = None if rho_max is None else _pos(rho_max, "rho_max")
        if isinstance(rho, Mapping):
            missing = [n for n in self.keep if n not in rho]
            if missing:
                raise ConfigError(f"rho given per layer lacks {', '.join(missing[:5])}")
            self.rho = {n: _pos(rho[n], f"rho of {n!r}") for n in self.keep}
        else:
            r = _pos(rho, "rho")
            self.rho = {n: r for n in self.keep}
        if self.rho_max is not None and any(r > self.rho_max for r in self.rho.values()):
            raise ConfigError(f"rho_max={self.rho_max:g} is below the initial rho; raise rho_max or lower rho")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ConfigError(f"update_every must be an integer >= 1, got {update_every!r}")
        self.update_every = update_every
        if unit not in ("epoch", "step"):
            raise ConfigError(f"ADMM update unit must be 'epoch' or 'step', got {unit!r}")
        self.unit = unit
        self.rescale_dual = bool(rescale_dual)
        self.updates = 0
        self.epochs = 0
        self.steps = 0
        self.history: list[dict[str, float]] = []
        mods = self._modules(model)
        with torch.no_grad():
            self.Z: dict[str, Tensor] = {n: project(mods[n].weight, self.group, k) for n, k in self.keep.items()}
            self.U: dict[str, Tensor] = {n: torch.zeros_like(mods[n].weight) for n in self.keep}

    # ------------------------------------------------------------------ helpers
    def _modules(self, model: nn.Module) -> dict[str, nn.Module]:
        cached = getattr(self, "_mods", None)
        if cached is not None and cached[0] is model and cached[1] == tuple(self.keep):
            return cached[2]
        mods = dict(model.named_modules())
        missing = [n for n in self.keep if n not in mods]
        if missing:
            raise ConfigError(f"ADMM state names layers the model lacks: {', '.join(missing[:5])}")
        out = {n: mods[n] for n in self.keep}
        self._mods = (model, tuple(self.keep), out)
        return out

    def _to(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        for d in (self.Z, self.U):
            for n, t in d.items():
                if t.device != device or (dtype is not None and t.dtype != dtype):
                    d[n] = t.to(device=device, dtype=dtype or t.dtype)

    # ------------------------------------------------------------------ Hook API
    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        mods = self._modules(model)
        w = next(iter(mods.values())).weight
        self._to(w.device, w.dtype)

    def extra_loss(self, model: nn.Module) -> Tensor:
        mods = self._modules(model)
        total: Tensor | None = None
        for n, mod in mods.items():
            w = mod.weight
            z, u = self.Z[n], self.U[n]
            if z.device != w.device:
                self._to(w.device)
                z, u = self.Z[n], self.U[n]
            term = (0.5 * self.rho[n]) * (w - z + u).pow(2).sum()
            total = term if total is None else total + term
        assert total is not None
        return total

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.steps += 1
        if self.unit == "step" and self.steps % self.update_every == 0:
            self.update(model)

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs += 1
        if self.unit == "epoch" and self.epochs % self.update_every == 0:
            self.update(model)
        res = self.residuals(model)
        metrics["admm_primal"] = res["primal"]
        metrics["admm_primal_rel"] = res["primal_rel"]
        metrics["admm_rho"] = sum(self.rho.values()) / len(self.rho)
        metrics["admm_updates"] = self.updates

    # ------------------------------------------------------------------ ADMM steps
    @torch.no_grad()
    def update(self, model: nn.Module) -> dict[str, float]:
        """One Z/U update (Eq. 10 and the dual step) and one rho step; returns the residuals."""
        mods = self._modules(model)
        primal2 = dual2 = 0.0
        for n, mod in mods.items():
            w = mod.weight.detach()
            self._to(w.device, w.dtype)
            z_prev = self.Z[n]
            z = project(w + self.U[n], self.group, self.keep[n])
            self.U[n] = self.U[n] + w - z
            self.Z[n] = z
            primal2 += float((w - z).double().pow(2).sum())
            dual2 += (self.rho[n] ** 2) * float((z - z_prev).double().pow(2).sum())
        for n in self.rho:
            old = self.rho[n]
            new = old * self.rho_factor
            if self.rho_max is not None:
                new = min(new, self.rho_max)
            self.rho[n] = new
            if self.rescale_dual and new != old:
                self.U[n] = self.U[n] * (old / new)
        self.updates += 1
        row = {"update": self.updates, "epoch": self.epochs, "step": self.steps,
               "primal": math.sqrt(primal2), "dual": math.sqrt(dual2),
               "rho": sum(self.rho.values()) / len(self.rho)}
        self.history.append(row)
        return row

    @torch.no_grad()
    def residuals(self, model: nn.Module) -> dict[str, Any]:
        """``primal = sqrt(sum ||W - Z||^2)``, ``primal_rel = primal / ||W||`` and per-layer ``||W - Z||``."""
        mods = self._modules(model)
        per: dict[str, float] = {}
        tot = wn = 0.0
        for n, mod in mods.items():
            w = mod.weight.detach()
            d = float((w - self.Z[n].to(w.device)).double().pow(2).sum())
            per[n] = math.sqrt(d)
            tot += d
            wn += float(w.double().pow(2).sum())
        primal = math.sqrt(tot)
        return {"primal": primal, "primal_rel": primal / math.sqrt(wn) if wn > 0 else 0.0, "layers": per}

    @torch.no_grad()
    def hard_masks(self, model: nn.Module) -> MaskSet:
        """Masks keeping exactly ``round(keep_l * n_groups)`` groups (largest L2 norm of ``W_l``) per layer."""
        mods = self._modules(model)
        return MaskSet({n: project_mask(mods[n].weight, self.group, k) for n, k in self.keep.items()})

    def hard_prune(self, model: nn.Module) -> MaskSet:
        """Compute :meth:`hard_masks`, write the zeros into ``model`` and return the masks."""
        masks = self.hard_masks(model)
        masks.apply(model)
        return masks

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers: ``Z``/``U`` as ``{layer: tensor}``, ``rho``/``keep`` as ``{layer: float}``,
        the schedule and the counters (enough to resume the ADMM phase exactly)."""
        return {
            "scheme": self.scheme,
            "keep": dict(self.keep),
            "rho": dict(self.rho),
            "rho_factor": self.rho_factor,
            "rho_max": self.rho_max,
            "update_every": self.update_every,
            "unit": self.unit,
            "rescale_dual": self.rescale_dual,
            "updates": self.updates,
            "epochs": self.epochs,
            "steps": self.steps,
            "Z": {n: t.detach().clone() for n, t in self.Z.items()},
            "U": {n: t.detach().clone() for n, t in self.U.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the layers and shapes must match this hook's)."""
        try:
            z, u = dict(state["Z"]), dict(state["U"])
            keep = {str(k): float(v) for k, v in dict(state["keep"]).items()}
            rho = {str(k): float(v) for k, v in dict(state["rho"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"ADMM state is incomplete or malformed ({exc}); pass ADMMHook.state_dict() output") from None
        if set(keep) != set(self.keep) or set(z) != set(self.keep) or set(u) != set(self.keep) or set(rho) != set(self.keep):
            raise ConfigError("ADMM state was made for other layers; resume with the same model, scheme and keep")
        for n in self.keep:
            if tuple(z[n].shape) != tuple(self.Z[n].shape) or tuple(u[n].shape) != tuple(self.U[n].shape):
                raise ConfigError(f"ADMM state for {n!r} has shape {tuple(z[n].shape)}, the layer {tuple(self.Z[n].shape)}")
        if state.get("scheme", self.scheme) != self.scheme:
            raise ConfigError(f"ADMM state is for scheme {state.get('scheme')!r}, not {self.scheme!r}")
        dev = next(iter(self.Z.values())).device
        self.keep = keep
        self.rho = rho
        self.Z = {n: z[n].detach().clone().to(dev) for n in self.keep}
        self.U = {n: u[n].detach().clone().to(dev) for n in self.keep}
        self.rho_factor = float(state.get("rho_factor", self.rho_factor))
        rm = state.get("rho_max", self.rho_max)
        self.rho_max = None if rm is None else float(rm)
        self.update_every = int(state.get("update_every", self.update_every))
        self.unit = str(state.get("unit", self.unit))
        self.rescale_dual = bool(state.get("rescale_dual", self.rescale_dual))
        self.updates = int(state.get("updates", 0))
        self.epochs = int(state.get("epochs", 0))
        self.steps = int(state.get("steps", 0))


# ---------------------------------------------------------------------------------------- recipe
@dataclass
class ADMMResult:
    """What :func:`admm_prune` (and AdvPrune / PwoA) returns.

    ``times`` holds wall-clock seconds per phase: ``admm``, ``hard_prune``, ``retrain`` and ``total``.
    ``layer_keep``: the target keep fraction per layer; ``achieved_keep``: the kept fraction of each
    layer's mask after hard pruning (equal to ``round(keep * n_groups) / n_groups`` groups).
    """

    masks: MaskSet
    scheme: str
    layer_keep: dict[str, float]
    achieved_keep: dict[str, float]
    admm: TrainResult | None
    retrain: TrainResult | None
    times: dict[str, float]
    state: dict[str, Any]
    admm_history: list[dict[str, float]]
    sparsity: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no tensors)."""
        return {
            "scheme": self.scheme,
            "layer_keep": self.layer_keep,
            "achieved_keep": self.achieved_keep,
            "admm": self.admm.to_dict() if self.admm else None,
            "retrain": self.retrain.to_dict() if self.retrain else None,
            "times": self.times,
            "admm_history": self.admm_history,
            "rho": self.state.get("rho"),
            "weight_sparsity": self.sparsity.get("weight_sparsity"),
            "extras": {k: v for k, v in self.extras.items() if isinstance(v, (int, float, str, dict, list, type(None)))},
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def admm_prune(
    model: nn.Module,
    *,
    objective: Objective,
    train: Split,
    val: Split | None,
    admm_cfg: TrainConfig,
    retrain_cfg: TrainConfig,
    scheme: str = "irregular",
    keep: float | Mapping[str, float] | None = None,
    rate: float | Mapping[str, float] | None = None,
    rho: float | Mapping[str, float] = JIAN2022_RHO,
    rho_factor: float = JIAN2022_RHO_FACTOR,
    rho_max: float | None = JIAN2022_RHO_MAX,
    update_every: int = JIAN2022_UPDATE_EVERY,
    update_unit: str = "epoch",
    rescale_dual: bool = False,
    val_eps: float | None = None,
    augment: str | None = None,
    retrain_objective: Objective | None = None,
    admm_select: str | None = "last",
    hooks: Sequence[Hook] = (),
    retrain_hooks: Sequence[Hook] = (),
    state: Mapping[str, Any] | None = None,
    on_admm_hook: Callable[[ADMMHook], None] | None = None,
) -> ADMMResult:
    """Prune ``model`` in place with ADMM, then hard-prune to the exact target and retrain with masks.

    1. **ADMM phase**: ``fit(model, objective, ..., admm_cfg, hooks=[ADMMHook, *hooks])``. By default the
       last iterate is kept (``admm_select="last"``: the ADMM sequence, not a validation-picked epoch);
       ``admm_select=None`` honours ``admm_cfg.select``. ``state`` resumes a saved ADMM state.
    2. **Hard pruning**: per layer, exactly ``round(keep_l * n_groups)`` groups of largest L2 norm remain.
    3. **Masked retraining**: ``fit(model, retrain_objective or objective, ..., retrain_cfg, masks=...)``
       (skipped when ``retrain_cfg.epochs == 0``); pruned weights stay exactly zero.

    ``keep`` / ``rate``: :func:`resolve_keep`. ``rho``, ``rho_factor``, ``rho_max``, ``update_every``,
    ``update_unit``: :class:`ADMMHook` (defaults: Jian2022 App. B). ``on_admm_hook`` is called with the
    hook before training (e.g. to build hooks that read it).
    """
    t_all = time.perf_counter()
    hook = ADMMHook(model, scheme=scheme, keep=keep, rate=rate, rho=rho, rho_factor=rho_factor, rho_max=rho_max,
                    update_every=update_every, unit=update_unit, rescale_dual=rescale_dual)
    if state is not None:
        hook.load_state_dict(state)
    if on_admm_hook is not None:
        on_admm_hook(hook)
    device = train.x.device
    times: dict[str, float] = {}

    cfg = admm_cfg if admm_select is None else admm_cfg.model_copy(update={"select": admm_select})
    t0 = time.perf_counter()
    admm_res = None
    if cfg.epochs > 0:
        admm_res = fit(model, objective, train, val, cfg, hooks=[hook, *hooks], val_eps=val_eps, augment=augment,
                       desc=f"admm-{hook.scheme}")
    _sync(device)
    times["admm"] = time.perf_counter() - t0

    convergence = admm_convergence(hook, model)
    t0 = time.perf_counter()
    masks = hook.hard_prune(model)
    _sync(device)
    times["hard_prune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    re_res = None
    if retrain_cfg.epochs > 0:
        re_res = fit(model, retrain_objective if retrain_objective is not None else objective, train, val,
                     retrain_cfg, masks=masks, hooks=retrain_hooks, val_eps=val_eps, augment=augment,
                     desc=f"retrain-{hook.scheme}")
    masks.apply(model)
    _sync(device)
    times["retrain"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_all

    achieved = {n: float(group_view(m, hook.group)[:, 0].float().mean()) for n, m in masks.masks.items()}
    return ADMMResult(
        masks=masks,
        scheme=hook.scheme,
        layer_keep=dict(hook.keep),
        achieved_keep=achieved,
        admm=admm_res,
        retrain=re_res,
        times=times,
        state=hook.state_dict(),
        admm_history=list(hook.history),
        sparsity=sparsity_report(model, masks),
        extras={"convergence": convergence},
    )


@torch.no_grad()
def admm_convergence(hook: ADMMHook, model: nn.Module) -> dict[str, Any]:
    """The signals that say whether an ADMM phase did its job, measured just before the hard prune: the final rho
    (mean and per layer), the number of Z/U updates, and the primal residual ``||W - Z|| / ||W||`` in total and per
    layer (small: the weights already lie near the sparse set, and the hard prune changes little)."""
    mods = hook._modules(model)
    layers: dict[str, float] = {}
    for n, mod in mods.items():
        w = mod.weight.detach().double()
        z = hook.Z[n].to(w.device).double()
        wn = float(w.norm())
        layers[n] = float((w - z).norm()) / wn if wn > 0 else 0.0
    res = hook.residuals(model)
    return {"rho_final": sum(hook.rho.values()) / len(hook.rho), "rho_max": hook.rho_max,
            "rho_per_layer": dict(hook.rho), "updates": hook.updates, "primal_rel": res["primal_rel"],
            "primal_rel_per_layer": layers}


def target_keep(n_groups: int, keep: float) -> float:
    """The exact kept fraction of groups hard pruning reaches in a layer of ``n_groups`` groups."""
    return num_keep(n_groups, keep) / n_groups
