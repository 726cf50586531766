"""Chen2022 ("Sparsity Winning Twice", ICLR 2022): Flying Bird, Flying Bird+ and Robust Bird.

Reference code: ``VITA-Group/Sparsity-Win-Robust-Generalization`` (``main_adv.py``, ``utils.py``,
``sparselearning/core.py``, ``sparselearning/igq.py`` for the Flying Birds; ``Robust-Bird/train_eb.py`` and
``Robust-Bird/utils/early_bird.py`` for Robust Bird). Nothing is copied from it; line numbers below are of its
commit ``0aceb37``.

``flyingbird`` (FB): sparse PGD adversarial training from scratch. The prunable layers (``layers`` scope) start from
random masks whose per-layer densities follow IGQ (``layer_density="igq"``, the default as in the runnable reference:
density ``1 / (1 + f·n_l)``) or ERK (``"erk"``: density ∝ ``Σ shape / Π shape``, scaled to the global target, layers
whose density would exceed 1 kept dense and the rest rescaled), rounded to whole weights so that exactly
``round(N / rate)`` weights remain (largest-remainder rounding, at least one weight per layer). Every ``update_every`` optimiser steps
(``update_every_late`` in the second half of the epochs, ``--dynamic_fre``) each sparse layer drops the
``ceil(d·k_l)`` kept weights of smallest magnitude and regrows as many at random among its dead positions (at zero,
with their optimiser momentum zeroed); ``d`` follows the cosine decay ``d(t) = d_T + (d_0 − d_T)(1 + cos(πt/T))/2``
over the ``T`` steps of training (``sparselearning/core.py`` ``CosineDecay``, stepped once per optimiser step).

``flyingbird-plus`` (FB+): the same, plus the reference's dynamic density (``core.py`` L377-415, applied in
``truncate_weights``): from epoch ``dst_start · epochs`` on, at every topology update, over the last
``epoch_range + 1`` epochs,

* if the robust generalisation gap (training robust accuracy of the epoch − validation robust accuracy) rose in at
  least ``update_threshold`` of the consecutive epoch pairs, the death step removes ``ceil(d · prune_ratio · k_l)``
  more weights (not regrown);
* if the validation robust loss did not fall (difference ≥ 0) in at least ``update_threshold`` of them, the growth
  step regrows ``growth_ratio`` more weights than it removed — never above the starting count, so the achieved
  compression is at least the given rate. The rate is the starting density; the result states what it ends at.

``robustbird`` (RB): natural training (from scratch) until the global magnitude mask (top ``round(N / rate)``
``|w|`` over the prunable scope) stabilises — the normalised Hamming distance (differing positions / N) between
the newest epoch's mask and each of the previous ``eb_window − 1`` epochs' masks is at most ``hamming_tol``
(``early_bird.py`` L85-133: 5 masks, 4 distances, all ≤ 0.08) — then one global magnitude prune to the target and
PGD adversarial training with the mask fixed (the surviving weights are kept, fresh optimiser: ``train_eb.py``
L183-195). If the mask never stabilises within the natural-training budget, it prunes at the end of the budget and
reports ``converged=False`` with the distances.

Deviations from the reference code (all stated):

* ``args.dynamic_sparse`` is never defined in the reference (``main_adv.py`` has no such argument), so its first
  topology update (``truncate_weights`` → ``dst_prune``) raises ``AttributeError`` for FB and FB+ alike. Here it is
  read as what the flags mean: on for ``flyingbird-plus`` (``--fbp``), off for ``flyingbird`` (``--fb``).
* Exact counts: death removes exactly ``ceil(d·k_l)`` weights (the reference thresholds at a magnitude and may cut
  more on ties), growth regrows exactly as many as it removed (the reference draws a Bernoulli mask whose size only
  averages that), and the layer densities are rounded to exactly the global target (the reference's ERK/IGQ masks
  are Bernoulli / ``int()``-rounded).
* Growth draws among the positions that were dead *before* the update (the reference also lets a weight removed in
  the same update come back); only when a layer has fewer dead positions than it must regrow are the just-removed
  positions drawn for the rest (they restart at zero).
* An update due on the last step of an epoch runs one step later (none after the last step of training), so that no
  epoch the loop may select holds regrown weights that were never trained (they start at exactly zero). The
  achieved compression is counted from the weights: a regrown weight whose unit is dead can still be zero.
* A model that arrives already pruned (``task.masks``) is not kept at its masks: FB draws new random masks, RB's
  magnitude prune ranks its zeros last.
* FB+'s extra growth never lifts the global count above the starting one (the reference can end denser than it
  started); its gap and validation robust loss are measured once per epoch, in fp32, on the first ``val_size`` points
  of the validation split (the reference uses its whole validation loader) with the reference's test attack: PGD-20
  at step 2/255 for ε 8/255 (``main_adv.py`` L56-59 ``--test_step 20 --test_gamma 2``, random start; settings
  ``val_pgd_steps``, ``val_pgd_step_size`` as a fraction of ε), whatever attack the loop validates with.
* Robust Bird's early-bird mask covers the prunable scope (Conv2d and Linear, as its prune) rather than the Conv2d
  weights only, and keeps exactly the prune's count (the reference thresholds at ``y[int(N·(1−density))]``).
* Checkpoint selection is the loop's (best validation robust accuracy); the reference keeps the last epoch and
  reports the best. For the Flying Birds the selected epoch's own mask is returned with its weights.
* Adversarial examples are crafted in eval mode by the library's PGD (the reference's advertorch attack runs the
  model in train mode).
* Mechanism checks (``PruneResult.mechanism``): a Flying Bird run counts as Flying Bird only if at least one
  topology update ran; a budget with fewer optimiser steps than the first update needs (``update_every``) is refused
  before any work, and a run that still made none is flagged ``mechanism-did-not-act``. Robust Bird counts when its
  natural phase trained, so that the early-bird criterion was checked (met, or the documented fallback of pruning at
  the end of the natural budget).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import field_validator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import pgd_linf_last
from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods.interface import PAPERS, MethodSettings, PhaseSettings, PruneResult, PruneTask
from robustprune.methods.interface import PruningMethod, _epochs_and_steps, history_of, mechanism, phase
from robustprune.methods.interface import register_method, setting, steps_of
from robustprune.objectives import PGDAT, Natural, eval_mode
from robustprune.precision import evaluation_precision
from robustprune.sparsity import MaskSet, num_keep, prunable_layers
from robustprune.train import Hook, TrainConfig, TrainResult, fit
from robustprune.utils import make_generator

# ---------------------------------------------------------------------------------------------------------------
# layer densities


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, power: float = 1.0) -> dict[str, float]:
    """ERK layer densities for the global ``density``: ``ε · (Σ shape / Π shape)^power``, with ``ε`` chosen so that
    ``Σ density_l · n_l = density · N``; a layer whose density would exceed 1 is made dense and ``ε`` is solved again
    over the others (``sparselearning/core.py`` L99-162, Evci2020)."""
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density!r}")
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: (sum(s) / numel[n]) ** power for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rhs = sum(density * numel[n] for n in numel if n not in dense) - sum(
            (1 - density) * numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in numel if n not in dense)
        if divisor <= 0:
            return {n: 1.0 for n in numel}
        eps = rhs / divisor
        top = max(raw[n] for n in numel if n not in dense)
        if eps * top <= 1 + 1e-12:
            break
        dense |= {n for n in numel if n not in dense and raw[n] == top}
    return {n: 1.0 if n in dense else eps * raw[n] for n in numel}


def igq_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """IGQ layer densities: ``1 / (1 + f · n_l)`` with ``f`` such that ``Σ n_l / (1 + f n_l) = density · N``
    (``sparselearning/igq.py``: the same force, found here by bisection to float precision)."""
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density!r}")
    numel = {n: math.prod(s) for n, s in shapes.items()}
    target = density * sum(numel.values())

    def kept(f: float) -> float:
        return sum(n / (1 + f * n) for n in numel.values())

    if kept(0.0) <= target:
        return {n: 1.0 for n in numel}
    lo, hi = 0.0, 1.0
    while kept(hi) > target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kept(mid) > target else (lo, mid)
    f = 0.5 * (lo + hi)
    return {name: 1.0 / (1.0 + f * n) for name, n in numel.items()}


def allocate_counts(expected: Mapping[str, float], sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Whole kept counts per layer summing to exactly ``total``: ``floor`` of the expected counts (at least 1, at most
    the layer size), then the remainder by largest fractional part (removed by smallest when over)."""
    names = list(expected)
    if total < len(names) or total > sum(sizes.values()):
        raise ConfigError(f"cannot keep {total} weights in {len(names)} layers of {sum(sizes.values())} weights "
                          "(at least one per layer)")
    k = {n: min(sizes[n], max(1, int(math.floor(expected[n] + 1e-9)))) for n in names}
    rest = total - sum(k.values())
    while rest != 0:
        if rest > 0:
            order = sorted((n for n in names if k[n] < sizes[n]), key=lambda n: (-(expected[n] - k[n]), names.index(n)))
            step = 1
        else:
            order = sorted((n for n in names if k[n] > 1), key=lambda n: (expected[n] - k[n], names.index(n)))
            step = -1
        for n in order[: abs(rest)]:
            k[n] += step
        rest = total - sum(k.values())
    return k


