"""How long the rest of a study will take, on this machine, said before the work and after every model.

Every phase of the study (training a base model, each method's training towards each rate, evaluating each model)
is counted before it runs in **passes**: one forward and one backward pass over one image (a training step on a
batch of B images under PGD-k costs B x (k + 1) passes; an attack step on P points costs P passes). Two rates turn
passes into seconds, one for training and one for attacks, first measured by short probes on this machine's
model and data (a few training steps of the base objective, a few PGD steps on an evaluation batch), then
replaced by what the finished phases of the same kind actually took (seconds / passes over all of them), so the
estimate corrects itself as the study goes.

What a phase costs is counted by its owner: the base model by its training config, each method by
:meth:`robustprune.methods.PruningMethod.work`, each evaluation by the attacks' steps, restarts and runs
(:func:`robustprune.evaluation.attack_info.attack_runs`). Two things are not known before a model is evaluated:
the fraction of points an attack runs on (the clean-correct ones) and the fraction left standing after APGD-CE
(APGD-T and early exits run on fewer); they start at the priors below and are replaced by the measured ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustprune.precision import in_layout

ATTACKED_PRIOR = 0.8
"""Fraction of the points a white-box attack runs on (the clean-correct ones) before any model is evaluated."""
STANDING_PRIOR = 0.65
"""Fraction of the points still standing after APGD-CE (what APGD-T attacks) before any model is evaluated."""
GROUPS = ("base training", "pruning", "evaluation")


@dataclass
class Phase:
    key: str
    group: str
    kind: str  # "train" or "eval": which rate converts its passes to seconds
    passes: float
    seconds: float | None = None  # what it took, once finished


@dataclass
class StudyClock:
    """The study's phases, their predicted passes and finished seconds; see the module docstring."""

    log: Callable[[str], None] = print
    clock: Callable[[], float] = time.perf_counter
    phases: dict[str, Phase] = field(default_factory=dict)
    probe_rate: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    first_total: float | None = None
    current: tuple[str, float] | None = None  # (phase key, start time) of the phase running now

    def __post_init__(self) -> None:
        self.started = self.clock()

    # ---- what there is to do ---------------------------------------------------------------------------------
    def add(self, key: str, group: str, kind: str, passes: float) -> None:
        if group not in GROUPS:
            raise ValueError(f"group {group!r} is not one of {GROUPS}")
        self.phases[key] = Phase(key, group, kind, max(0.0, float(passes)))

    def start(self, key: str) -> None:
        self.current = (key, self.clock()) if key in self.phases else None

    def done(self, key: str, seconds: float | None = None) -> bool:
        """Phase ``key`` finished after ``seconds`` (default: since :meth:`start`); False when it was not planned
        (reused work)."""
        ph = self.phases.get(key)
        if ph is None:
            return False
        if seconds is None:
            seconds = self.clock() - self.current[1] if self.current and self.current[0] == key else 0.0
        ph.seconds = max(0.0, float(seconds))
        if self.current and self.current[0] == key:
            self.current = None
        return True

    def drop(self, key: str) -> None:
        """Phase ``key`` will not run (reused from an earlier run, or not run because what it needs failed)."""
        self.phases.pop(key, None)

    # ---- rates ---------------------------------------------------------------------------------------------
    def probe(self, kind: str, seconds: float, passes: float) -> None:
        if passes > 0 and seconds > 0:
            self.probe_rate[kind] = seconds / passes

    def rate(self, kind: str) -> float | None:
        """Seconds per pass of ``kind``: over the finished phases of that kind when there are some, else the probe."""
        done = [p for p in self.phases.values() if p.kind == kind and p.seconds is not None and p.passes > 0]
        if done and sum(p.passes for p in done) > 0:
            return sum(p.seconds for p in done) / sum(p.passes for p in done)  # type: ignore[misc]
        return self.probe_rate.get(kind) or next(iter(self.probe_rate.values()), None)

    # ---- the estimate --------------------------------------------------------------------------------------
    def remaining(self) -> dict[str, float] | None:
        """Seconds left per group (None before any rate is known)."""
        out = {g: 0.0 for g in GROUPS}
        rates = {k: self.rate(k) for k in {p.kind for p in self.phases.values()}}
        if any(r is None for r in rates.values()):
            return None
        now = self.clock()
        for p in self.phases.values():
            if p.seconds is not None:
                continue
            left = p.passes * rates[p.kind]  # type: ignore[operator]
            if self.current and self.current[0] == p.key:
                left = max(0.0, left - (now - self.current[1]))
            out[p.group] += left
        return out

    def line(self, *, first: bool = False) -> str | None:
        """``time: 3.1 min elapsed, about 12 min left on this machine (base training 2.0, pruning 4.1, evaluation
        6.0 min)``; None before any rate is known."""
        left = self.remaining()
        if left is None:
            return None
        total = sum(left.values())
        elapsed = self.clock() - self.started
        if first:
            self.first_total = elapsed + total
        parts = ", ".join(f"{g} {_minutes(s)}" for g, s in left.items() if s >= 3.0)
        head = "time estimate" if first else "time"
        return (f"{head}: {_minutes(elapsed)} min elapsed, about {_minutes(total)} min left on this machine"
                + (f" ({parts} min)" if parts else ""))

    def say(self, *, first: bool = False) -> None:
        text = self.line(first=first)
        if text is not None:
            self.log(text)


