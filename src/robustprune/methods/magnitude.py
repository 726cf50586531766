"""Magnitude and random pruning (Merkle2022): one-shot, or iterative (halve what remains, fine-tune, repeat).

The nine methods of Merkle2022 are {magnitude-local, magnitude-global, random-local} x {unstructured, kernel,
filter}; they are registered as ``<score>-<group>-<scope>``, e.g. ``magnitude-unstructured-global``.
For the structured ones the rate counts groups: ``--sparsity 0.5`` with ``magnitude-filter-global`` removes half of
the filters of the scope (``budget: weights`` for half of the conv weights in whole filters instead).
Fine-tuning between steps uses any objective (natural or adversarial) through the one training loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods.interface import PAPERS, MethodSettings, PhaseSettings, PruneResult, PruneTask
from robustprune.methods.interface import PruningMethod, get_method, phase, register_method, setting
from robustprune.objectives import Objective
from robustprune.sparsity import MaskSet, compute_masks
from robustprune.train import TrainConfig, TrainResult, fit


class MagnitudeSettings(MethodSettings):
    """Magnitude / random pruning (Merkle2022 §3.3): the schedule and the fine-tuning phase after every step."""

    schedule: Literal["iterative", "one-shot"] = setting(
        "iterative", "Merkle2022 §3.3 (each step removes half of the remaining weights, then fine-tunes)",
        "iterative: halve the remaining weights per step up to the target; one-shot: jump to the target")
    budget: Literal["groups", "weights"] = setting(
        "groups", "APB (pralab/AdversarialPruningBenchmark) structured cells and Li2023 reference train.py "
        "structured_pruning: round(ratio * n_filters) filters removed",
        "what a structured rate counts under global scope: groups (1/c of the filters / kernels remain, the field's "
        "rule) or weights (1/c of the conv weights remain, in whole groups); the same for unstructured and local scope")
    finetune: PhaseSettings = phase(
        "robustprune default (Merkle2022 gives no fine-tuning optimiser): Adam lr 5e-4, cosine, batch 128",
        "fine-tuning after every pruning step, with the task's objective", optimizer="adam", lr=5e-4,
        weight_decay=0.0, schedule="cosine")


class MagnitudeMethod(PruningMethod):
    """``<score>-<group>-<scope>``: rank groups by weight magnitude (or at random), cut the lowest within each layer
    (local) or across all layers (global), fine-tune with the task's objective; one-shot or iterative."""

    paper = PAPERS["Merkle2022"]
    Settings = MagnitudeSettings
    uses_objective = True

    def __init__(self, score: str, group: str, scope: str) -> None:
        self.score, self.group, self.scope = score, group, scope
        self.name = f"{score}-{group}-{scope}"
        self.description = f"{score} {group} pruning, " + ("layer-local" if scope == "local" else "global") + " scope"

    def incremental(self, settings: MagnitudeSettings) -> bool:
        return settings.schedule == "iterative"

    def rate_path(self, rates: Sequence[float], settings: MagnitudeSettings) -> list[float]:
        return halving_schedule(rates) if settings.schedule == "iterative" else [rates[-1]]

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: MagnitudeSettings) -> PruneResult:
        assert rate is not None
        return next(iter(self._chain(model, task, [rate], settings)))

    def prune_many(self, model: nn.Module, task: PruneTask, rates: Sequence[float | None],
                   settings: Any = None) -> Iterator[PruneResult]:
        s = self.settings(settings)
        if not self.incremental(s):
            yield from super().prune_many(model, task, rates, s)
            return
        self.check_budget(s, epochs=task.epochs, n_train=len(task.train))
        targets = [self.check_rate(r, task.start_rate) for r in rates]
        for t in targets:
            self.check_max_rate(model, t)
        yield from self._chain(model, task, [t for t in targets if t is not None], s)

    def _chain(self, model: nn.Module, task: PruneTask, targets: list[float],
               settings: MagnitudeSettings) -> Iterator[PruneResult]:
        cfg = settings.finetune.train_config(task)
        history: list[dict[str, Any]] = []
        t_run = time.perf_counter()
        steps = 0
        for step in iterative_prune(model, self, targets, objective=task.fine_tune_objective(), train=task.train,
                                    val=task.val, cfg=cfg, val_eps=task.eps, augment=task.augment,
                                    masks=task.masks, start_rate=task.start_rate, schedule=settings.schedule,
                                    seed=task.seed, layers=self.scope_layers(model, settings),
                                    count=settings.budget):
            history += [{**row, "rate": step.rate} for row in step.history]
            steps += step.finetune.steps if step.finetune is not None else 0
            if not step.is_target:
                continue
            wall = time.perf_counter() - t_run
            res = self.result(model, step.masks, step.rate, settings, history={"finetune": list(history)},
                              times={"finetune": wall, "total": wall}, wall_time=wall, steps=steps,
                              epochs=cfg.epochs * len(self.rate_path([step.rate], settings)))
            res.extras["path"] = self.rate_path(targets[: targets.index(step.rate) + 1], settings)
            yield res
            history, t_run = [], time.perf_counter()  # steps stay cumulative, like the chain's epochs


