"""HYDRA (Sehwag et al. 2020, "HYDRA: Pruning Adversarially Robust Neural Networks") as a baseline.

Phases (after pre-training, which is the caller's model):

1. **Score initialisation** -- every prunable layer (Conv2d + Linear, as HYDRA prunes all layers) gets an
   importance score per weight. HYDRA's *scaled* initialisation:
   ``s = sqrt(6 / fan_in) * w / max|w|`` -- proportional to the weight, so the first mask is the magnitude mask.
2. **Score optimisation** -- the weights and biases are frozen, the BatchNorm affine terms train with the scores
   (``freeze_bn=False``, as the reference: ``utils/model.py`` ``freeze_vars`` skips BatchNorm layers unless
   ``--freeze-bn``, which is off by default; HARP's code borrows the same function); the network computes with
   ``w * m`` where ``m`` keeps the top-``k`` entries of ``|s|`` in each layer (``k = round(keep * n)``), and the
   scores are trained on an adversarial objective (PGD-AT or TRADES) with a straight-through gradient
   (``d/ds = d/dm * sign(s)``, HYDRA's ``GetSubnet`` backward).
3. **Fine-tuning** -- the mask is fixed (a :class:`robustprune.sparsity.MaskSet`, pruned weights exactly zero)
   and the weights are trained on the same objective.

Unlike HYDRA's code, which sorts the scores in every forward pass (every attack step and every evaluation
batch), the top-k mask is computed **once per optimiser step** and cached: a layer recomputes it only when its
scores tensor has changed (its autograd version counter moves on every in-place optimiser update or
``load_state_dict``). Each forward pass then only multiplies by the cached mask (plus the straight-through term
when gradients are needed). ``topk_calls(model)`` counts the recomputations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods.interface import PAPERS, MethodSettings, PhaseSettings, PruneResult, PruneTask
from robustprune.methods.interface import PruningMethod, history_of, mechanism, phase, register_method, setting
from robustprune.methods.interface import steps_of
from robustprune.objectives import PGDAT, TRADES
from robustprune.sparsity import MaskSet, check_keep, sparsity_report
from robustprune.train import Hook, TrainConfig, TrainResult, fit


class _Scored:
    """Mixin: the layer computes with ``weight * topk_mask(|popup_scores|)`` (straight-through to the scores)."""

    popup_scores: nn.Parameter
    hydra_keep: float
    hydra_topk_calls: int

    def hydra_mask(self) -> Tensor:
        """The cached 0/1 mask (same shape as ``weight``), recomputed only when the scores changed."""
        s = self.popup_scores
        cache = getattr(self, "_hydra_cache", None)
        if cache is None or cache[0] != s._version or cache[1] is not s or cache[2].device != s.device:
            with torch.no_grad():
                mask = topk_mask(s, self.hydra_keep)
            self.hydra_topk_calls += 1
            self._hydra_cache = (s._version, s, mask)
            return mask
        return cache[2]

    def hydra_weight(self) -> Tensor:
        m = self.hydra_mask().to(self.weight.dtype)
        s = self.popup_scores
        if torch.is_grad_enabled() and s.requires_grad:
            a = s.abs()
            m = m + (a - a.detach())  # value m; gradient to s: dL/dm * sign(s)  (HYDRA's GetSubnet)
        return self.weight * m


class ScoredConv2d(_Scored, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.hydra_weight(), self.bias)


class ScoredLinear(_Scored, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.hydra_weight(), self.bias)


_SCORED = {nn.Conv2d: ScoredConv2d, nn.Linear: ScoredLinear}
_PLAIN = {v: k for k, v in _SCORED.items()}


def topk_mask(scores: Tensor, keep: float) -> Tensor:
    """Bool mask of the ``round(keep * n)`` (at least 1) largest ``|scores|`` of one layer."""
    flat = scores.detach().abs().flatten()
    k = max(1, min(flat.numel(), int(round(float(keep) * flat.numel()))))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(scores)


def scaled_score_init(weight: Tensor) -> Tensor:
    """HYDRA's scaled initialisation: ``sqrt(6 / fan_in) * w / max|w|``."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    m = weight.detach().abs().max()
    scale = math.sqrt(6.0 / max(fan_in, 1)) / (float(m) if float(m) > 0 else 1.0)
    return weight.detach() * scale