def layer_counts(shapes: Mapping[str, Sequence[int]], total_keep: int, kind: str = "erk") -> dict[str, int]:
    """Kept weights per layer: ERK or IGQ densities for the global density ``total_keep / N``, rounded to exactly
    ``total_keep``."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    density = total_keep / sum(sizes.values())
    if kind == "erk":
        dens = erk_densities(shapes, density)
    elif kind == "igq":
        dens = igq_densities(shapes, density)
    else:
        raise ConfigError(f"layer_density must be 'erk' or 'igq', got {kind!r}")
    return allocate_counts({n: dens[n] * sizes[n] for n in sizes}, sizes, total_keep)


def random_masks(shapes: Mapping[str, Sequence[int]], counts: Mapping[str, int], generator: torch.Generator,
                 device: torch.device | str = "cpu") -> MaskSet:
    """Uniformly random masks with exactly ``counts[name]`` kept entries each (drawn on the CPU ``generator``)."""
    out = {}
    for name, shape in shapes.items():
        n = math.prod(shape)
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=generator)[: int(counts[name])]] = True
        out[name] = flat.view(tuple(shape)).to(device)
    return MaskSet(out)


# ---------------------------------------------------------------------------------------------------------------
# the topology update


def cosine_death_rate(step: int, total_steps: int, initial: float = 0.5, final: float = 0.005) -> float:
    """Death rate after ``step`` optimiser steps of ``total_steps``: ``final + (initial − final)(1 + cos(π t/T))/2``
    (``CosineDecay``: ``CosineAnnealingLR`` from ``initial`` to ``eta_min = final`` over ``T`` steps)."""
    if total_steps <= 0:
        return float(initial)
    t = min(max(step, 0), total_steps)
    return float(final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * t / total_steps)))


def zero_optimizer_state(optimizer: torch.optim.Optimizer | None, param: Tensor, positions: Tensor) -> None:
    """Zero the optimiser's per-weight state of ``param`` (SGD momentum buffer, Adam moments) at ``positions``."""
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(positions.to(value.device), 0)