for _score, _scopes in (("magnitude", ("local", "global")), ("random", ("local",))):
    for _group in ("unstructured", "kernel", "filter"):
        for _scope in _scopes:
            register_method(MagnitudeMethod(_score, _group, _scope))


def check_rates(rates: Sequence[float]) -> list[float]:
    """Compression rates c >= 1 (1/c of prunable weights remain), sorted, unique."""
    out = sorted({float(r) for r in rates})
    bad = [r for r in out if not (r >= 1 and math.isfinite(r))]
    if bad:
        raise ConfigError(f"compression rates must be >= 1 (1/c of the prunable weights remain); got {bad}")
    return out


def halving_schedule(targets: Sequence[float], start: float = 1.0) -> list[float]:
    """Compression rates visited by the iterative schedule of Merkle2022: each step removes half of the remaining
    weights (c doubles), never overshooting a target. ``[2, 4, 8]`` -> ``[2, 4, 8]``; ``[8]`` -> ``[2, 4, 8]``;
    ``[3]`` -> ``[2, 3]``."""
    steps: list[float] = []
    c = start
    for t in check_rates(targets):
        if t <= c:
            continue
        while c * 2 < t - 1e-9:
            c *= 2
            steps.append(c)
        c = t
        steps.append(c)
    return steps


def _step_seed(seed: int, rate: float) -> int:
    return (int(seed) * 1_000_003 + int(round(rate * 64))) % (2**31 - 1)


@dataclass
class PruneStep:
    """The state after pruning to ``rate`` and fine-tuning."""

    rate: float
    masks: MaskSet
    is_target: bool
    finetune: TrainResult | None
    wall_time: float
    history: list[dict] = field(default_factory=list)


def prune_once(model: nn.Module, spec: "MagnitudeMethod | str", rate: float, *, previous: MaskSet | None = None,
               generator: torch.Generator | None = None, layers: Sequence[str] | None = None,
               count: str = "groups") -> MaskSet:
    """Prune ``model`` in place to compression ``rate``: 1/rate of its prunable groups remain (``count="groups"``:
    filters for a filter method), or of the weights in them (``count="weights"``); see
    :mod:`robustprune.sparsity.prune`."""
    if isinstance(spec, str):
        spec = get_method(spec)
    masks = compute_masks(model, group=spec.group, score=spec.score, scope=spec.scope, keep=1.0 / rate,
                          previous=previous, generator=generator, layers=layers, count=count)
    masks.apply(model)
    return masks


def iterative_prune(
    model: nn.Module,
    spec: "MagnitudeMethod | str",
    rates: Sequence[float],
    *,
    objective: Objective,
    train: Split,
    val: Split | None,
    cfg: TrainConfig,
    val_eps: float | None = None,
    augment: str | None = None,
    masks: MaskSet | None = None,
    start_rate: float = 1.0,
    schedule: str = "iterative",
    seed: int = 0,
    layers: Sequence[str] | None = None,
    count: str = "groups",
) -> Iterator[PruneStep]:
    """Prune ``model`` in place towards each rate in ``rates``, fine-tuning with ``objective`` after each step.

    ``schedule="iterative"`` halves the remaining weights per step (Merkle2022); ``"one-shot"`` jumps straight to each
    target. Yields a :class:`PruneStep` after every step (``is_target`` marks the requested rates), so callers can
    checkpoint each target and resume a chain from ``masks`` / ``start_rate``.
    """
    if isinstance(spec, str):
        spec = get_method(spec)
    targets = [r for r in check_rates(rates) if r > start_rate]
    if schedule == "iterative":
        steps = halving_schedule(targets, start=start_rate)
    elif schedule == "one-shot":
        steps = targets
    else:
        raise ConfigError(f"unknown pruning schedule {schedule!r}; use 'iterative' or 'one-shot'")
    for c in steps:
        t0 = time.perf_counter()
        # Seeds depend on the step's rate, not its position, so a chain resumed mid-way repeats a straight run.
        step_seed = _step_seed(seed, c)
        gen = torch.Generator().manual_seed(step_seed)
        masks = prune_once(model, spec, c, previous=masks, generator=gen, layers=layers, count=count)
        step_cfg = cfg.model_copy(update={"seed": _step_seed(cfg.seed, c)})
        result = fit(model, objective, train, val, step_cfg, masks=masks, val_eps=val_eps, augment=augment,
                     desc=f"{spec.name} c={c:g}") if cfg.epochs > 0 else None
        yield PruneStep(rate=c, masks=masks, is_target=c in targets, finetune=result,
                        wall_time=time.perf_counter() - t0, history=result.history if result else [])
