"""Magnitude and random pruning (seed 003): one-shot, or iterative (halve what remains, fine-tune, repeat).

The nine methods of seed 003 are {magnitude-local, magnitude-global, random-local} x {unstructured, kernel,
filter}; they are registered as ``<score>-<group>-<scope>``, e.g. ``magnitude-unstructured-global``.
Fine-tuning between steps uses any objective (natural or adversarial) through the one training loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.objectives import Objective
from robustprune.registry import Registry
from robustprune.sparsity import MaskSet, compute_masks
from robustprune.train import TrainConfig, TrainResult, fit


@dataclass(frozen=True)
class PruningSpec:
    """Which weights to cut (group), how to rank them (score) and where to compare them (scope)."""

    name: str
    score: str
    group: str
    scope: str
    family: str = "magnitude"

    def describe(self) -> str:
        return f"{self.score} {self.group} pruning, {self.scope} scope"


METHODS: Registry[PruningSpec] = Registry("method")

for _score, _scopes in (("magnitude", ("local", "global")), ("random", ("local",))):
    for _group in ("unstructured", "kernel", "filter"):
        for _scope in _scopes:
            _name = f"{_score}-{_group}-{_scope}"
            METHODS.add(_name, PruningSpec(_name, _score, _group, _scope),
                        help=f"{_score} {_group} pruning, layer-{_scope} scope (seed 003)" if _scope == "local"
                        else f"{_score} {_group} pruning, global scope (seed 003)")


def get_method(name: str) -> PruningSpec:
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()


def check_rates(rates: Sequence[float]) -> list[float]:
    """Compression rates c >= 1 (1/c of prunable weights remain), sorted, unique."""
    out = sorted({float(r) for r in rates})
    bad = [r for r in out if not (r >= 1 and math.isfinite(r))]
    if bad:
        raise ConfigError(f"compression rates must be >= 1 (1/c of the prunable weights remain); got {bad}")
    return out


def halving_schedule(targets: Sequence[float], start: float = 1.0) -> list[float]:
    """Compression rates visited by the iterative schedule of seed 003: each step removes half of the remaining
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


def prune_once(model: nn.Module, spec: PruningSpec | str, rate: float, *, previous: MaskSet | None = None,
               generator: torch.Generator | None = None) -> MaskSet:
    """Prune ``model`` in place to compression ``rate`` (1/rate of its prunable weights remain)."""
    if isinstance(spec, str):
        spec = get_method(spec)
    masks = compute_masks(model, group=spec.group, score=spec.score, scope=spec.scope, keep=1.0 / rate,
                          previous=previous, generator=generator)
    masks.apply(model)
    return masks


def iterative_prune(
    model: nn.Module,
    spec: PruningSpec | str,
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
) -> Iterator[PruneStep]:
    """Prune ``model`` in place towards each rate in ``rates``, fine-tuning with ``objective`` after each step.

    ``schedule="iterative"`` halves the remaining weights per step (seed 003); ``"one-shot"`` jumps straight to each
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
        masks = prune_once(model, spec, c, previous=masks, generator=gen)
        step_cfg = cfg.model_copy(update={"seed": _step_seed(cfg.seed, c)})
        result = fit(model, objective, train, val, step_cfg, masks=masks, val_eps=val_eps, augment=augment,
                     desc=f"{spec.name} c={c:g}") if cfg.epochs > 0 else None
        yield PruneStep(rate=c, masks=masks, is_target=c in targets, finetune=result,
                        wall_time=time.perf_counter() - t0, history=result.history if result else [])