@dataclass
class LayerChange:
    killed: Tensor
    """Bool, shaped like the weight: removed by the death step (some may be drawn again by the growth step)."""
    grown: Tensor
    """Bool: drawn by the growth step (kept after the update, at zero)."""


def death_and_growth(weight: Tensor, mask: Tensor, n_kill: int, n_grow: int,
                     generator: torch.Generator) -> tuple[Tensor, LayerChange]:
    """One layer's update: remove the ``n_kill`` kept weights of smallest ``|w|`` (ties: lower index first), then keep
    ``n_grow`` positions drawn uniformly among those dead before the update (and, only if too few, among the just
    removed ones). Returns the new mask and what changed; the weight is not touched."""
    flat = mask.reshape(-1)
    mag = weight.detach().abs().reshape(-1).float()
    alive = flat.nonzero().squeeze(1)
    n_kill = min(int(n_kill), alive.numel())
    order = torch.sort(mag[alive], stable=True).indices[:n_kill]
    killed_idx = alive[order]
    new = flat.clone()
    new[killed_idx] = False
    pool = (~flat).nonzero().squeeze(1)
    n_grow = min(int(n_grow), pool.numel() + killed_idx.numel())
    if n_grow <= pool.numel():
        pick = pool[torch.randperm(pool.numel(), generator=generator)[:n_grow].to(pool.device)]
    else:
        extra = killed_idx[torch.randperm(killed_idx.numel(), generator=generator)[: n_grow - pool.numel()]
                           .to(pool.device)]
        pick = torch.cat([pool, extra])
    new[pick] = True
    killed = torch.zeros_like(flat)
    killed[killed_idx] = True
    grown = torch.zeros_like(flat)
    grown[pick] = True
    return new.view_as(mask), LayerChange(killed=killed.view_as(mask), grown=grown.view_as(mask))


def topology_update(modules: Mapping[str, nn.Module], masks: MaskSet, optimizer: torch.optim.Optimizer | None,
                    death_rate: float, generator: torch.Generator, *, extra_prune: float = 0.0,
                    extra_growth: float = 0.0, max_kept: int | None = None) -> dict[str, Any]:
    """Magnitude death and random growth in every sparse layer of ``masks`` (a dense layer stays dense, as in the
    reference): ``ceil(d·k_l)`` removed and as many regrown; FB+'s ``extra_prune`` removes ``ceil(d·p·k_l)`` more,
    ``extra_growth`` regrows ``floor(g·removed)`` more while the total stays at most ``max_kept``. Removed and regrown
    weights are set to zero with their optimiser state; the masks are replaced in ``masks`` (gradient hooks read
    them when they fire). Returns the counts."""
    plans: dict[str, list[int]] = {}
    kept_before = masks.kept()
    for name in masks.masks:
        m = masks.masks[name]
        alive, n = int(m.sum()), m.numel()
        if alive in (0, n):
            continue
        remove = math.ceil(death_rate * alive)
        if remove <= 0:
            continue
        kill = min(alive, remove + (math.ceil(death_rate * extra_prune * alive) if extra_prune > 0 else 0))
        free = n - alive + kill
        base = min(remove, free)
        extra = min(int(math.floor(remove * extra_growth)), free - base) if extra_growth > 0 else 0
        plans[name] = [kill, base, extra]
    if max_kept is not None:
        budget = max_kept - (kept_before - sum(p[0] for p in plans.values()) + sum(p[1] for p in plans.values()))
        for p in plans.values():
            p[2] = max(0, min(p[2], budget))
            budget -= p[2]
    killed = grown = 0
    per_layer = {}
    for name, (kill, base, extra) in plans.items():
        w = modules[name].weight
        new, change = death_and_growth(w, masks.masks[name], kill, base + extra, generator)
        changed = change.killed | change.grown
        with torch.no_grad():
            w.masked_fill_(changed.to(w.device), 0)
        zero_optimizer_state(optimizer, w, changed)
        masks.masks[name] = new
        k, g = int(change.killed.sum()), int(change.grown.sum())
        killed += k
        grown += g
        per_layer[name] = (k, g)
    return {"killed": killed, "grown": grown, "kept_before": kept_before, "kept": masks.kept(),
            "layers": per_layer}


# ---------------------------------------------------------------------------------------------------------------
# Flying Bird+ rule


def trend_fraction(values: Sequence[float], window: int, *, strict: bool) -> float | None:
    """Fraction of the consecutive differences among the last ``window + 1`` values that are ``> 0`` (``strict``) or
    ``>= 0``; None with fewer than two values (``get_dst_ratio``, ``core.py`` L377-398)."""
    v = list(values)[-(window + 1):]
    if len(v) < 2:
        return None
    diffs = [b - a for a, b in zip(v, v[1:])]
    return sum((d > 0) if strict else (d >= 0) for d in diffs) / len(diffs)


def dst_decision(gaps: Sequence[float], losses: Sequence[float], window: int,
                 threshold: float) -> tuple[bool, bool, float | None, float | None]:
    """FB+: (prune more, grow more, prune ratio, growth ratio). Prune when the robust generalisation gap rose in at
    least ``threshold`` of the recent epoch pairs; grow when the validation robust loss did not fall in at least
    ``threshold`` of them."""
    pr = trend_fraction(gaps, window, strict=True)
    gr = trend_fraction(losses, window, strict=False)
    return (pr is not None and pr >= threshold, gr is not None and gr >= threshold, pr, gr)