def attach_scores(model: nn.Module, keep: float, *, init: str = "scaled", layers: Sequence[str] | None = None,
                  generator: torch.Generator | None = None) -> dict[str, nn.Module]:
    """Turn the Conv2d/Linear layers of ``model`` (all, or ``layers``) into scored layers (in place: same module
    names, same weights, plus a ``popup_scores`` parameter). ``init``: "scaled" (HYDRA), "magnitude" (``|w|``) or
    "kaiming" (kaiming-uniform noise, HYDRA's other option)."""
    keep = check_keep(keep)
    if init not in ("scaled", "magnitude", "kaiming"):
        raise ConfigError(f"unknown HYDRA score init {init!r}; choose scaled, magnitude or kaiming")
    mods = {n: m for n, m in model.named_modules() if type(m) in _SCORED or isinstance(m, _Scored)}
    if layers is not None:
        missing = [n for n in layers if n not in mods]
        if missing:
            raise ConfigError(f"HYDRA can score only plain Conv2d/Linear layers; not found: {', '.join(missing)}")
        mods = {n: mods[n] for n in layers}
    if not mods:
        raise ConfigError("the model has no Conv2d/Linear layers to prune")
    out = {}
    for name, mod in mods.items():
        if isinstance(mod, _Scored):
            raise ConfigError(f"layer {name!r} already has HYDRA scores; finalize() first")
        w = mod.weight
        if init == "scaled":
            s = scaled_score_init(w)
        elif init == "magnitude":
            s = w.detach().abs().clone()
        else:
            s = torch.empty_like(w)
            bound = 1.0 / math.sqrt(max(nn.init._calculate_fan_in_and_fan_out(w)[0], 1))
            s.uniform_(-bound, bound, generator=generator) if generator is not None else s.uniform_(-bound, bound)
        mod.__class__ = _SCORED[type(mod)]
        mod.register_parameter("popup_scores", nn.Parameter(s.clone()))
        mod.hydra_keep = keep
        mod.hydra_topk_calls = 0
        mod._hydra_cache = None
        out[name] = mod
    return out


def scored_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _Scored)}


def topk_calls(model: nn.Module) -> dict[str, int]:
    """How many times each scored layer recomputed its top-k mask."""
    return {n: int(m.hydra_topk_calls) for n, m in scored_layers(model).items()}


def current_masks(model: nn.Module) -> MaskSet:
    """The current top-k masks of the scored layers as a MaskSet (no change to the model)."""
    return MaskSet({n: m.hydra_mask().clone() for n, m in scored_layers(model).items()})


def finalize(model: nn.Module) -> MaskSet:
    """Fix the masks: plain Conv2d/Linear layers again (scores dropped), pruned weights set to exactly zero.
    Returns the MaskSet that keeps them there during fine-tuning."""
    masks = current_masks(model)
    for name, mod in scored_layers(model).items():
        del mod.popup_scores
        for attr in ("hydra_keep", "hydra_topk_calls", "_hydra_cache"):
            if attr in mod.__dict__:
                delattr(mod, attr)
        mod.__class__ = _PLAIN[type(mod)]
    masks.apply(model)
    return masks


@dataclass
class HydraResult:
    masks: MaskSet
    keep: float
    layer_keep: dict[str, float]
    prune: TrainResult | None
    finetune: TrainResult | None
    topk_calls: dict[str, int]
    score_steps: int
    sparsity: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)
    """Parameters the score optimisation trained (scores, and BatchNorm affine terms unless ``freeze_bn``)."""


def _objective(loss: str, eps: float, steps: int, alpha: float | None, beta: float, method: str = "HYDRA"):
    """The adversarial objective of HYDRA-style score training (HYDRA, HARP): PGD-AT or TRADES."""
    key = str(loss).lower()
    if key in ("pgd-at", "pgd", "at"):
        return PGDAT(eps=eps, alpha=alpha, steps=steps)
    if key == "trades":
        return TRADES(eps=eps, beta=beta, alpha=alpha, steps=steps)
    raise ConfigError(f"{method} trains with loss 'pgd-at' or 'trades', got {loss!r}")