def _minutes(seconds: float) -> str:
    m = seconds / 60.0
    return f"{m:.1f}" if m < 10 else f"{m:.0f}"


# ---- what phases cost, in passes ------------------------------------------------------------------------------
def objective_passes(objective: Any) -> float:
    """Passes per training image and step of an objective (``passes`` of the objective; 1 when it says none)."""
    return float(getattr(objective, "passes", 1.0) or 1.0)


def evaluation_passes(attacks: list[Any], transferred: list[Any], *, n: int, eps: float, transfer: bool,
                      vulnerability: bool, craft_transfer: bool, attacked: float = ATTACKED_PRIOR,
                      standing: float = STANDING_PRIOR) -> float:
    """One study model's evaluation: the clean pass; every attack at every budget on the ``attacked`` fraction
    of the ``n`` points (APGD-T runs only on the ``standing`` fraction; APGD-CE's early exit halves the
    difference); with ``vulnerability`` the extra attack on the clean errors; with ``transfer`` the transferred
    examples' forward passes, and with ``craft_transfer`` (the first pruned model of a base) their crafting."""
    from robustprune.evaluation.attack_info import attack_runs, info_for_spec, spec_settings

    def attack_cost(a: Any, frac: float) -> float:
        info = info_for_spec(a)
        budgets = _budgets(a, eps)
        steps, restarts, runs, _ = attack_runs(info, spec_settings(a))
        if info.accepts("n_target_classes") and info.name not in ("apgd-t",):
            ce = steps * restarts * n * (frac + standing) / 2
            targets = steps * restarts * (runs - 1) * n * standing
            return budgets * (ce + targets)
        return budgets * steps * restarts * runs * n * frac

    total = n / 3  # the clean forward pass
    total += sum(attack_cost(a, attacked) for a in attacks)
    if vulnerability and attacks:
        first = attacks[0]
        total += attack_cost(first, 1.0 - attacked) / max(1, _budgets(first, eps)) + n
    if transfer and transferred:
        total += sum(n / 3 * _budgets(a, eps) for a in transferred)
        if craft_transfer:
            total += sum(attack_cost(a, 1.0) for a in transferred)
    return total


def _budgets(a: Any, eps: float) -> int:
    from robustprune.evaluation.attack_info import info_for_spec
    from robustprune.evaluation.run import budgets_for

    info = info_for_spec(a)
    return 1 if info.min_norm else len(budgets_for(a, info, eps, None))


# ---- probes --------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _layout(model: nn.Module, x: torch.Tensor, channels_last: bool) -> tuple[nn.Module, torch.Tensor]:
    if channels_last and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
    return model, in_layout(x, channels_last)