def robust_loss_accuracy(model: nn.Module, split: Split, *, n: int, eps: float, steps: int, seed: int,
                         batch_size: int = 500, alpha: float | None = None) -> tuple[float, float]:
    """Robust accuracy and mean cross-entropy on the last PGD iterate (step ``alpha``, default ε/4; random start) of
    the first ``n`` points of ``split``; eval mode, strict fp32."""
    x, y = split.x[:n], split.y[:n]
    g = make_generator(seed, x.device)
    correct, loss = 0, 0.0
    with evaluation_precision("fp32"), torch.autocast(x.device.type, enabled=False), eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i: i + batch_size], y[i: i + batch_size]
            xa = pgd_linf_last(model, xb, yb, eps=eps, alpha=alpha, steps=steps, generator=g)
            with torch.no_grad():
                logits = model(xa).float()
                loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
    m = max(len(x), 1)
    return correct / m, loss / m


# ---------------------------------------------------------------------------------------------------------------
# hooks


@dataclass
class PlusRule:
    epoch_range: int
    prune_ratio: float
    growth_ratio: float
    threshold: float
    start_epoch: float
    evaluate: Callable[[nn.Module], tuple[float, float]] | None
    """(val robust accuracy, val robust loss) of the model, or None when there is no validation split."""


class FlyingBirdHook(Hook):
    """Dynamic sparsity inside :func:`fit`: holds the masks (gradient hooks, exact zeros after every step), updates
    the topology every ΔT steps, records every update and, for FB+, the gap and loss histories; keeps the mask of
    every epoch that fit may select (best by validation robust / clean accuracy, and the last)."""

    def __init__(self, modules: Mapping[str, nn.Module], masks: MaskSet, *, total_steps: int, epochs: int,
                 death_rate: float, death_rate_final: float, update_every: int, update_every_late: int,
                 generator: torch.Generator, plus: PlusRule | None = None, steps_per_epoch: int = 0) -> None:
        self.modules = dict(modules)
        self.steps_per_epoch = steps_per_epoch
        self._pending = False
        self.masks = masks
        self.total_steps = total_steps
        self.epochs = epochs
        self.death_rate, self.death_rate_final = death_rate, death_rate_final
        self.update_every, self.update_every_late = update_every, update_every_late
        self.generator = generator
        self.plus = plus
        self.start_kept = masks.kept()
        self.optimizer: torch.optim.Optimizer | None = None
        self.epoch = 0  # epochs finished
        self.updates: list[dict[str, Any]] = []
        self.gaps: list[float] = []
        self.losses: list[float] = []
        self.val_robust: list[float] = []
        self.snapshots: dict[int, dict[str, Tensor]] = {0: {n: m.clone() for n, m in masks.masks.items()}}
        self._best = {"val_robust": -math.inf, "val_clean": -math.inf}
        self._best_epoch = {"val_robust": 0, "val_clean": 0}

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        device = next(iter(self.modules.values())).weight.device
        self.masks.to(device)
        self.masks.apply(model)
        self.masks.attach(model)

    def close(self) -> None:
        self.masks.detach()

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.masks.apply(model)
        every = self.update_every_late if self.epoch > self.epochs / 2 else self.update_every
        if not (step % every == 0 or self._pending):
            return
        if self.steps_per_epoch > 1 and step % self.steps_per_epoch == 0:
            # an epoch's last step: run the update at the next step instead, so that no saved epoch holds regrown
            # weights that were never trained (they would still be exactly zero); none after the last step
            self._pending = step < self.total_steps
            return
        self._pending = False
        self.update(model, step)

    def update(self, model: nn.Module, step: int) -> dict[str, Any]:
        d = cosine_death_rate(step, self.total_steps, self.death_rate, self.death_rate_final)
        prune = grow = False
        pr = gr = None
        if self.plus is not None and self.plus.evaluate is not None and self.epoch >= self.plus.start_epoch:
            prune, grow, pr, gr = dst_decision(self.gaps, self.losses, self.plus.epoch_range, self.plus.threshold)
        out = topology_update(self.modules, self.masks, self.optimizer, d, self.generator,
                              extra_prune=self.plus.prune_ratio if prune else 0.0,
                              extra_growth=self.plus.growth_ratio if grow else 0.0, max_kept=self.start_kept)
        self.masks.apply(model)
        rec = {"step": step, "epoch": self.epoch, "death_rate": d, "killed": out["killed"], "grown": out["grown"],
               "kept_before": out["kept_before"], "kept": out["kept"],
               "density": out["kept"] / max(self.masks.numel(), 1)}
        if self.plus is not None:
            rec.update({"dst_prune": prune, "dst_grow": grow, "prune_ratio": pr, "growth_ratio": gr})
        self.updates.append(rec)
        return out

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        self.epoch = epoch + 1
        metrics["density"] = self.masks.kept() / max(self.masks.numel(), 1)
        if self.plus is not None and self.plus.evaluate is not None:
            acc, loss = self.plus.evaluate(model)
            self.val_robust.append(acc)
            self.losses.append(loss)
            self.gaps.append(float(metrics["train_acc"]) - acc)
            metrics["robust_gap"] = self.gaps[-1]
            metrics["val_robust_loss"] = loss
        for key in self._best:
            v = metrics.get(key)
            if v is not None and v > self._best[key]:
                self._best[key], self._best_epoch[key] = v, epoch + 1
        self.snapshots[epoch + 1] = {n: m.clone() for n, m in self.masks.masks.items()}
        keep = {0, epoch + 1, *self._best_epoch.values()}
        for e in [e for e in self.snapshots if e not in keep]:
            del self.snapshots[e]

    def masks_of_epoch(self, epoch: int) -> MaskSet:
        """The masks the weights of ``epoch`` (0: before training) were trained under."""
        if epoch not in self.snapshots:
            raise RuntimeError(f"no mask kept for epoch {epoch} (kept: {sorted(self.snapshots)})")
        return MaskSet({n: m.clone() for n, m in self.snapshots[epoch].items()})