def resolve_keep(keep: float | None, rate: float | None) -> float:
    """The kept fraction from exactly one of ``keep`` or ``rate`` (compression, keep = 1/rate)."""
    if (keep is None) == (rate is None):
        raise ConfigError("give exactly one of keep (fraction of weights kept) or rate (compression, keep = 1/rate)")
    if rate is not None:
        if not float(rate) >= 1:
            raise ConfigError(f"rate must be >= 1, got {rate!r}")
        keep = 1.0 / float(rate)
    return check_keep(keep)


def hydra(
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
    layers: Sequence[str] | None = None,
    val_eps: float | None = None,
    augment: str | None = None,
    scheme: str | None = None,
    churn: list | None = None,
    freeze_bn: bool = False,
) -> HydraResult:
    """HYDRA on ``model`` (in place): scaled score init, score optimisation (weights frozen) with ``prune_cfg``,
    then fine-tuning of the weights with the fixed mask with ``finetune_cfg``.

    ``keep`` (fraction of weights kept per layer) or ``rate`` (compression, ``keep = 1/rate``). ``loss``:
    "pgd-at" or "trades" (``beta``), with L-inf ``eps`` and ``steps``; or pass ``objective``. ``scheme`` is
    accepted for the recipe registry (HYDRA is unstructured: "irregular").
    """
    if scheme is not None and str(scheme).lower() not in ("irregular", "unstructured"):
        raise ConfigError(f"HYDRA prunes single weights (scheme 'irregular'), got scheme={scheme!r}")
    keep = resolve_keep(keep, rate)
    if objective is None:
        if eps is None:
            raise ConfigError("HYDRA needs eps (the L-inf radius of its adversarial training), or an objective")
        objective = _objective(loss, eps, steps, alpha, beta)
    v_eps = val_eps if val_eps is not None else (eps if eps is not None else getattr(objective, "eps", None))
    model.to(train.x.device)
    times: dict[str, float] = {}
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    t0 = time.perf_counter()
    attach_scores(model, keep, init=score_init, layers=layers)
    trainable = score_phase_trainable(model, freeze_bn=freeze_bn)
    prune_res = None
    try:
        if prune_cfg.epochs > 0:
            churn_hook = ChurnHook(model)
            if churn is not None:
                churn.append(churn_hook)
            prune_res = fit(model, objective, train, val, prune_cfg, val_eps=v_eps, augment=augment,
                            hooks=[churn_hook], desc="hydra-prune")
        calls = topk_calls(model)
        masks = finalize(model)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    times["prune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ft = None
    if finetune_cfg.epochs > 0:
        ft = fit(model, objective, train, val, finetune_cfg, masks=masks, val_eps=v_eps, augment=augment,
                 desc="hydra-finetune")
    masks.apply(model)
    times["finetune"] = time.perf_counter() - t0
    return HydraResult(masks=masks, keep=keep, layer_keep=masks.layer_keep_fractions(), prune=prune_res,
                       finetune=ft, topk_calls=calls, score_steps=prune_res.steps if prune_res else 0,
                       sparsity=sparsity_report(model, masks), times=times, trainable=trainable)


def score_phase_trainable(model: nn.Module, *, freeze_bn: bool = False) -> list[str]:
    """Set what the score optimisation trains (in place): every parameter frozen, then the scores and, unless
    ``freeze_bn``, the affine weight and bias of every BatchNorm (HYDRA's ``freeze_vars`` skips BatchNorm layers).
    Returns the names of the trainable parameters."""
    from torch.nn.modules.batchnorm import _BatchNorm

    for p in model.parameters():
        p.requires_grad_(False)
    for m in scored_layers(model).values():
        m.popup_scores.requires_grad_(True)
    if not freeze_bn:
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.affine:
                m.weight.requires_grad_(True)
                m.bias.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


class ChurnHook(Hook):
    """Kept-set churn of HYDRA's score optimisation: after every epoch, the fraction of the kept weights that were
    not kept after the previous epoch (the first epoch compares with the scaled-magnitude initialisation). Small
    churn: the mask has settled."""

    def __init__(self, model: nn.Module) -> None:
        self.previous = current_masks(model)
        self.churn: list[float] = []

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        now = current_masks(model)
        kept = changed = 0
        for n, m in now.masks.items():
            kept += int(m.sum())
            changed += int((m & ~self.previous.masks[n]).sum())
        self.churn.append(changed / kept if kept else 0.0)
        metrics["hydra_churn"] = self.churn[-1]
        self.previous = now


class HydraSettings(MethodSettings):
    loss: Literal["trades", "pgd-at"] = setting("trades", "Sehwag2020 reference code (trainer 'adv': TRADES)",
                                                "adversarial loss of score optimisation and fine-tuning")
    beta: float = setting(6.0, "Sehwag2020 reference code (TRADES beta 6)", "TRADES trade-off", ge=0)
    pgd_steps: int = setting(10, "Sehwag2020 reference code (10 attack steps in training)",
                             "attack steps in training", ge=1)
    score_init: Literal["scaled", "magnitude", "kaiming"] = setting(
        "scaled", "Sehwag2020 §3 (scaled initialisation, proportional to the weights)", "importance-score init")
    freeze_bn: bool = setting(False, "Sehwag2020 reference code (inspire-group/hydra args.py --freeze-bn, off by "
                                     "default; utils/model.py freeze_vars skips BatchNorm unless it is set)",
                              "freeze the BatchNorm affine terms during score optimisation (false: they train with "
                              "the scores, as the reference)")
    converge_tol: float = setting(0.02, "robustprune convergence criterion",
                                  "score optimisation has converged when the last epoch's kept-set churn is at most "
                                  "this", gt=0, le=1)
    prune: PhaseSettings = phase("Sehwag2020 reference code (configs.yml: SGD lr 0.1, momentum 0.9, wd 1e-4, "
                                 "cosine)", "importance-score optimisation, weights frozen", optimizer="sgd", lr=0.1,
                                 momentum=0.9, weight_decay=1e-4, schedule="cosine")
    finetune: PhaseSettings = phase("Sehwag2020 reference code (fine-tune --lr 0.01, SGD, cosine)",
                                    "fine-tuning of the weights under the fixed mask", optimizer="sgd", lr=0.01,
                                    momentum=0.9, weight_decay=1e-4, schedule="cosine")


class HydraMethod(PruningMethod):
    name = "hydra"
    paper = PAPERS["Sehwag2020"]
    Settings = HydraSettings
    group = "unstructured"
    needs_eps = True
    description = "HYDRA: adversarial importance-score optimisation, top-k mask per layer, then fine-tuning"

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: HydraSettings) -> PruneResult:
        assert rate is not None
        eps = task.need_eps(self.name)
        prune_cfg = settings.prune.train_config(task)
        ft_cfg = settings.finetune.train_config(task, seed_offset=1)
        holder: list[ChurnHook] = []
        res = hydra(model, train=task.train, val=task.val, prune_cfg=prune_cfg, finetune_cfg=ft_cfg, eps=eps,
                    rate=rate, loss=settings.loss, steps=settings.pgd_steps, beta=settings.beta,
                    score_init=settings.score_init, val_eps=eps, augment=task.augment, churn=holder,
                    layers=self.scope_layers(model, settings), freeze_bn=settings.freeze_bn)
        churn = holder[0].churn if holder else []
        conv = {"churn_per_epoch": churn, "last_churn": churn[-1] if churn else None,
                "tolerance": settings.converge_tol, "score_steps": res.score_steps,
                "score_phase_trainable": res.trainable}
        return self.result(model, res.masks, rate, settings,
                           history={"prune": history_of(res.prune), "finetune": history_of(res.finetune)},
                           times=dict(res.times), convergence=conv,
                           converged=None if not churn else bool(churn[-1] <= settings.converge_tol),
                           steps=steps_of(res.prune) + steps_of(res.finetune),
                           epochs=float(prune_cfg.epochs + ft_cfg.epochs),
                           mechanism=mechanism("HYDRA: score-optimisation gradient steps > 0 (else the mask is the "
                                               "scaled-magnitude initialisation's, i.e. layer-local magnitude "
                                               "pruning)", res.score_steps > 0, score_steps=res.score_steps))


register_method(HydraMethod())
