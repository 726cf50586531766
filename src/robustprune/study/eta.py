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

import math
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