def global_magnitude_mask(modules: Mapping[str, nn.Module], keep: int) -> Tensor:
    """Flat bool mask (layers concatenated in order) of the ``keep`` largest ``|w|`` over ``modules``
    (ties: lower index first)."""
    flat = torch.cat([m.weight.detach().abs().reshape(-1).float() for m in modules.values()])
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    out[torch.sort(flat, descending=True, stable=True).indices[:keep]] = True
    return out


def split_flat_mask(modules: Mapping[str, nn.Module], flat: Tensor) -> MaskSet:
    out, start = {}, 0
    for name, mod in modules.items():
        n = mod.weight.numel()
        out[name] = flat[start: start + n].view(tuple(mod.weight.shape)).clone()
        start += n
    return MaskSet(out)


def hamming_distance(a: Tensor, b: Tensor) -> float:
    """Normalised Hamming distance of two masks: differing positions / positions (``early_bird.py`` L98)."""
    return float((a != b).sum()) / max(a.numel(), 1)


def early_bird_distances(window: Sequence[Tensor], size: int = 5) -> list[float] | None:
    """Distances between the newest mask and each older one of a full window of ``size`` masks (None until full)."""
    if len(window) < size:
        return None
    w = list(window)[-size:]
    return [hamming_distance(w[-1], m) for m in w[:-1]]


class EarlyBirdHook(Hook):
    """Robust Bird's stopping rule: after each natural-training epoch, the global magnitude mask at the target count;
    training stops once every distance of the newest mask to the previous ``window − 1`` is ``≤ tol``."""

    def __init__(self, modules: Mapping[str, nn.Module], keep: int, *, window: int = 5, tol: float = 0.08) -> None:
        self.modules, self.keep, self.window, self.tol = dict(modules), keep, window, tol
        self.masks: list[Tensor] = []
        self.distances: list[list[float] | None] = []
        self.emerged_epoch: int | None = None

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        self.masks.append(global_magnitude_mask(self.modules, self.keep))
        self.masks = self.masks[-self.window:]
        d = early_bird_distances(self.masks, self.window)
        self.distances.append(d)
        if d is not None:
            metrics["eb_hamming_max"] = max(d)
            if max(d) <= self.tol:
                self.emerged_epoch = epoch + 1
                self.stop_training = True


# ---------------------------------------------------------------------------------------------------------------
# helpers shared by the methods


