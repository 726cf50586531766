"""Twin-Rep (Li et al. 2023, "Learning Adversarially Robust Sparse Networks via Weight Reparameterization", AAAI).

Every prunable Conv2d / Linear weight is reparameterised as the element-wise product of two factors,
``W_eff = W ⊙ U`` (the *twin* weights), and the network is adversarially trained in that form:

1. **Reparameterisation** -- the layers are swapped in place (same module names) to :class:`TwinConv2d` /
   :class:`TwinLinear`, which compute with ``weight * aux_weight``. Both factors are trained, both with weight decay:
   L2 decay on two factors of a product acts on the product like an L1 penalty (for balanced factors), which is
   the implicit sparsity Twin-Rep relies on.
2. **Warm-up** -- adversarial training (PGD-AT, as the reference code's ``--mode adv``) of both factors for the
   fraction ``prune_at`` of the budget.
3. **One-shot pruning** -- global magnitude pruning of the effective weight ``|W ⊙ U|`` to the target compression
   (``twin-rep``; keeps the ``round(n / rate)`` largest over all prunable layers), or, for ``twin-rep-filter``, of
   whole convolution filters ranked globally by the L2 norm of their ``W ⊙ U`` (the reference's ``group_lasso``),
   keeping ``round(n_filters / rate)`` of them (the rate counts filters, as the reference's).
4. **Training with the mask fixed** for the rest of the budget: both factors are masked (exact zeros), so the
   gradient *and* the weight decay of a pruned entry are exactly zero in both factors (``dL/dW = g ⊙ U``,
   ``dL/dU = g ⊙ W``) and nothing can revive it; the masks are also re-applied after every optimiser step.
5. **Folding** -- ``W := W ⊙ U``, ``aux_weight`` dropped, the original Conv2d / Linear classes restored: the result
   is a plain model with the same logits; the pruned weights (and, for filters, their biases / BatchNorm terms,
   :class:`~robustprune.sparsity.MaskSet`) are exactly zero, so the filter variant passes ``sparsity.slim``.

Reference code ``UCAS-LCH/Twin-Rep`` (train.py, models/layers.py, std_adv.py); defaults are its argument-parser
defaults (100 epochs, SGD lr 0.1, momentum 0.9, weight decay 2e-4, lr x0.1 at 70 % and x0.01 at 85 % of the epochs,
pruning before epoch 10, PGD-10 with eps 0.031 and step 0.0078 ~ eps/4).

Where this implementation deviates from the reference code:

* **Initialisation of the second factor.** The reference trains from scratch: ``aux_weight`` (and ``weight``) are
  drawn i.i.d. by ``kaiming_uniform_(a=sqrt(5))`` (models/layers.py), so the product is *not* the model's weight.
  A pruning method here receives a (usually pre-trained) model, so the default ``init="balanced"`` splits each
  weight into two factors of equal magnitude whose product is the weight: ``W := sign(w) sqrt|w|``,
  ``U := sqrt|w|``. Equal magnitudes are what the reference's two i.i.d. factors have, and what makes the decay of
  both factors an L1 penalty on the product (gradient flow conserves ``W² - U²``, zero here).
  ``init="ones"`` (``U = 1``, product = weight) and ``init="kaiming"`` (the reference's draw of ``U``; for a freshly
  initialised model this is the reference exactly) are available.
* **Weight decay of the second factor** (``aux_decay``). The reference's HEAD (commit b35cda3, whose train.py is
  that of 7c09710) builds one SGD over ``model.parameters()`` with ``--weight-decay 2e-4`` but still formats
  ``args.score_decay`` into its checkpoint name after removing ``--score-decay`` from the parser, so it stops with an
  AttributeError before training. (Its ``--mode trades`` uses the repository's own ``trades.py``, present since the
  first commit 55ddaa0.) Its earlier commits (55ddaa0, add1a5c) define
  ``--score-decay 2e-4`` but give it to parameters named ``popup_score``, which the Twin layers do not have (their
  factor is ``aux_weight``): in every runnable version the second factor decays at ``--weight-decay`` = 2e-4.
  ``aux_decay`` defaults to 2e-4 for that reason (same as the first factor).
* **Split of the run.** The reference prunes inside one training run and resets its best-checkpoint tracking at the
  pruning epoch. Here warm-up and masked training are two calls of the one training loop: the masked phase starts a
  fresh optimiser (no momentum carried over the cut), checkpoint selection (on the validation split, never the test
  split as the reference does) considers masked epochs only, and the step schedule's milestones, given as fractions
  of the whole budget, are re-based onto the two phases so the lr changes at the same epochs as in one run. A cosine
  schedule cannot be split that way: the warm-up then runs at the base lr and the cosine anneals over the masked
  phase.
* **Filter budget.** As the reference (train.py ``structured_pruning``: ``thres_index = round(N * ratio) + 1``),
  the rate counts filters: ``round(n_filters / rate)`` filters of all convolutions are kept, ranked globally by
  ``||W ⊙ U||_2``, and a layer is never removed entirely (the reference caps the removal at ``n_l - 1`` per layer;
  here the layer gets back its best filter, so a few more filters than the count can be kept). ``budget: weights``
  keeps instead the filters whose convolution weights together are closest to ``1 / rate`` of them (the library's
  rule before the counting was aligned with the benchmark). Only convolutions are filter-pruned; Linear layers are
  reparameterised but not pruned, as in the reference.
* **Bias and BatchNorm of a pruned filter.** The reference masks only the weights (models/layers.py: ``weight *
  aux_weight * mask``), so a pruned filter still emits its bias and, after BatchNorm, the constant β (and ReLU(β)
  downstream). Here, as for every method of the library, a filter whose weights are all masked is removed entirely:
  its bias and the γ / β of the BatchNorm after it are held at zero (:class:`~robustprune.sparsity.MaskSet`).
  Kept because the library's checkpoints, loader, slimming and FLOP counts all rely on that invariant (the loader
  re-zeroes live terms of a fully masked unit), and because only then is a removed filter absent from the deployed
  model; leaving β live would make "filters removed" a count of filters whose constant output the next layer still
  reads. The function differs from the reference's by those constants: on a network with BatchNorm, the pruned
  filters' β (learned until the cut) no longer feeds the next layer, which the masked training then adapts to.
* **Attack start.** The reference starts PGD at ``x + 0.001 N(0, 1)``; here at ``x`` (``random_start=False``), or
  uniformly in the ball with ``random_start=True``.

Convergence signal: the churn of the would-be kept set during warm-up (fraction of the top weights / filters at the
target rate that were not in that set one epoch earlier; the first epoch compares with the set at the start), and
the fraction of the effective weights' L1 mass the cut removed. ``converged``: the last warm-up churn is at most
``converge_tol`` (the kept set had settled when it was cut); None without a warm-up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator
from torch import Tensor, nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods.interface import PAPERS, MethodSettings, PhaseSettings, PruneResult, PruneTask
from robustprune.methods.interface import PruningMethod, history_of, mechanism, phase, register_method, setting
from robustprune.methods.interface import steps_of
from robustprune.objectives import PGDAT, TRADES
from robustprune.sparsity import MaskSet, check_keep, expand_groups, group_view, prunable_layers
from robustprune.sparsity.prune import _select_global
from robustprune.train import Hook, TrainConfig, TrainResult, fit

INITS = ("balanced", "ones", "kaiming")


# ---------------------------------------------------------------------------------------------------- the layers
class _Twin:
    """Mixin: the layer computes with ``weight * aux_weight`` (Twin-Rep's reparameterised weight)."""

    aux_weight: nn.Parameter
    weight: nn.Parameter

    def twin_weight(self) -> Tensor:
        return self.weight * self.aux_weight


class TwinConv2d(_Twin, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.twin_weight(), self.bias)


class TwinLinear(_Twin, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.twin_weight(), self.bias)


_TWIN = {nn.Conv2d: TwinConv2d, nn.Linear: TwinLinear}
_PLAIN = {v: k for k, v in _TWIN.items()}


def _factors(w: Tensor, init: str, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``(W, U)`` for a weight ``w`` under ``init``."""
    w = w.detach()
    if init == "balanced":
        root = w.abs().sqrt()
        return torch.sign(w) * root, root.clone()
    if init == "ones":
        return w.clone(), torch.ones_like(w)
    # kaiming_uniform_(a=sqrt(5)) as the reference: U(-b, b) with b = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)
    fan_in = nn.init._calculate_fan_in_and_fan_out(w)[0]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    u = torch.rand(w.shape, generator=generator, dtype=torch.float32, device="cpu" if generator is None
                   else generator.device)
    return w.clone(), ((u * 2 - 1) * bound).to(device=w.device, dtype=w.dtype)


def attach_twins(model: nn.Module, *, init: str = "balanced", layers: Sequence[str] | None = None,
                 generator: torch.Generator | None = None) -> dict[str, nn.Module]:
    """Reparameterise the Conv2d / Linear layers of ``model`` (all, or ``layers``) in place as ``W ⊙ U``: same module
    names, ``weight`` is the first factor, a new parameter ``aux_weight`` the second (see :data:`INITS`)."""
    if init not in INITS:
        raise ConfigError(f"unknown Twin-Rep init {init!r}; choose {', '.join(INITS)}")
    mods = {n: m for n, m in model.named_modules() if type(m) in _TWIN or isinstance(m, _Twin)}
    if layers is not None:
        missing = [n for n in layers if n not in mods]
        if missing:
            raise ConfigError(f"Twin-Rep reparameterises plain Conv2d/Linear layers only; not found: "
                              f"{', '.join(missing)}")
        mods = {n: mods[n] for n in layers}
    if not mods:
        raise ConfigError("the model has no Conv2d/Linear layers to reparameterise")
    out = {}
    for name, mod in mods.items():
        if isinstance(mod, _Twin):
            raise ConfigError(f"layer {name!r} is already reparameterised; fold_twins() first")
        w, u = _factors(mod.weight, init, generator)
        with torch.no_grad():
            mod.weight.copy_(w)
        mod.__class__ = _TWIN[type(mod)]
        mod.register_parameter("aux_weight", nn.Parameter(u.contiguous(), requires_grad=mod.weight.requires_grad))
        out[name] = mod
    return out


def twin_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _Twin)}


def effective_weights(model: nn.Module) -> dict[str, Tensor]:
    """``{layer: W ⊙ U}`` of the reparameterised layers (detached)."""
    with torch.no_grad():
        return {n: m.twin_weight().detach() for n, m in twin_layers(model).items()}


def fold_twins(model: nn.Module) -> nn.Module:
    """``W := W ⊙ U`` in every reparameterised layer, ``aux_weight`` dropped, plain Conv2d / Linear again (in place;
    returns ``model``). The logits do not change."""
    for mod in twin_layers(model).values():
        with torch.no_grad():
            w = (mod.weight * mod.aux_weight).contiguous()
        del mod.aux_weight
        mod.__class__ = _PLAIN[type(mod)]
        with torch.no_grad():
            mod.weight.data = w
    return model


def twin_param_groups(model: nn.Module, weight_decay: float, aux_decay: float) -> list[dict]:
    """Optimiser groups: the second factors at ``aux_decay``, every other trainable parameter at ``weight_decay``."""
    aux = [m.aux_weight for m in twin_layers(model).values() if m.aux_weight.requires_grad]
    ids = {id(p) for p in aux}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "weight_decay": float(weight_decay)}]
    if aux:
        groups.append({"params": aux, "weight_decay": float(aux_decay)})
    return groups


# ---------------------------------------------------------------------------------------------------- the cut
def select_masks(weights: dict[str, Tensor], keep: float, group: str, *,
                 alive: dict[str, Tensor] | None = None, count: str = "groups") -> dict[str, Tensor]:
    """Global magnitude selection on the given (effective) weights: ``unstructured`` keeps the weights of largest
    ``|w|`` (``round(keep * n)`` of the ``n`` alive and dead ones together, ties by position), ``filter`` the
    ``round(keep * n_filters)`` filters of largest L2 norm (``count="weights"``: the filters whose weights are
    closest to ``keep * n`` weights); a layer is never removed entirely.
    ``alive``: masks already present (pruned entries stay pruned and score last)."""
    keep = check_keep(keep)
    if group not in ("unstructured", "filter"):
        raise ConfigError(f"Twin-Rep prunes single weights or filters, not {group!r}")
    alive_m = {n: (alive or {}).get(n, None) for n in weights}
    alive_m = {n: (a.to(weights[n].device) if a is not None else torch.ones_like(weights[n], dtype=torch.bool))
               for n, a in alive_m.items()}
    scores: dict[str, Tensor] = {}
    for n, w in weights.items():
        rows = group_view(w.detach().masked_fill(~alive_m[n], 0).double(), group)
        s = rows.abs()[:, 0] if group == "unstructured" else rows.pow(2).sum(dim=1).sqrt()
        dead = ~group_view(alive_m[n], group).any(dim=1)
        scores[n] = s.masked_fill(dead, float("-inf"))
    kept = _select_global(scores, alive_m, group, keep, count=count)
    return {n: expand_groups(kept[n], group, weights[n].shape) & alive_m[n] for n in weights}


def apply_twin_masks(model: nn.Module, masks: MaskSet) -> None:
    """Exact zeros in both factors of the masked entries (and, by :meth:`MaskSet.apply`, in the bias / BatchNorm
    terms of fully pruned units)."""
    masks.apply(model)
    _zero_aux(model, masks)


def _zero_aux(model: nn.Module, masks: MaskSet) -> None:
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, m in masks.masks.items():
            u = getattr(mods[name], "aux_weight", None)
            if isinstance(u, Tensor):
                u.masked_fill_(~m.to(u.device), 0)


class AuxMaskHook(Hook):
    """Keeps the second factor of masked entries at exactly zero: at the start and after every optimiser step
    (the training loop does the same for ``weight`` through its ``masks``)."""

    def __init__(self, masks: MaskSet) -> None:
        self.masks = masks

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        _zero_aux(model, self.masks)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        _zero_aux(model, self.masks)


class ChurnHook(Hook):
    """Churn of the would-be kept set during warm-up: after every epoch, the fraction of the entries kept by the
    selection at the target rate that were not kept one epoch earlier (the first epoch compares with the start)."""

    def __init__(self, model: nn.Module, names: Sequence[str], keep: float, group: str,
                 alive: dict[str, Tensor] | None, count: str = "groups") -> None:
        self.names, self.keep, self.group, self.alive, self.count = list(names), keep, group, alive, count
        self.previous = self._masks(model)
        self.churn: list[float] = []

    def _masks(self, model: nn.Module) -> dict[str, Tensor]:
        eff = effective_weights(model)
        return select_masks({n: eff[n] for n in self.names}, self.keep, self.group, alive=self.alive,
                            count=self.count)

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        now = self._masks(model)
        kept = sum(int(m.sum()) for m in now.values())
        changed = sum(int((m & ~self.previous[n]).sum()) for n, m in now.items())
        self.churn.append(changed / kept if kept else 0.0)
        metrics["twin_churn"] = self.churn[-1]
        self.previous = now


# ---------------------------------------------------------------------------------------------------- schedule
def split_schedule(cfg_warm: TrainConfig, cfg_post: TrainConfig, frac: float, milestones: Sequence[float],
                   gamma: float) -> tuple[TrainConfig, TrainConfig]:
    """The two phases' configs for a run cut at the fraction ``frac`` of its budget, so that a step schedule with
    ``milestones`` (fractions of the whole budget) changes the lr at the same points as one uncut run; a cosine
    schedule: constant warm-up, cosine over the second phase."""
    sched = cfg_post.schedule
    if sched == "cosine":
        return cfg_warm.model_copy(update={"schedule": "constant"}), cfg_post
    if sched == "constant":
        return cfg_warm.model_copy(update={"schedule": "constant"}), cfg_post
    ms = sorted(float(m) for m in milestones)
    warm_ms = tuple(m / frac for m in ms if 0 < frac and m < frac)
    passed = sum(m <= frac for m in ms)
    post_ms = tuple((m - frac) / (1 - frac) for m in ms if m > frac) if frac < 1 else ()
    warm = cfg_warm.model_copy(update={"schedule": "step", "milestones": warm_ms, "gamma": gamma})
    post = cfg_post.model_copy(update={"schedule": "step", "milestones": post_ms, "gamma": gamma,
                                       "lr": cfg_post.lr * gamma ** passed})
    return warm, post


# ---------------------------------------------------------------------------------------------------- the run
@dataclass
class TwinRepResult:
    masks: MaskSet
    warmup: TrainResult | None
    train: TrainResult | None
    churn: list[float] = field(default_factory=list)
    pruned_mass: float = 0.0
    times: dict[str, float] = field(default_factory=dict)


def _objective(loss: str, eps: float, steps: int, alpha: float, beta: float, random_start: bool):
    if loss == "pgd-at":
        return PGDAT(eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    if loss == "trades":
        return TRADES(eps=eps, beta=beta, alpha=alpha, steps=steps)
    raise ConfigError(f"Twin-Rep trains with loss 'pgd-at' or 'trades', got {loss!r}")


def twin_rep(model: nn.Module, *, train: Split, val: Split | None, warm_cfg: TrainConfig, post_cfg: TrainConfig,
             objective: Any, rate: float, group: str = "unstructured", init: str = "balanced",
             aux_decay: float = 2e-4, prune_layers: Sequence[str] | None = None,
             twin_layers_: Sequence[str] | None = None, previous: MaskSet | None = None,
             val_eps: float | None = None, augment: str | None = None, seed: int = 0,
             count: str = "groups") -> TwinRepResult:
    """Twin-Rep on ``model`` in place: reparameterise, warm up with ``warm_cfg``, cut to ``rate`` (global magnitude
    of ``W ⊙ U``, single weights or filters), train with the mask fixed with ``post_cfg``, fold. ``prune_layers``:
    the layers cut (None: every prunable layer of ``group``); ``twin_layers_``: the layers reparameterised (None:
    every Conv2d / Linear); ``previous``: masks the model already carries (kept)."""
    keep = 1.0 / float(rate)
    model.to(train.x.device)
    times: dict[str, float] = {}
    candidates = prunable_layers(model, group)
    names = list(candidates) if prune_layers is None else [n for n in candidates if n in set(prune_layers)]
    if not names:
        raise ConfigError(f"Twin-Rep: no layer of this model is prunable with group {group!r}")
    reparam = None if twin_layers_ is None else list(dict.fromkeys([*twin_layers_, *names]))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    t0 = time.perf_counter()
    attach_twins(model, init=init, layers=reparam, generator=gen)
    prev = previous.to(train.x.device) if previous is not None and len(previous) else None
    if prev is not None:
        apply_twin_masks(model, prev)
    alive = {n: prev.masks[n] for n in names if prev is not None and n in prev.masks} or None
    try:
        warm = None
        churn_hook = ChurnHook(model, names, keep, group, alive, count)
        if warm_cfg.epochs > 0:
            hooks: list[Hook] = [churn_hook] + ([AuxMaskHook(prev)] if prev is not None else [])
            warm = fit(model, objective, train, val, warm_cfg, masks=prev, hooks=hooks, val_eps=val_eps,
                       augment=augment, desc="twin-rep-warmup",
                       param_groups=twin_param_groups(model, warm_cfg.weight_decay, aux_decay))
        times["warmup"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        eff = effective_weights(model)
        cut = select_masks({n: eff[n] for n in names}, keep, group, alive=alive, count=count)
        total = sum(float(eff[n].abs().sum()) for n in names)
        removed = sum(float(eff[n].abs().masked_fill(cut[n], 0).sum()) for n in names)
        masks = MaskSet(cut)
        if prev is not None:
            masks = masks.combine(prev)
        apply_twin_masks(model, masks)
        post = None
        if post_cfg.epochs > 0:
            post = fit(model, objective, train, val, post_cfg, masks=masks, hooks=[AuxMaskHook(masks)],
                       val_eps=val_eps, augment=augment, desc="twin-rep-train",
                       param_groups=twin_param_groups(model, post_cfg.weight_decay, aux_decay))
        apply_twin_masks(model, masks)
        times["train"] = time.perf_counter() - t0
    finally:
        fold_twins(model)
    masks.apply(model)
    return TwinRepResult(masks=masks, warmup=warm, train=post, churn=churn_hook.churn,
                         pruned_mass=removed / total if total > 0 else 0.0, times=times)


# ---------------------------------------------------------------------------------------------------- the method
_REF = "Li2023 reference code UCAS-LCH/Twin-Rep"


class TwinRepSettings(MethodSettings):
    loss: Literal["pgd-at", "trades"] = setting(
        "pgd-at", f"{_REF} train.py --mode adv (std_adv.py adv_loss: cross-entropy on PGD examples crafted in eval "
                  "mode; --mode trades uses its trades.py trades_loss)", "adversarial training loss")
    beta: float = setting(6.0, f"{_REF} train.py --beta 6.0", "TRADES trade-off (loss trades only)", ge=0)
    pgd_steps: int = setting(10, f"{_REF} train.py --num-steps 10", "attack steps in training", ge=1)
    pgd_step: float = setting(0.25, f"{_REF} train.py --step-size 0.0078 at --epsilon 0.031 (= eps/4 within 1 %)",
                              "attack step size as a fraction of eps", gt=0, le=1)
    random_start: bool = setting(False, f"{_REF} std_adv.py (starts at x + 0.001 N(0,1), practically at x)",
                                 "start PGD uniformly in the ball (False: at x)")
    from_scratch: bool = setting(
        False, f"robustprune (a pruning method receives a model); the reference trains from scratch ({_REF} train.py "
               "builds a fresh model): from_scratch=true with init=kaiming is the reference's start exactly",
        "re-initialise the given model's weights first (reset_parameters, seeded), then reparameterise")
    init: Literal["balanced", "ones", "kaiming"] = setting(
        "balanced", f"{_REF} models/layers.py draws both factors i.i.d. (kaiming_uniform, a=sqrt 5) from scratch; "
                    "robustprune: equal-magnitude factors whose product is the given weight (module docstring)",
        "second-factor init: balanced (W=sign(w)sqrt|w|, U=sqrt|w|), ones (U=1), kaiming (reference draw of U)")
    aux_decay: float = setting(
        2e-4, f"{_REF} train.py: aux_weight always decays at --weight-decay 2e-4 (HEAD b35cda3 has one SGD group; "
              "the older --score-decay 2e-4 group selects 'popup_score' parameters, which Twin layers lack)",
        "weight decay of the second factor U", ge=0, le=1)
    prune_at: float = setting(
        0.09, f"{_REF} train.py --pruning-epoch 10 of --epochs 100 (pruned before the 10th epoch: 9 dense epochs)",
        "fraction of the training budget before the one-shot cut", ge=0, lt=1)
    milestones: tuple[float, float] = setting(
        (0.69, 0.84), f"{_REF} train.py adjust_learning_rate (lr x0.1 from epoch >= 0.7*epochs, x0.01 from "
                      ">= 0.85*epochs, 1-based: after 69 and 84 of 100 epochs)",
        "step-schedule milestones as fractions of the whole budget")
    gamma: float = setting(0.1, f"{_REF} train.py adjust_learning_rate (x0.1, then x0.01)",
                           "lr factor at each milestone", gt=0, le=1)
    budget: Literal["groups", "weights"] = setting(
        "groups", f"{_REF} train.py structured_pruning (round(ratio * n_filters) filters removed, global)",
        "twin-rep-filter: what the rate counts, filters (1/c of them remain) or the conv weights in whole filters; "
        "the same for twin-rep")
    converge_tol: float = setting(0.02, "robustprune convergence criterion (as HYDRA's churn tolerance)",
                                  "converged when the last warm-up epoch's kept-set churn is at most this",
                                  gt=0, le=1)
    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, float]) -> tuple[float, float]:
        if any(not 0 < m <= 1 for m in v):
            raise ValueError("milestones are fractions of the budget in (0, 1]")
        return v

    train: PhaseSettings = phase(
        f"{_REF} train.py (SGD lr 0.1, momentum 0.9, --weight-decay 2e-4, batch 128, step schedule)",
        "the whole budget (warm-up + training with the mask fixed); weight_decay is the first factor's",
        optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128, schedule="step")


class TwinRepMethod(PruningMethod):
    paper = PAPERS["Li2023"]
    Settings = TwinRepSettings
    needs_eps = True
    rate_kind = "set"

    def __init__(self, group: str) -> None:
        self.group = group
        self.name = "twin-rep" if group == "unstructured" else f"twin-rep-{group}"
        what = "single weights" if group == "unstructured" else "whole filters (L2 norm)"
        self.description = (f"Twin-Rep: weights trained as W*U with weight decay on both factors, adversarial "
                            f"warm-up, one-shot global magnitude cut of W*U ({what}), training with the mask fixed")

    def configs(self, task: PruneTask, settings: TwinRepSettings) -> tuple[TrainConfig, TrainConfig, float]:
        total = task.epochs if settings.train.epochs is None else settings.train.epochs
        warm_ep = total * settings.prune_at
        # the cut splits one budget (checked whole by check_budget): each part takes at least one step
        warm = settings.train.model_copy(update={"epochs": warm_ep}).train_config(task, at_least_one_step=True)
        post = settings.train.model_copy(update={"epochs": total - warm_ep}).train_config(task, seed_offset=1,
                                                                                          at_least_one_step=True)
        warm = warm.model_copy(update={"select": "last"})  # the dense epochs are never a candidate
        warm, post = split_schedule(warm, post, settings.prune_at, settings.milestones, settings.gamma)
        return warm, post, float(total)

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: TwinRepSettings) -> PruneResult:
        assert rate is not None
        eps = task.need_eps(self.name)
        warm, post, total = self.configs(task, settings)
        objective = _objective(settings.loss, eps, settings.pgd_steps, settings.pgd_step * eps, settings.beta,
                               settings.random_start)
        scope = self.scope_layers(model, settings)
        # reparameterised: every Conv2d / Linear (as the reference) unless the scope is restricted, then the scope
        reparam = None if settings.layers == "all" else scope
        if settings.from_scratch:
            from robustprune.methods.sparse_training import reinitialise

            reinitialise(model, task.seed)
        res = twin_rep(model, train=task.train, val=task.val, warm_cfg=warm, post_cfg=post, objective=objective,
                       rate=rate, group=self.group, init=settings.init, aux_decay=settings.aux_decay,
                       prune_layers=scope, twin_layers_=reparam, previous=task.masks, val_eps=eps,
                       augment=task.augment, seed=task.seed, count=settings.budget)
        churn = res.churn
        conv = {"churn_per_epoch": churn, "last_churn": churn[-1] if churn else None,
                "tolerance": settings.converge_tol, "pruned_l1_mass": res.pruned_mass,
                "warmup_steps": steps_of(res.warmup)}
        return self.result(model, res.masks, rate, settings,
                           history={"warmup": history_of(res.warmup), "train": history_of(res.train)},
                           times=dict(res.times), convergence=conv,
                           converged=None if not churn else bool(churn[-1] <= settings.converge_tol),
                           steps=steps_of(res.warmup) + steps_of(res.train), epochs=total,
                           mechanism=mechanism("Twin-Rep: warm-up gradient steps of W ⊙ U (both factors decayed) "
                                               "before the cut (else the cut ranks the given weights: plain "
                                               "magnitude pruning)", steps_of(res.warmup) > 0,
                                               warmup_steps=steps_of(res.warmup), masked_steps=steps_of(res.train)))


register_method(TwinRepMethod("unstructured"))
register_method(TwinRepMethod("filter"))
