"""HARP (Zhao & Wressnegger 2023, "Holistic Adversarially Robust Pruning", ICLR 2023).

HARP learns *which* weights to keep (HYDRA's importance scores) and *how many* of them each layer keeps (one
learnable keep rate per layer) at once, on an adversarial objective with a growing penalty on the density:

1. **Scores and rates** -- every prunable layer (Conv2d + Linear) gets HYDRA's scaled importance score per weight
   (:func:`robustprune.methods.hydra.attach_scores`; reference: ``initialize_scaled_score``, forced on for
   ``harp_prune``) and one rate parameter ``r_l`` (the reference's ``k_score``). The layer keeps the fraction

   ``k_l = k_min + (1 - k_min) * sigmoid(r_l)``, ``k_min = 0.1 * k_target``  (``utils/utils.py: rate_act_func``;
   ``--alpha 0.1``)

   of its weights: the ``n_l - floor((1 - k_l) n_l)`` = ``ceil(k_l n_l)`` largest ``|s|`` (``GetSubnet``). The rates
   start at the reference's uniform strategy ``010_uni`` (every layer at keep 0.1, ``rate_init``; raised here to the
   target keep when the target keeps more, see below).
2. **Pruning phase** -- weights and biases frozen; the scores, the rates and the BatchNorm affine terms are trained
   (the reference's ``freeze_vars`` skips BatchNorm) on the adversarial objective (PGD-AT by default, 10 steps of
   eps/4, as ``--adv_loss pgd``) plus the hinge penalty

   ``gamma_e * max(rho / k_target - 1, 0)``, ``rho = sum_l n_l k_l / sum_l n_l`` (the soft, size-weighted density)

   (``utils/hw.py: hw_loss``), with ``gamma_e = (e + 1) * gamma0`` in epoch ``e`` (0-based) until the end of the
   first epoch at which the hinge is zero (rounded to 4 decimals, ``reach_tol``); gamma is frozen at that epoch's
   value from then on (``train.py``: ``frozen_gamma``).
   Gradients are straight-through (the reference's ``GetSubnet.backward`` returns ``(g, sum(g))``): with ``m`` the
   0/1 mask and ``g = dL/dm``, the score gets ``g * sign(s)`` (through ``|s|``, as HYDRA) and the layer's keep rate
   gets ``sum(g)`` -- the relaxed count: every mask entry is treated as moving one-for-one with ``k_l`` -- times
   ``dk_l/dr_l = (1 - k_min) sigmoid'(r_l)``; the penalty adds ``gamma / k_target * n_l / N * dk_l/dr_l``.
   Here the layer computes with ``w * (m + (|s| - |s|.detach()) + (k_l - k_l.detach()))``, which has the value
   ``w * m`` and exactly these gradients. The mask is recomputed once per optimiser step (cached on the versions of
   the scores and the rate, as HYDRA's top-k here), not in every forward pass as in the reference.
3. **Export at the exact budget** -- the learned ``k_l`` are turned into integer counts that sum to exactly
   ``round(N / rate)`` (``N`` the weights of the pruned layers): ``c_l = clamp(lambda k_l n_l, 1, n_l)`` with the one
   ``lambda`` that makes them sum to the budget (``lambda = 1`` when the soft density is exactly at the target),
   rounded by largest remainder; each layer keeps its ``c_l`` largest scores. The layers become plain Conv2d / Linear
   again (scores and rates dropped) with the pruned weights exactly zero.
4. **Fine-tuning** -- the weights (and every other parameter) are trained on the same objective under the fixed mask
   (a :class:`~robustprune.sparsity.MaskSet`), with SGD lr 0.01 (the reference's ``harp_finetune``).

Where this implementation deviates from the reference code (``intellisec/harp``, commit 9f343c0):

* **Exported density.** The reference's dense export (``save_checkpoint(..., save_dense=True)`` ->
  ``subnet_to_dense(state_dict, args.k)``) ignores the learned rates: it keeps the top ``k_target`` fraction of
  scores in *every* layer, i.e. a uniform mask (a known defect; its ``test.py`` evaluates the subnet checkpoint,
  whose density ``sum_l ceil(k_l n_l) / N`` is only near the target). Here the exported mask follows the learned
  per-layer rates and the achieved density is exactly the target.
* **Checkpoint selection on the validation split.** The reference picks the pruning-phase checkpoint with the best
  adversarial *test* accuracy among the epochs after the density target was reached (``reach_hw``), and the
  fine-tuning checkpoint by the same test accuracy. Here both choices are made on the validation split (PGD
  accuracy at the training eps, or clean accuracy, as the phase's ``select`` says); an epoch is eligible in the
  pruning phase when its own soft density is at the target. If no epoch reaches the target the last one is used
  (the reference would have no best checkpoint to fine-tune) and the run is marked as not converged.
* **Initial rates.** The reference initialises from ``configs/strategies.json``; every strategy there is at density
  0.1 (``010_uni``, ``010_lamp``, ``010_erk``), and the README runs ``010_uni`` (uniform 0.1) for its targets of
  0.01-0.1. A target keeping more than 0.1 would then start *below* the target with the penalty inactive, so the
  initial keep is ``max(rate_init, k_target)``. ``inv = (k - k_min) / (1 - k_min)`` is clipped to [0.01, 0.99] before
  the logit (the reference clips to [-0.99, 0.99], which gives NaN below ``k_min``).
* **Epochs.** The reference prunes 20 epochs and fine-tunes 100 on CIFAR-10 / SVHN (5 and 25 on ImageNet): the
  fine-tuning phase defaults to ``finetune_factor = 5`` times the task's epochs. The learning rate follows the
  library's per-step cosine (the reference sets a per-epoch cosine).
* **Channel mode and FLOPs.** The reference's ``--prune_reg channel`` (scores per input channel, a FLOPs-weighted
  density from hand-written per-architecture feature-map sizes, ``hw_flops_loss``, and shortcut rate tying) is left
  out: only unstructured weight pruning with the parameter-count density (``hw_loss``) is implemented.
* **Rate learning rate.** The reference trains the rates in the same SGD group as the scores (lr 0.1, weight decay
  5e-4); ``rate_lr_factor`` (default 1) scales the rates' learning rate.

Convergence signal: whether the soft density is at the target at the selected pruning epoch, and the kept-set churn
of the last pruning epoch (fraction of the kept weights that were not kept an epoch earlier); ``converged`` when both
hold (churn at most ``converge_tol``); None without a pruning phase. The result's ``convergence`` also holds the density
and gamma of every epoch, ``rescale`` (budget / ``sum_l k_l n_l``: how far the export had to scale the learned counts;
1 at the target) and, with ``extras``, ``layer_keep_learned`` (the ``k_l``) and ``layer_keep`` (the exported fractions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods.hydra import ScoredConv2d, ScoredLinear, _Scored, attach_scores, current_masks, topk_mask
from robustprune.methods.hydra import _objective, resolve_keep
from robustprune.methods.interface import PAPERS, MethodSettings, PhaseSettings, PruneResult, PruneTask
from robustprune.methods.interface import PruningMethod, history_of, mechanism, phase, register_method, setting
from robustprune.methods.interface import steps_of
from robustprune.sparsity import MaskSet, check_keep, sparsity_report
from robustprune.train import Hook, TrainConfig, TrainResult, fit
from robustprune.train.loop import evaluate_split


# ------------------------------------------------------------------------------------------------ the formulas
def keep_fraction(rate: Tensor | float, k_min: float) -> Tensor:
    """``k = k_min + (1 - k_min) * sigmoid(r)`` (the reference's ``rate_act_func``): a layer's keep fraction."""
    r = rate if isinstance(rate, Tensor) else torch.tensor(float(rate), dtype=torch.float64)
    return k_min + (1.0 - k_min) * torch.sigmoid(r)


def rate_for_keep(keep: float, k_min: float) -> float:
    """The rate ``r`` with ``keep_fraction(r, k_min) == keep`` (the reference's ``rate_init_func``), with
    ``(keep - k_min) / (1 - k_min)`` clipped to [0.01, 0.99]."""
    inv = (float(keep) - k_min) / (1.0 - k_min)
    inv = min(max(inv, 0.01), 0.99)
    return math.log(inv / (1.0 - inv))


def keep_count(keep: float, n: int) -> int:
    """Weights a layer of ``n`` keeps at fraction ``keep``: ``n - floor((1 - keep) n)`` = ``ceil(keep n)`` (the
    reference's ``GetSubnet``), at least 1."""
    return max(1, min(n, n - int((1.0 - float(keep)) * n)))


def hinge_penalty(density: Tensor | float, target: float) -> Tensor:
    """``max(density / target - 1, 0)`` (the reference's ``hw_loss``)."""
    d = density if isinstance(density, Tensor) else torch.tensor(float(density), dtype=torch.float64)
    return torch.clamp_min(d / float(target) - 1.0, 0.0)


class GammaSchedule:
    """HARP's step-wise incremental penalty weight: ``gamma = (e + 1) * gamma0`` in epoch ``e`` (0-based) until the
    end of the first epoch at which the density target is met; frozen at that epoch's gamma from then on (even if the
    density later rises above the target again), as ``train.py``'s ``frozen_gamma``."""

    def __init__(self, gamma0: float) -> None:
        self.gamma0 = float(gamma0)
        self.epoch = 0
        self.frozen: float | None = None
        self.frozen_at: int | None = None

    @property
    def gamma(self) -> float:
        """The gamma of the current epoch."""
        return self.frozen if self.frozen is not None else (self.epoch + 1) * self.gamma0

    def end_epoch(self, reached: bool) -> float:
        """Close the current epoch (``reached``: its density met the target); returns the gamma it used."""
        used = self.gamma
        if self.frozen is None and reached:
            self.frozen, self.frozen_at = used, self.epoch + 1
        self.epoch += 1
        return used


def allocate_counts(keep: Mapping[str, float], sizes: Mapping[str, int], budget: int) -> dict[str, int]:
    """Integer kept counts per layer proportional to the learned ``keep[l] * sizes[l]``, summing to exactly
    ``budget``, each in ``[1, sizes[l]]``: ``clamp(lam * keep_l * n_l, 1, n_l)`` with the one ``lam`` whose sum is
    ``budget``, rounded by largest remainder (ties in layer order)."""
    names = list(sizes)
    n = {k: int(sizes[k]) for k in names}
    budget = int(budget)
    if not names:
        raise ConfigError("no layers to allocate a budget to")
    if not len(names) <= budget <= sum(n.values()):
        raise ConfigError(f"a budget of {budget} weights cannot keep at least one weight in each of the {len(names)} "
                          f"layers and at most their {sum(n.values())} weights")
    want = {k: max(float(keep[k]), 1e-12) * n[k] for k in names}

    def clamped(lam: float) -> dict[str, float]:
        return {k: min(max(lam * want[k], 1.0), float(n[k])) for k in names}

    lo, hi = 0.0, max(n[k] / want[k] for k in names)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if sum(clamped(mid).values()) < budget:
            lo = mid
        else:
            hi = mid
    x = clamped(hi)
    counts = {k: min(n[k], max(1, math.floor(x[k]))) for k in names}
    frac = {k: x[k] - math.floor(x[k]) for k in names}
    left = budget - sum(counts.values())
    order = sorted(names, key=lambda k: (-frac[k], names.index(k)))
    while left > 0:
        for k in order:
            if left and counts[k] < n[k]:
                counts[k] += 1
                left -= 1
    while left < 0:
        for k in reversed(order):
            if left and counts[k] > 1:
                counts[k] -= 1
                left += 1
    return counts


# ---------------------------------------------------------------------------------------------------- the layers
class _Rated(_Scored):
    """A HYDRA-scored layer with a learnable keep rate ``k_score``: it keeps ``keep_count(k_l, n)`` of its largest
    ``|popup_scores|``; straight-through gradients to the scores (HYDRA) and to the rate (the sum of ``dL/dm``)."""

    k_score: nn.Parameter
    harp_k_min: float

    def harp_keep(self) -> Tensor:
        """``k_l`` (a 0-d tensor, differentiable in ``k_score``)."""
        return keep_fraction(self.k_score, self.harp_k_min)

    def harp_count(self) -> int:
        return keep_count(float(self.harp_keep().detach()), self.weight.numel())

    def hydra_mask(self) -> Tensor:
        """The cached 0/1 mask, recomputed only when the scores or the rate changed."""
        s, r = self.popup_scores, self.k_score
        key = (s._version, r._version)
        cache = getattr(self, "_hydra_cache", None)
        if cache is None or cache[0] != key or cache[1] is not s or cache[2] is not r or cache[3].device != s.device:
            with torch.no_grad():
                mask = topk_mask(s, self.harp_count() / s.numel())
            self.hydra_topk_calls += 1
            self._hydra_cache = (key, s, r, mask)
            return mask
        return cache[3]

    def hydra_weight(self) -> Tensor:
        m = self.hydra_mask().to(self.weight.dtype)
        if torch.is_grad_enabled():
            s = self.popup_scores
            if s.requires_grad:
                a = s.abs()
                m = m + (a - a.detach())  # gradient to s: dL/dm * sign(s) (HYDRA's GetSubnet)
            if self.k_score.requires_grad:
                k = self.harp_keep()
                m = m + (k - k.detach()).to(m.dtype)  # gradient to k: sum of dL/dm (HARP's GetSubnet: g_r = sum(g))
        return self.weight * m


class HarpConv2d(_Rated, ScoredConv2d):
    pass


class HarpLinear(_Rated, ScoredLinear):
    pass


_RATED = {ScoredConv2d: HarpConv2d, ScoredLinear: HarpLinear}
_PLAIN = {HarpConv2d: nn.Conv2d, HarpLinear: nn.Linear}


def attach_rates(model: nn.Module, keep: float, *, init_keep: float | None = None, k_min_factor: float = 0.1,
                 score_init: str = "scaled", layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Turn the Conv2d/Linear layers of ``model`` (all, or ``layers``) into HARP layers in place: HYDRA's scores
    (``score_init``) plus a rate ``k_score`` with ``k_min = k_min_factor * keep`` starting at keep ``init_keep``
    (default: ``keep``)."""
    keep = check_keep(keep)
    if not 0 <= k_min_factor < 1:
        raise ConfigError(f"k_min_factor must be in [0, 1), got {k_min_factor!r}")
    k_min = float(k_min_factor) * keep
    r0 = rate_for_keep(keep if init_keep is None else float(init_keep), k_min)
    mods = attach_scores(model, keep, init=score_init, layers=layers)
    for mod in mods.values():
        mod.__class__ = _RATED[type(mod)]
        mod.register_parameter("k_score", nn.Parameter(torch.tensor(r0, dtype=mod.weight.dtype,
                                                                    device=mod.weight.device)))
        mod.harp_k_min = k_min
        mod._hydra_cache = None
    return mods


def rated_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _Rated)}


def layer_keep(model: nn.Module) -> dict[str, float]:
    """The learned keep fraction ``k_l`` of every HARP layer."""
    return {n: float(m.harp_keep().detach()) for n, m in rated_layers(model).items()}


def soft_density(model: nn.Module, layers: Sequence[nn.Module] | None = None) -> Tensor:
    """``sum_l n_l k_l / sum_l n_l`` over the HARP layers of ``model`` (or ``layers``), differentiable in the rates."""
    layers = list(rated_layers(model).values()) if layers is None else list(layers)
    if not layers:
        raise ConfigError("the model has no HARP layers")
    total = sum(m.weight.numel() for m in layers)
    return sum(m.weight.numel() * m.harp_keep() for m in layers) / total


def _to_plain(model: nn.Module) -> None:
    for mod in rated_layers(model).values():
        del mod.popup_scores
        del mod.k_score
        for attr in ("hydra_keep", "hydra_topk_calls", "_hydra_cache", "harp_k_min"):
            if attr in mod.__dict__:
                delattr(mod, attr)
        mod.__class__ = _PLAIN[type(mod)]


def export_masks(model: nn.Module, budget: int) -> tuple[MaskSet, dict[str, int], dict[str, float]]:
    """The final masks of a HARP model: per-layer counts from the learned rates rescaled to exactly ``budget``
    (:func:`allocate_counts`), each layer keeping its largest ``|scores|``. Returns (masks, counts, learned keep)."""
    layers = rated_layers(model)
    learned = layer_keep(model)
    counts = allocate_counts(learned, {n: m.weight.numel() for n, m in layers.items()}, budget)
    masks = MaskSet({n: topk_mask(m.popup_scores, counts[n] / m.weight.numel()) for n, m in layers.items()})
    return masks, counts, learned


def finalize(model: nn.Module, budget: int) -> tuple[MaskSet, dict[str, int], dict[str, float]]:
    """Fix the masks at exactly ``budget`` kept weights (:func:`export_masks`), make the layers plain Conv2d / Linear
    again (scores and rates dropped) and set the pruned weights to exactly zero."""
    out = export_masks(model, budget)
    _to_plain(model)
    out[0].apply(model)
    return out


# ---------------------------------------------------------------------------------------------------- the hook
class HarpHook(Hook):
    """The pruning phase's penalty and bookkeeping: adds ``gamma * hinge(rho)`` to every step's loss, closes the gamma
    schedule at each epoch's end, records density, gamma, churn, and keeps the best validation state among the epochs
    whose density is at the target (``select``: val_robust / val_clean / last)."""

    def __init__(self, model: nn.Module, target: float, gamma0: float, *, reach_tol: float = 5e-5,
                 select: str = "val_robust", val: Split | None = None, val_eps: float | None = None,
                 cfg: TrainConfig | None = None) -> None:
        self.target = float(target)
        self.schedule = GammaSchedule(gamma0)
        self.reach_tol = float(reach_tol)
        self.val, self.val_eps, self.cfg = val, val_eps, cfg
        usable = val is not None and len(val) > 0 and cfg is not None and cfg.val_size > 0
        self.select = select if usable else "last"
        if self.select == "val_robust" and not val_eps:
            self.select = "val_clean"
        self.layers = list(rated_layers(model).values())
        self.previous = current_masks(model)
        self.density: list[float] = []
        self.gamma: list[float] = []
        self.reached: list[bool] = []
        self.churn: list[float] = []
        self.keep: list[dict[str, float]] = []
        self.best = -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None

    def extra_loss(self, model: nn.Module) -> Tensor | None:
        g = self.schedule.gamma
        if g == 0:
            return None
        return g * hinge_penalty(soft_density(model, self.layers), self.target)

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        with torch.no_grad():
            rho = float(soft_density(model, self.layers))
        hinge = float(hinge_penalty(rho, self.target))
        reached = hinge <= self.reach_tol
        used = self.schedule.end_epoch(reached)
        now = current_masks(model)
        kept = changed = 0
        for n, m in now.masks.items():
            kept += int(m.sum())
            changed += int((m & ~self.previous.masks[n]).sum())
        self.previous = now
        self.density.append(rho)
        self.gamma.append(used)
        self.reached.append(reached)
        self.churn.append(changed / kept if kept else 0.0)
        self.keep.append(layer_keep(model))
        metrics.update({"harp_density": rho, "harp_hinge": hinge, "harp_gamma": used, "harp_reached": float(reached),
                        "harp_churn": self.churn[-1]})
        if self.select == "last":
            return
        if self.select == "val_robust":
            assert self.cfg is not None and self.val is not None
            ev = evaluate_split(model, self.val, n=self.cfg.val_size, eps=self.val_eps,
                                steps=self.cfg.val_attack_steps, seed=self.cfg.seed)
            metrics["val_robust"] = ev["robust"]
        score = metrics[self.select]
        if reached and score > self.best:
            self.best, self.best_epoch = score, epoch + 1
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- the recipe
@dataclass
class HarpResult:
    masks: MaskSet
    keep: float
    budget: int
    layer_keep: dict[str, float]
    """Kept fraction of every layer in the exported mask."""
    layer_keep_learned: dict[str, float]
    """The learned ``k_l`` at the selected pruning epoch."""
    layer_counts: dict[str, int]
    soft_density: float
    target_reached: bool
    selected_epoch: int | None
    prune: TrainResult | None
    finetune: TrainResult | None
    hook: HarpHook | None
    score_steps: int
    sparsity: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)


def harp(
    model: nn.Module,
    *,
    train: Split,
    val: Split | None,
    prune_cfg: TrainConfig,
    finetune_cfg: TrainConfig,
    eps: float | None = None,
    keep: float | None = None,
    rate: float | None = None,
    loss: str = "pgd-at",
    objective: Any = None,
    steps: int = 10,
    alpha: float | None = None,
    beta: float = 6.0,
    score_init: str = "scaled",
    k_min_factor: float = 0.1,
    gamma0: float = 0.01,
    rate_init: float = 0.1,
    rate_lr_factor: float = 1.0,
    train_bn: bool = True,
    train_scores: bool = True,
    reach_tol: float = 5e-5,
    layers: Sequence[str] | None = None,
    val_eps: float | None = None,
    augment: str | None = None,
) -> HarpResult:
    """HARP on ``model`` (in place): scores and per-layer rates trained with the weights frozen (``prune_cfg``; its
    ``select`` picks among the epochs at the density target), export at exactly ``round(N / rate)`` kept weights
    (``round(keep * N)`` with ``keep``), then fine-tuning under the fixed mask (``finetune_cfg``).

    ``keep`` (target fraction of the weights kept) or ``rate`` (compression, ``keep = 1 / rate``). ``loss``: "pgd-at"
    or "trades" (``beta``), with L-inf ``eps`` and ``steps``; or pass ``objective``.
    """
    keep = resolve_keep(keep, rate)
    for name, v in (("gamma0", gamma0), ("rate_lr_factor", rate_lr_factor), ("reach_tol", reach_tol)):
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
    if not 0 < float(rate_init) <= 1:
        raise ConfigError(f"rate_init must be in (0, 1], got {rate_init!r}")
    if objective is None:
        if eps is None:
            raise ConfigError("HARP needs eps (the L-inf radius of its adversarial training), or an objective")
        objective = _objective(loss, eps, steps, alpha, beta, method="HARP")
    v_eps = val_eps if val_eps is not None else (eps if eps is not None else getattr(objective, "eps", None))
    model.to(train.x.device)
    times: dict[str, float] = {}
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    t0 = time.perf_counter()
    mods = attach_rates(model, keep, init_keep=max(float(rate_init), keep), k_min_factor=k_min_factor,
                        score_init=score_init, layers=layers)
    total = sum(m.weight.numel() for m in mods.values())
    budget = int(round(total / float(rate))) if rate is not None else int(round(keep * total))
    prune_res = hook = None
    try:
        if budget < len(mods):
            raise ConfigError(f"HARP keeps at least one weight per layer: a budget of {budget} of {total} weights is "
                              f"below the {len(mods)} pruned layers; use a lower rate")
        for p in model.parameters():
            p.requires_grad_(False)
        scores, rates = [], []
        for m in mods.values():
            m.popup_scores.requires_grad_(bool(train_scores))
            m.k_score.requires_grad_(True)
            if train_scores:
                scores.append(m.popup_scores)
            rates.append(m.k_score)
        bn = []
        if train_bn:
            for m in model.modules():
                if isinstance(m, _BatchNorm) and m.affine:
                    for p in (m.weight, m.bias):
                        p.requires_grad_(True)
                        bn.append(p)
        groups = ([{"params": scores + bn}] if scores + bn else []) + [
            {"params": rates, "lr": prune_cfg.lr * float(rate_lr_factor)}]
        if prune_cfg.epochs > 0:
            hook = HarpHook(model, keep, gamma0, reach_tol=reach_tol, select=prune_cfg.select, val=val,
                            val_eps=v_eps, cfg=prune_cfg)
            cfg = prune_cfg.model_copy(update={"select": "last"})  # the hook selects, among epochs at the target
            prune_res = fit(model, objective, train, val, cfg, val_eps=v_eps, augment=augment, hooks=[hook],
                            param_groups=groups, desc="harp-prune")
            if hook.best_state is not None:
                model.load_state_dict(hook.best_state)
                prune_res.best_epoch, prune_res.best_metric = int(hook.best_epoch or 0), float(hook.best)
                prune_res.selected_by = hook.select
            elif hook.select != "last":
                prune_res.selected_by = "last (no epoch reached the density target)"
        with torch.no_grad():
            rho = float(soft_density(model))
        reached = float(hinge_penalty(rho, keep)) <= reach_tol
        masks, counts, learned = finalize(model, budget)
    except BaseException:
        _to_plain(model)
        raise
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    times["prune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ft = None
    if finetune_cfg.epochs > 0:
        ft = fit(model, objective, train, val, finetune_cfg, masks=masks, val_eps=v_eps, augment=augment,
                 desc="harp-finetune")
    masks.apply(model)
    times["finetune"] = time.perf_counter() - t0
    selected = (prune_res.best_epoch if prune_res is not None else None)
    return HarpResult(masks=masks, keep=keep, budget=budget, layer_keep=masks.layer_keep_fractions(),
                      layer_keep_learned=learned, layer_counts=counts, soft_density=rho, target_reached=reached,
                      selected_epoch=selected, prune=prune_res, finetune=ft, hook=hook,
                      score_steps=prune_res.steps if prune_res else 0, sparsity=sparsity_report(model, masks),
                      times=times)


# ---------------------------------------------------------------------------------------------------- the method
_REF = "Zhao2023 reference code (intellisec/harp"


class HarpSettings(MethodSettings):
    loss: Literal["pgd-at", "trades"] = setting("pgd-at", f"{_REF}, args.py --adv_loss default 'pgd'; README "
                                                "commands)", "adversarial loss of pruning and fine-tuning")
    beta: float = setting(6.0, f"{_REF}, utils/logging.py: TRADES beta 6)", "TRADES trade-off", ge=0)
    pgd_steps: int = setting(10, f"{_REF}, configs/config-cifar10.yml num_steps 10, step 0.0078 ~ eps/4)",
                             "attack steps in training", ge=1)
    score_init: Literal["scaled", "magnitude", "kaiming"] = setting(
        "scaled", f"{_REF}, utils/logging.py: scaled_score_init on for harp_prune; HYDRA's init)",
        "importance-score init")
    k_min_factor: float = setting(0.1, f"{_REF}, args.py --alpha 0.1: k_min = alpha * k)",
                                  "lower bound of every layer's keep fraction, as a fraction of the target keep",
                                  ge=0, lt=1)
    gamma0: float = setting(0.01, f"{_REF}, README: --gamma 0.01 for CIFAR-10/SVHN, 0.1 for ImageNet)",
                            "penalty weight increment per epoch (gamma_e = (e+1) gamma0 until the target is met)",
                            ge=0, le=1e6)
    rate_init: float = setting(0.1, f"{_REF}, configs/strategies.json '010_uni', the README's --stg_id)",
                               "initial keep fraction of every layer (raised to the target keep if that is higher)",
                               gt=0, le=1)
    rate_lr_factor: float = setting(1.0, f"{_REF}, utils/schedules.py: one SGD over scores and rates)",
                                    "learning rate of the rates relative to the scores' (prune.lr)", ge=0, le=1e4)
    train_bn: bool = setting(True, f"{_REF}, args.py --freeze-bn off: freeze_vars skips BatchNorm)",
                             "train the BatchNorm affine terms in the pruning phase")
    train_scores: bool = setting(True, "Zhao2023 §3 (scores and rates are optimised jointly)",
                                 "train the importance scores (false: they stay at their initialisation and only the "
                                 "per-layer rates learn: the ablation of learned rates alone)")
    reach_tol: float = setting(5e-5, f"{_REF}, train.py: target met when round(hw_loss, 4) == 0)",
                               "hinge value at or below which the density target counts as met", ge=0, le=1)
    finetune_factor: float = setting(5.0, f"{_REF}, README: 20 pruning and 100 fine-tuning epochs on CIFAR-10/SVHN, "
                                     "5 and 25 on ImageNet)",
                                     "fine-tuning epochs per task epoch when finetune.epochs is not set", gt=0, le=100)
    converge_tol: float = setting(0.02, "robustprune convergence criterion (as hydra)",
                                  "pruning has converged when the density target is met and the last epoch's kept-set "
                                  "churn is at most this", gt=0, le=1)
    prune: PhaseSettings = phase(f"{_REF}, configs/config-cifar10.yml: SGD momentum 0.9, wd 5e-4, cosine, batch 128; "
                                 "utils/logging.py: lr 0.1 for *_prune)",
                                 "scores and rates trained, weights frozen", optimizer="sgd", lr=0.1, momentum=0.9,
                                 weight_decay=5e-4, schedule="cosine")
    finetune: PhaseSettings = phase(f"{_REF}, configs/config-cifar10.yml; utils/logging.py: lr 0.01 for *_finetune)",
                                    "fine-tuning of the weights under the fixed mask (epochs: finetune_factor x the "
                                    "task's when not set)", optimizer="sgd", lr=0.01, momentum=0.9,
                                    weight_decay=5e-4, schedule="cosine")


class HarpMethod(PruningMethod):
    name = "harp"
    paper = PAPERS["Zhao2023"]
    Settings = HarpSettings
    group = "unstructured"
    needs_eps = True
    description = ("HARP: per-layer keep rates learned with HYDRA scores under an adversarial objective and a growing "
                   "density penalty, exported at the exact budget, then fine-tuning")

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: HarpSettings) -> PruneResult:
        assert rate is not None
        eps = task.need_eps(self.name)
        prune_cfg = settings.prune.train_config(task)
        ft_phase = settings.finetune
        if ft_phase.epochs is None:
            ft_phase = ft_phase.model_copy(update={"epochs": float(task.epochs) * settings.finetune_factor})
        ft_cfg = ft_phase.train_config(task, seed_offset=1)
        res = harp(model, train=task.train, val=task.val, prune_cfg=prune_cfg, finetune_cfg=ft_cfg, eps=eps,
                   rate=rate, loss=settings.loss, steps=settings.pgd_steps, beta=settings.beta,
                   score_init=settings.score_init, k_min_factor=settings.k_min_factor, gamma0=settings.gamma0,
                   rate_init=settings.rate_init, rate_lr_factor=settings.rate_lr_factor, train_bn=settings.train_bn,
                   train_scores=settings.train_scores, reach_tol=settings.reach_tol, val_eps=eps, augment=task.augment,
                   layers=self.scope_layers(model, settings))
        h = res.hook
        churn = h.churn if h is not None else []
        reached_epochs = [i + 1 for i, r in enumerate(h.reached) if r] if h is not None else []
        sizes = {n: int(m.numel()) for n, m in res.masks.masks.items()}
        learned_kept = sum(res.layer_keep_learned[n] * sizes[n] for n in sizes)
        conv = {
            "target_keep": res.keep, "soft_density": res.soft_density, "target_reached": res.target_reached,
            "first_epoch_at_target": reached_epochs[0] if reached_epochs else None,
            "selected_epoch": res.selected_epoch,
            "density_per_epoch": list(h.density) if h else [], "gamma_per_epoch": list(h.gamma) if h else [],
            "gamma_frozen": h.schedule.frozen if h else None,
            "churn_per_epoch": list(churn), "last_churn": churn[-1] if churn else None,
            "tolerance": settings.converge_tol, "score_steps": res.score_steps, "budget": res.budget,
            "rescale": res.budget / learned_kept if learned_kept > 0 else None,
            "layer_keep_learned": res.layer_keep_learned, "layer_keep": res.layer_keep,
        }
        converged = None if not churn else bool(res.target_reached and churn[-1] <= settings.converge_tol)
        init_keep = max(float(settings.rate_init), res.keep)
        rates_moved = sum(abs(k - init_keep) > 1e-6 for k in res.layer_keep_learned.values())
        scores_trained = bool(settings.train_scores)
        rates_trained = settings.rate_lr_factor > 0
        mech = mechanism("HARP: pruning-phase gradient steps > 0 with the importance scores or the per-layer rates "
                         "trained (else the export is a fixed initial allocation, not a learned one)",
                         res.score_steps > 0 and (scores_trained or rates_trained), pruning_steps=res.score_steps,
                         scores_trained=scores_trained, rates_trained=rates_trained,
                         layers_whose_rate_moved=int(rates_moved), layers=len(res.layer_keep_learned))
        extras = {"layer_keep": res.layer_keep, "layer_keep_learned": res.layer_keep_learned,
                  "layer_counts": res.layer_counts, "budget": res.budget}
        return self.result(model, res.masks, rate, settings,
                           history={"prune": history_of(res.prune), "finetune": history_of(res.finetune)},
                           times=dict(res.times), convergence=conv, converged=converged, extras=extras,
                           steps=steps_of(res.prune) + steps_of(res.finetune),
                           epochs=float(prune_cfg.epochs + ft_cfg.epochs), mechanism=mech)

    def check_budget(self, settings: HarpSettings, *, epochs: float, n_train: int) -> None:
        """Besides the phases' budgets: refuse settings under which nothing is learned (scores not trained and the
        rates' learning rate 0) before any work. A pruning phase of 0 epochs is allowed (the export of the initial
        allocation, e.g. as a control) but its result is flagged ``mechanism-did-not-act``."""
        super().check_budget(settings, epochs=epochs, n_train=n_train)
        if not settings.train_scores and settings.rate_lr_factor == 0:
            raise ConfigError("harp with train_scores=false and rate_lr_factor=0 learns nothing (neither the scores "
                              "nor the per-layer rates): set rate_lr_factor > 0 (--set rate_lr_factor=1) or "
                              "train_scores=true")


register_method(HarpMethod())