def probe_training(model: nn.Module, objective: Any, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                   max_seconds: float = 2.0, max_steps: int = 8, channels_last: bool = False) -> tuple[float, float]:
    """(seconds, passes) of a few training steps of ``objective`` on a throwaway copy of ``model`` (one warm-up
    step first), stopping after ``max_steps`` or ``max_seconds``."""
    import copy

    m, x = _layout(copy.deepcopy(model).train(), x, channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: the copy's weights do not move
    per = objective_passes(objective)
    b = min(batch_size, len(x))
    g = torch.Generator(device=x.device).manual_seed(0)
    seconds = passes = 0.0
    for step in range(max_steps + 1):
        i = (step * b) % max(1, len(x) - b + 1)
        xb, yb = x[i:i + b], y[i:i + b]
        _sync(x.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        objective(m, xb, yb, generator=g).loss.backward()
        opt.step()
        _sync(x.device)
        if step > 0:
            seconds += time.perf_counter() - t0
            passes += b * per
            if seconds >= max_seconds:
                break
    return seconds, passes


def probe_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, batch_size: int,
                 max_seconds: float = 2.0, steps: int = 5, channels_last: bool = False) -> tuple[float, float]:
    """(seconds, passes) of PGD steps on one evaluation batch (after a warm-up step), up to ``max_seconds``."""
    import copy

    from robustprune.attacks.pgd import pgd_linf_last

    m, xb = _layout(copy.deepcopy(model).eval(), x[:batch_size], channels_last)
    yb = y[:batch_size]
    pgd_linf_last(m, xb, yb, eps=eps, alpha=eps / 4, steps=1, random_start=False)
    seconds = passes = 0.0
    while seconds < max_seconds and passes < steps * len(xb) * 4:
        _sync(x.device)
        t0 = time.perf_counter()
        pgd_linf_last(m, xb, yb, eps=eps, alpha=eps / 4, steps=steps, random_start=False)
        _sync(x.device)
        seconds += time.perf_counter() - t0
        passes += steps * len(xb)
    return seconds, passes


# ---- the study's work, unit by unit (shared by the running estimate and `--plan`) -------------------------------
@dataclass
class UnitWork:
    """One work unit (a base model, or one method chain on it) and its phases, in passes."""

    unit: Any
    phases: list[Phase] = field(default_factory=list)

    def seconds(self, rates: dict[str, float]) -> float:
        return sum(p.passes * rates.get(p.kind, 0.0) for p in self.phases)


def study_work(runner: Any, sizes: dict[str, tuple[int, int, int]], store: Any = None) -> list[UnitWork]:
    """Every unit of ``runner``'s study with the passes of each phase: the base model's training and evaluation,
    each method's training towards each rate (:meth:`robustprune.methods.PruningMethod.work`) and each pruned
    model's evaluation. ``sizes``: per dataset (training, validation, test) images. With ``store``, phases the
    database holds as done are left out (what is left to run)."""
    from robustprune.data import get_spec
    from robustprune.study.runner import _DatasetOnly
    from robustprune.study.store import STATUS_DONE
    from robustprune.study.unit import Unit
    from robustprune.train.cost import training_passes
    from robustprune.utils import config_hash

    spec = runner.spec

    def get(model_id: str) -> dict[str, Any] | None:
        return store.get_model(model_id) if store is not None else None

    out: list[UnitWork] = []
    for d in spec.datasets:
        ds = get_spec(d)
        n_train, _n_val, n_test = sizes.get(ds.name, (0, 0, 0))
        n_eval = min(spec.eval_n, n_test) if spec.eval_n else n_test
        eps = ds.eps_linf
        only = _DatasetOnly(ds)
        base_obj = runner._objective(spec.base_objective, only)
        ft = runner._objective(spec.finetune_objective, only)
        cfg = runner._base_train()
        base_train = training_passes(epochs=cfg.epochs, n_train=n_train, batch_size=cfg.batch_size,
                                     per_image=objective_passes(base_obj), val_size=cfg.val_size,
                                     val_steps=cfg.val_attack_steps, val_robust=spec.base_objective.name != "natural")
        base_eval = evaluation_passes(spec.attacks, [], n=n_eval, eps=eps, transfer=False,
                                      vulnerability=spec.vulnerability, craft_transfer=False)
        ft_n = n_train if spec.finetune_limit is None else min(spec.finetune_limit, n_train)
        for seed in spec.seeds:
            for arch in spec.architectures:
                base_id = config_hash(runner._base_cfg(ds.name, arch, seed))
                bw = UnitWork(Unit(d, arch, seed))
                rec = get(base_id)
                if rec is None and runner.given_base(ds.name, arch, seed) is None:  # a given base is not trained
                    bw.phases.append(Phase(f"train|{base_id}", "base training", "train", base_train))
                if rec is None or rec.get("status") != STATUS_DONE:
                    bw.phases.append(Phase(f"eval|{base_id}", "evaluation", "eval", base_eval))
                out.append(bw)
                first = True  # the first pruned model evaluated on a base crafts the transfer examples
                for name in spec.methods:
                    cells = runner._method_cells(ds, arch, seed, name, base_id)
                    cw = UnitWork(Unit(d, arch, seed, name))
                    out.append(cw)
                    if not cells.rates:
                        continue
                    work = sum(w.passes for w in cells.method.work(
                        cells.settings, cells.rates, epochs=spec.prune_epochs, n_train=ft_n,
                        objective_passes=objective_passes(ft) if cells.method.uses_objective else None,
                        dataset=ds.name))
                    for rate in cells.rates:
                        cid = cells.keys(rate)[0]
                        crec = get(cid)
                        if crec is None:
                            cw.phases.append(Phase(f"train|{cid}", "pruning", "train", work / len(cells.rates)))
                        if crec is None or crec.get("status") != STATUS_DONE:
                            cw.phases.append(Phase(f"eval|{cid}", "evaluation", "eval", evaluation_passes(
                                spec.attacks, list(spec.transferred_attacks()), n=n_eval, eps=eps,
                                transfer=spec.transfer, vulnerability=spec.vulnerability,
                                craft_transfer=first and spec.transfer)))
                            first = False
    return out


def rates_from_cost(runner: Any, sizes: dict[str, tuple[int, int, int]]) -> dict[str, float] | None:
    """Seconds per pass from the study's ``cost`` key (measured elsewhere, e.g. on an H200), for ``--plan``:
    ``train_epoch_s`` is one epoch of ``epoch_images`` images of the base objective, ``eval_model_s`` one base
    model's evaluation; None without the key. The running study measures the same two rates on its own machine
    instead (:func:`probe_training`, :func:`probe_attack`)."""
    from robustprune.data import get_spec
    from robustprune.study.runner import _DatasetOnly

    cost = runner.spec.cost
    if cost is None or not runner.spec.datasets:
        return None
    spec = runner.spec
    ds = get_spec(spec.datasets[0])
    only = _DatasetOnly(ds)
    per_image = objective_passes(runner._objective(spec.base_objective, only))
    n_test = sizes.get(ds.name, (0, 0, 0))[2]
    n_eval = min(spec.eval_n, n_test) if spec.eval_n else n_test
    base_eval = evaluation_passes(spec.attacks, [], n=n_eval, eps=ds.eps_linf, transfer=False,
                                  vulnerability=spec.vulnerability, craft_transfer=False)
    return {"train": cost.train_epoch_s / (cost.epoch_images * per_image),
            "eval": cost.eval_model_s / base_eval if base_eval > 0 else 0.0}


@dataclass
class Schedule:
    """What a study's units take on ``workers`` workers (one task each), dependencies respected."""

    workers: int
    wall: float
    """Seconds until the last unit ends (list scheduling, longest ready unit first)."""
    serial: float
    """Seconds of all the units one after the other."""
    critical: float
    """Seconds of the longest dependency chain (a base model, then its longest method chain): no number of
    workers finishes sooner."""
    critical_units: list[Any] = field(default_factory=list)


def schedule(works: list[UnitWork], rates: dict[str, float], workers: int) -> Schedule:
    """Simulate the units on ``workers`` workers as the Ray runner runs them: a method chain becomes ready when its
    own base has finished; a free worker takes the longest ready unit."""
    import heapq

    secs = {id(w): w.seconds(rates) for w in works}
    bases = {(w.unit.dataset, w.unit.arch, w.unit.seed): w for w in works if w.unit.method is None}
    chains: dict[tuple, list[UnitWork]] = {}
    for w in works:
        if w.unit.method is not None:
            chains.setdefault((w.unit.dataset, w.unit.arch, w.unit.seed), []).append(w)
    critical, crit_units = 0.0, []
    for key, b in bases.items():
        longest = max(chains.get(key, []), key=lambda c: secs[id(c)], default=None)
        total = secs[id(b)] + (secs[id(longest)] if longest is not None else 0.0)
        if total > critical:
            critical, crit_units = total, [b.unit] + ([longest.unit] if longest is not None else [])
    ready = [(-secs[id(b)], i, b) for i, b in enumerate(bases.values())]
    heapq.heapify(ready)
    running: list[tuple[float, int, UnitWork]] = []
    now, counter = 0.0, len(ready)
    free = max(1, int(workers))
    while ready or running:
        while ready and free > 0:
            _, _, w = heapq.heappop(ready)
            heapq.heappush(running, (now + secs[id(w)], counter, w))
            counter += 1
            free -= 1
        now, _, done = heapq.heappop(running)
        free += 1
        if done.unit.method is None:
            for c in chains.get((done.unit.dataset, done.unit.arch, done.unit.seed), []):
                heapq.heappush(ready, (-secs[id(c)], counter, c))
                counter += 1
    return Schedule(workers=max(1, int(workers)), wall=now, serial=sum(secs.values()), critical=critical,
                    critical_units=crit_units)