def reinitialise(model: nn.Module, seed: int) -> None:
    """``reset_parameters()`` of every module that has one, from ``seed`` (the caller's RNG state is kept)."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        for mod in model.modules():
            reset = getattr(mod, "reset_parameters", None)
            if callable(reset):
                reset()


def first_update_step(total_steps: int, steps_per_epoch: int, epochs: int, update_every: int,
                      update_every_late: int) -> int | None:
    """The optimiser step of :class:`FlyingBirdHook`'s first topology update over ``total_steps`` steps (None: no
    update happens): ``update_every`` in the first half of the epochs, ``update_every_late`` after it, an update due
    on an epoch's last step moved to the next step, none after the last step."""
    pending = False  # the loop ends at the first update: at most about update_every + one epoch of steps
    for step in range(1, total_steps + 1):
        done = (step - 1) // max(steps_per_epoch, 1)  # epochs finished before this step
        every = update_every_late if done > epochs / 2 else update_every
        if not (step % every == 0 or pending):
            continue
        if steps_per_epoch > 1 and step % steps_per_epoch == 0:
            pending = step < total_steps
            continue
        return step
    return None


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    """Optimiser steps per epoch of :func:`fit` on ``n`` training points."""
    per = n // cfg.batch_size if n >= 2 * cfg.batch_size else math.ceil(n / cfg.batch_size)
    return min(per, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else per


def robust_overfitting(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Best validation robust accuracy over the epochs, the final one and their difference (robust overfitting)."""
    vr = [h["val_robust"] for h in history if "val_robust" in h]
    if not vr:
        return {"best_val_robust": None, "final_val_robust": None, "robust_overfit": None}
    return {"best_val_robust": max(vr), "final_val_robust": vr[-1], "robust_overfit": max(vr) - vr[-1]}


def _scope(method: PruningMethod, model: nn.Module, settings: MethodSettings) -> dict[str, nn.Module]:
    layers = prunable_layers(model, "unstructured")
    names = method.scope_layers(model, settings) or list(layers)
    return {n: layers[n] for n in names}


def _with_milestones(cfg: TrainConfig, milestones: Sequence[float]) -> TrainConfig:
    return cfg.model_copy(update={"milestones": tuple(milestones)}) if cfg.schedule == "step" else cfg


# ---------------------------------------------------------------------------------------------------------------
# settings and methods

_MAIN = "Chen2022 reference main_adv.py"
_CORE = "Chen2022 reference sparselearning/core.py"
_RB = "Chen2022 reference Robust-Bird/train_eb.py"


class _AdversarialSettings(MethodSettings):
    pgd_steps: int = setting(10, f"{_MAIN} L53 / {_RB} L43 (--train_step 10)", "PGD steps of adversarial training",
                             ge=1, le=1000)
    pgd_step_size: float = setting(0.25, f"{_MAIN} L52-54 (--train_gamma 2/255 at --train_eps 8/255)",
                                   "PGD step size as a fraction of eps", gt=0, le=2.5)
    from_scratch: bool = setting(True, f"{_MAIN} L111 / {_RB} L85-98 (a freshly built model is trained)",
                                 "re-initialise the weights first (false: start from the given model's weights)")


class FlyingBirdSettings(_AdversarialSettings):
    layer_density: Literal["erk", "igq"] = setting(
        "igq", f"{_MAIN} L64 (--sparse_init igq; not overridden by scripts/fb.sh, fbp.sh or the README); erk: {_CORE} "
               "L99-162 (fixed_ERK)", "per-layer densities of the random initial masks")
    death_rate: float = setting(0.5, f"{_MAIN} L69 (--death-rate 0.50)", "initial death rate d_0", gt=0, le=1)
    death_rate_final: float = setting(0.005, f"{_CORE} L16 (CosineDecay eta_min=0.005)",
                                      "death rate at the end of the cosine decay", ge=0, le=1)
    update_every: int = setting(900, f"{_MAIN} L73 (--update_frequency 900)",
                                "optimiser steps between topology updates (ΔT)", ge=1)
    update_every_late: int = setting(1200, f"{_MAIN} L85 (--second_frequency 1200 with --dynamic_fre, "
                                           "scripts/fb.sh; utils.py L284: after half the epochs)",
                                     "ΔT in the second half of the epochs", ge=1)
    converge_tol: float = setting(0.05, "robustprune convergence criterion",
                                  "the topology has settled when the last update replaced at most this fraction of "
                                  "the kept weights", gt=0, le=1)
    milestones: tuple[float, ...] = setting(
        (0.5, 0.75), f"{_MAIN} L45, L120 (MultiStepLR at epochs 100, 150 of 200, gamma 0.1)",
        "learning-rate drops (x0.1) as fractions of the epochs, for schedule=step")

    @field_validator("milestones")
    @classmethod
    def _milestones_in_range(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m <= 1 for m in v):  # the run's own check (_check_milestones), when the settings are read
            raise ValueError("milestones are fractions of training in (0, 1]")
        return v
    train: PhaseSettings = phase(f"{_MAIN} L43-48, L117-120 (SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, "
                                 "MultiStepLR; --epochs 200)", "sparse adversarial training", optimizer="sgd",
                                 lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step", batch_size=128)


class FlyingBirdPlusSettings(FlyingBirdSettings):
    epoch_range: int = setting(4, f"{_MAIN} L78 (--epoch_range 4)", "epoch pairs looked back by the FB+ rule",
                               ge=1)
    prune_ratio: float = setting(0.4, f"{_MAIN} L79 (--prune_ratio 0.4)",
                                 "extra removal, as a fraction of the death rate, when the gap grows", ge=0, le=1)
    growth_ratio: float = setting(0.05, f"{_MAIN} L80 (--growth_ratio 0.05)",
                                  "extra regrowth, as a fraction of the removed weights, when the val loss rises",
                                  ge=0, le=1)
    update_threshold: float = setting(0.5, f"{_MAIN} L81 (--update_threshold 0.5)",
                                      "fraction of rising epoch pairs that triggers the rule", ge=0, le=1)
    dst_start: float = setting(0.5, f"{_MAIN} L71 (--dynamic_epoch 100 of --epochs 200)",
                               "the rule applies from this fraction of the epochs on", ge=0, le=1)
    val_pgd_steps: int = setting(20, f"{_MAIN} L57 (--test_step 20: test_adv on the validation loader)",
                                 "PGD steps of the validation attack that measures the gap and the robust loss",
                                 ge=1, le=1000)
    val_pgd_step_size: float = setting(0.25, f"{_MAIN} L56-59 (--test_gamma 2/255 at --test_eps 8/255, random start)",
                                       "step of that attack as a fraction of eps", gt=0, le=2.5)


class RobustBirdSettings(_AdversarialSettings):
    hamming_tol: float = setting(0.08, "Chen2022 reference Robust-Bird/utils/early_bird.py L129",
                                 "largest normalised Hamming distance between the newest mask and each of the "
                                 "previous ones", gt=0, le=1)
    eb_window: int = setting(5, "Chen2022 reference Robust-Bird/utils/early_bird.py L13 (epoch_keep=5)",
                             "masks compared (the newest and eb_window - 1 before it)", ge=2, le=100)
    milestones: tuple[float, ...] = setting(
        (0.25, 0.75), f"{_RB} L37, L112, L195 (MultiStepLR at epochs 50, 150 of 200, gamma 0.1)",
        "learning-rate drops (x0.1) as fractions of each phase's epochs, for schedule=step")

    @field_validator("milestones")
    @classmethod
    def _milestones_in_range(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m <= 1 for m in v):  # the run's own check (_check_milestones), when the settings are read
            raise ValueError("milestones are fractions of training in (0, 1]")
        return v
    natural: PhaseSettings = phase(f"{_RB} L35-39, L108-112 (SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128); "
                                   "README --epochs1 200 is the budget, stopped at the early-bird epoch",
                                   "natural training until the magnitude mask settles", optimizer="sgd", lr=0.1,
                                   momentum=0.9, weight_decay=5e-4, schedule="step", batch_size=128, select="last")
    adversarial: PhaseSettings = phase(f"{_RB} L190-195 (optimiser reset: SGD lr 0.1, momentum 0.9, wd 5e-4); "
                                       "README --epochs2 200", "PGD adversarial training with the mask fixed",
                                       optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step",
                                       batch_size=128)


def _check_milestones(ms: Sequence[float]) -> None:
    if any(not 0 < m <= 1 for m in ms):
        raise ConfigError(f"milestones are fractions of training in (0, 1], got {list(ms)}")


class FlyingBirdMethod(PruningMethod):
    paper = PAPERS["Chen2022"]
    group = "unstructured"
    rate_kind = "set"
    needs_eps = True

    def __init__(self, plus: bool) -> None:
        self.plus = plus
        self.name = "flyingbird-plus" if plus else "flyingbird"
        self.Settings = FlyingBirdPlusSettings if plus else FlyingBirdSettings
        self.description = ("Flying Bird+: sparse adversarial training, magnitude death / random growth, extra pruning "
                            "when the robust gap grows (rate = starting density)" if plus else
                            "Flying Bird: sparse adversarial training from scratch, IGQ (or ERK) random masks, "
                            "magnitude death / random growth every dT steps")

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: FlyingBirdSettings) -> PruneResult:
        assert rate is not None
        eps = task.need_eps(self.name)
        _check_milestones(settings.milestones)
        cfg = _with_milestones(settings.train.train_config(task), settings.milestones)
        device = task.train.x.device
        model.to(device)
        mods = _scope(self, model, settings)
        t0 = time.perf_counter()
        if settings.from_scratch:
            reinitialise(model, task.seed)
        shapes = {n: tuple(m.weight.shape) for n, m in mods.items()}
        total = sum(math.prod(s) for s in shapes.values())
        target = num_keep(total, 1.0 / rate)
        counts = layer_counts(shapes, target, settings.layer_density)
        gen = make_generator(task.seed + 2022, "cpu")
        masks = random_masks(shapes, counts, gen, device)
        plus = None
        if self.plus:
            s: FlyingBirdPlusSettings = settings  # type: ignore[assignment]
            val = task.val if task.val is not None and len(task.val) > 0 and cfg.val_size > 0 else None
            evaluate = None
            if val is not None:
                def evaluate(m: nn.Module) -> tuple[float, float]:
                    return robust_loss_accuracy(m, val, n=cfg.val_size, eps=eps, steps=s.val_pgd_steps,
                                                alpha=s.val_pgd_step_size * eps, seed=cfg.seed)
            plus = PlusRule(epoch_range=s.epoch_range, prune_ratio=s.prune_ratio, growth_ratio=s.growth_ratio,
                            threshold=s.update_threshold, start_epoch=s.dst_start * cfg.epochs, evaluate=evaluate)
        total_steps = steps_per_epoch(len(task.train), cfg) * cfg.epochs
        hook = FlyingBirdHook(mods, masks, total_steps=total_steps, epochs=cfg.epochs, death_rate=settings.death_rate,
                              death_rate_final=settings.death_rate_final, update_every=settings.update_every,
                              update_every_late=settings.update_every_late, generator=gen, plus=plus,
                              steps_per_epoch=steps_per_epoch(len(task.train), cfg))
        objective = PGDAT(eps=eps, alpha=settings.pgd_step_size * eps, steps=settings.pgd_steps)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        res: TrainResult | None = None
        try:
            if cfg.epochs > 0:
                res = fit(model, objective, task.train, task.val, cfg, hooks=[hook], val_eps=eps,
                          augment=task.augment, desc=self.name)
        finally:
            hook.close()
        selected = res.best_epoch if res is not None else 0
        final = hook.masks_of_epoch(selected)
        final.to(device)
        final.apply(model)
        times = {"setup": setup, "train": time.perf_counter() - t0}
        kept = final.kept()
        nonzero = sum(int(torch.count_nonzero(m.weight)) for m in mods.values())
        last = hook.updates[-1] if hook.updates else None
        churn = last["killed"] / max(last["kept_before"], 1) if last else None
        history = history_of(res)
        conv: dict[str, Any] = {
            "updates": hook.updates, "n_updates": len(hook.updates),
            "killed_total": sum(u["killed"] for u in hook.updates),
            "grown_total": sum(u["grown"] for u in hook.updates),
            "target_kept": target, "start_kept": hook.start_kept, "kept": kept, "nonzero_kept": nonzero,
            "start_density": hook.start_kept / total, "final_density": kept / total,
            "layer_counts_initial": counts, "layer_density_final": final.layer_keep_fractions(),
            "selected_epoch": selected, "last_churn": churn, "tolerance": settings.converge_tol,
            **robust_overfitting(history),
        }
        if self.plus:
            conv.update({"val_attack": {"steps": s.val_pgd_steps, "step_size": s.val_pgd_step_size * eps,
                                        "random_start": True, "points": cfg.val_size},
                         "gap_history": hook.gaps, "val_robust_loss_history": hook.losses,
                         "val_robust_history": hook.val_robust,
                         "dynamic_density": "on" if plus is not None and plus.evaluate is not None
                         else "off: no validation split",
                         "dst_prune_updates": [u["step"] for u in hook.updates if u.get("dst_prune")],
                         "dst_grow_updates": [u["step"] for u in hook.updates if u.get("dst_grow")],
                         "start_compression": total / hook.start_kept, "final_compression": total / max(kept, 1)})
        mech = mechanism(f"{'Flying Bird+' if self.plus else 'Flying Bird'}: at least one topology update (magnitude "
                         "death and random regrowth) during training (else the result is a fixed random mask)",
                         len(hook.updates) > 0, topology_updates=len(hook.updates), steps=steps_of(res),
                         first_update_step=hook.updates[0]["step"] if hook.updates else None,
                         update_every=settings.update_every, update_every_late=settings.update_every_late)
        return self.result(model, final, rate, settings, history={"train": history}, times=times, convergence=conv,
                           converged=None if churn is None else bool(churn <= settings.converge_tol),
                           steps=steps_of(res), epochs=float(len(history)), mechanism=mech,
                           extras={"start_density": hook.start_kept / total, "final_density": kept / total})

    def check_budget(self, settings: FlyingBirdSettings, *, epochs: float, n_train: int) -> None:
        """Besides the phase's budget: refuse, before any work, a budget whose optimiser steps cannot reach one
        topology update (the mechanism would not act: a fixed random mask); the error names ``update_every``."""
        super().check_budget(settings, epochs=epochs, n_train=n_train)
        ph = settings.train
        e = float(epochs if ph.epochs is None else ph.epochs)
        whole, per = _epochs_and_steps(e, n_train, ph.batch_size)
        full = n_train // ph.batch_size if n_train >= 2 * ph.batch_size else math.ceil(n_train / ph.batch_size)
        spe = min(full, per) if per else full
        total = spe * whole
        if first_update_step(total, spe, whole, settings.update_every, settings.update_every_late) is None:
            raise ConfigError(
                f"{self.name}: {total} optimiser step(s) ({whole} epoch(s) of {spe}) reach no topology update "
                f"(update_every={settings.update_every}, update_every_late={settings.update_every_late}), so "
                f"{self.name}'s mechanism would not act: set update_every below {max(total, 2)} (--set "
                "update_every=N) or give more epochs (train.epochs / --epochs)")


class RobustBirdMethod(PruningMethod):
    name = "robustbird"
    paper = PAPERS["Chen2022"]
    Settings = RobustBirdSettings
    group = "unstructured"
    rate_kind = "set"
    needs_eps = True
    description = ("Robust Bird: natural training until the global magnitude mask settles (early bird), one global "
                   "magnitude prune, then adversarial training with the mask fixed")

    def passes_per_image(self, settings: RobustBirdSettings, phase: str, *, objective_passes: float | None,
                         dataset: str | None) -> float:
        return 1.0 if phase == "natural" else 1.0 + settings.pgd_steps

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: RobustBirdSettings) -> PruneResult:
        assert rate is not None
        eps = task.need_eps(self.name)
        _check_milestones(settings.milestones)
        nat_cfg = _with_milestones(settings.natural.train_config(task), settings.milestones)
        adv_cfg = _with_milestones(settings.adversarial.train_config(task, seed_offset=1), settings.milestones)
        device = task.train.x.device
        model.to(device)
        mods = _scope(self, model, settings)
        if settings.from_scratch:
            reinitialise(model, task.seed)
        total = sum(m.weight.numel() for m in mods.values())
        target = num_keep(total, 1.0 / rate)
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        eb = EarlyBirdHook(mods, target, window=settings.eb_window, tol=settings.hamming_tol)
        nat = None
        if nat_cfg.epochs > 0:
            nat = fit(model, Natural(), task.train, task.val, nat_cfg, hooks=[eb], augment=task.augment,
                      desc="robustbird-natural")
        times["natural"] = time.perf_counter() - t0
        masks = split_flat_mask(mods, global_magnitude_mask(mods, target))
        masks.apply(model)
        t0 = time.perf_counter()
        adv = None
        if adv_cfg.epochs > 0:
            objective = PGDAT(eps=eps, alpha=settings.pgd_step_size * eps, steps=settings.pgd_steps)
            adv = fit(model, objective, task.train, task.val, adv_cfg, masks=masks, val_eps=eps,
                      augment=task.augment, desc="robustbird-adversarial")
        times["adversarial"] = time.perf_counter() - t0
        adv_history = history_of(adv)
        dists = eb.distances
        conv = {"hamming": dists, "hamming_max": [None if d is None else max(d) for d in dists],
                "tolerance": settings.hamming_tol, "window": settings.eb_window, "emerged_epoch": eb.emerged_epoch,
                "natural_epochs": len(history_of(nat)), "natural_budget": nat_cfg.epochs, "target_kept": target,
                "kept": masks.kept(), "nonzero_kept": sum(int(torch.count_nonzero(m.weight)) for m in mods.values()),
                **robust_overfitting(adv_history)}
        nat_steps = steps_of(nat)
        mech = mechanism("Robust Bird: natural-training steps before the cut, so that the early-bird criterion was "
                         "checked: met (the mask settled) or the documented fallback (pruned at the end of the "
                         "natural budget); else the cut ranks the initial weights", nat_steps > 0,
                         natural_steps=nat_steps, emerged_epoch=eb.emerged_epoch,
                         how=("early bird" if eb.emerged_epoch is not None else
                              "fallback: pruned at the end of the natural budget" if nat_steps > 0 else "no training"))
        return self.result(model, masks, rate, settings, mechanism=mech,
                           history={"natural": history_of(nat), "adversarial": adv_history}, times=times,
                           convergence=conv, converged=eb.emerged_epoch is not None,
                           steps=steps_of(nat) + steps_of(adv), epochs=float(len(history_of(nat)) + len(adv_history)))


register_method(FlyingBirdMethod(plus=False))
register_method(FlyingBirdMethod(plus=True))
register_method(RobustBirdMethod())
