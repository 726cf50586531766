"""Run a list of attacks on one model: clean accuracy, robust accuracy per (attack, ε), security curves.

Budget attacks (FGSM, PGD, ...) run once per ε. Minimal-norm attacks run once per attack and give a row for
every ε of the spec (robust iff the sample's minimal adversarial norm exceeds ε) plus a security curve.
Points misclassified when clean count as non-robust and are not attacked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.attacks.config import check_against_model
from robustprune.errors import ConfigError
from robustprune.evaluation.attack_info import (
    EvalAttackInfo,
    attack_kwargs,
    call_attack,
    info_for_spec,
    robust_mask_from_norms,
    spec_eps,
    spec_name,
)
from robustprune.evaluation.curves import default_eps_grid, security_curve
from robustprune.metrics import count_params, flops
from robustprune.metrics.accuracy import eval_mode
from robustprune.sparsity import sparsity_report
from robustprune.utils import config_hash, eps_to_str, make_generator

ROW_KEYS = ("attack", "norm", "eps", "eps_str", "robust_acc", "n_eval", "attack_config", "attack_hash",
            "eval_wall_time", "clean_acc")
ADV_SEED_OFFSET = 7_777_777
"""Seed offset of the generator that attacks clean-misclassified points when adversarial examples are kept."""


def size_metrics(model: nn.Module, input_shape: Sequence[int], *, base: nn.Module | None = None,
                 structure: bool = True) -> dict[str, Any]:
    """Params, FLOPs and sparsity measured from the zeros actually present in the weights; with ``structure``
    also the fraction of the unpruned base's conv filters and dense FLOPs the model lost (``filters_removed``,
    ``flops_removed``: :func:`robustprune.sparsity.structure_metrics`; ``base`` only for a model whose layers were
    already cut). Every key is a column of a study's ``results`` rows."""
    rep = sparsity_report(model)
    params = count_params(model)
    fl = flops(model, tuple(input_shape))
    out = {
        "achieved_sparsity": float(rep["weight_sparsity"]),
        "achieved_compression": float(rep["compression"]),
        "params_total": int(params["total"]),
        "params_nonzero": int(params["nonzero"]),
        "flops_dense": int(fl["dense"]),
        "flops_effective": int(fl["effective"]),
    }
    if structure:
        from robustprune.sparsity.structure import structure_metrics

        st = structure_metrics(model, input_shape, base=base)
        out["filters_removed"] = st["filters_removed"]
        out["flops_removed"] = st["flops_removed"]
    return out


@torch.no_grad()
def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return model(x).argmax(1) == y


def clean_correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> Tensor:
    """Bool per sample: classified correctly (model in eval mode; modes restored)."""
    with eval_mode(model):
        return torch.cat([_correct(model, x[i:i + batch_size], y[i:i + batch_size])
                          for i in range(0, len(x), batch_size)])


@dataclass
class AttackRun:
    """Everything one run of :func:`run_attacks` measured.

    ``rows``: result rows (the 'clean' row first). ``clean_mask``: bool per sample. ``correct[(attack_hash,
    eps_str)]``: bool per sample, robust under that attack. ``adv[(attack_hash, eps_str)]``: adversarial
    examples of every sample (kept for budget attacks with ``keep_adv``). ``norms[attack_hash]`` and
    ``min_norm_adv[attack_hash]``: a minimal-norm attack's per-sample norms (0 for clean errors) and points.
    ``curves``: one security curve per minimal-norm attack. ``infos[attack_hash]``: the attack's description.
    """

    rows: list[dict[str, Any]]
    clean_mask: Tensor
    correct: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    adv: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    norms: dict[str, Tensor] = field(default_factory=dict)
    min_norm_adv: dict[str, Tensor] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)
    infos: dict[str, EvalAttackInfo] = field(default_factory=dict)
    kwargs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def clean_acc(self) -> float:
        return float(self.rows[0]["clean_acc"])


def budgets_for(spec: Any, info: EvalAttackInfo, default_eps: float,
                eps_by_norm: Mapping[str, float] | None) -> tuple[float, ...]:
    """The spec's budgets, else the default for the attack's norm (L∞: ``default_eps``)."""
    eps = spec_eps(spec)
    if eps:
        return eps
    defaults = {"Linf": default_eps, **dict(eps_by_norm or {})}
    if defaults.get(info.norm) is None:
        raise ConfigError(f"attack {info.name!r} ({info.norm}) needs budgets: give eps=..., e.g. "
                          f"{info.name}:eps=0.5;1.0")
    return (float(defaults[info.norm]),)


def wants_adv(keep_adv: bool | Callable[[str, str], bool], attack_hash: str, eps_str: str) -> bool:
    """``keep_adv`` as a flag for every budget or a predicate on (attack hash, ε string)."""
    return bool(keep_adv(attack_hash, eps_str)) if callable(keep_adv) else bool(keep_adv)


def _gen(seed: int, device: torch.device) -> torch.Generator:
    return make_generator(seed, device)


def _attack_subset(info: EvalAttackInfo, model: nn.Module, x: Tensor, y: Tensor, mask: Tensor,
                   kw: Mapping[str, Any], gen: torch.Generator, batch_size: int
                   ) -> tuple[Tensor, Tensor | None]:
    """Attack the samples where ``mask`` holds, batch by batch as the rows do; returns (x_adv for all samples,
    with x where not attacked; norms for all samples with 0 where not attacked, or None for budget attacks)."""
    x_adv = x.clone()
    norms: Tensor | None = None
    for i in range(0, len(x), batch_size):
        m = mask[i:i + batch_size]
        if not bool(m.any()):
            continue
        idx = torch.nonzero(m).squeeze(1) + i
        xa, nb = call_attack(info, model, x[idx], y[idx], kw, gen)
        x_adv[idx] = xa.to(x_adv.dtype)
        if nb is not None:
            if norms is None:
                norms = torch.zeros(len(x), dtype=torch.float64, device=x.device)
            norms[idx] = nb.to(torch.float64)
    if info.min_norm and norms is None:
        norms = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    return x_adv, norms


def run_attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[Any],
    *,
    default_eps: float,
    eps_by_norm: Mapping[str, float] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    skip: Callable[[str, str], bool] | None = None,
    keep_adv: bool | Callable[[str, str], bool] = False,
    curve_points: int = 51,
    progress: bool = False,
    desc: str = "attacks",
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> AttackRun:
    """Clean accuracy and every (attack, ε) robust accuracy of ``model`` on (x, y); see :class:`AttackRun`.

    ``attacks``: ``AttackConfig``s, ``study.AttackSpec``s (anything with ``name``, ``eps``, ``settings()``) or
    dicts. A budget attack runs once per ε with a generator seeded ``seed``; a minimal-norm attack runs once.
    ``skip(attack_hash, eps_str) -> True`` leaves out a budget already evaluated (a minimal-norm attack whose
    budgets are all skipped does not run). ``keep_adv`` also attacks the clean errors (with another generator,
    so the rows are the same) and keeps every budget attack's adversarial examples, e.g. for vulnerability; a
    predicate ``keep_adv(attack_hash, eps_str)`` does so only for the budgets it names (the extra attack costs).
    ``progress``: a progress bar with one step per (attack, ε) run (a minimal-norm attack is one run), showing the
    attack running and the last robust accuracy.
    ``on_row(row)``: called with a copy of every row (the clean row first) as soon as it is measured, so a caller
    can store finished (attack, ε) results before the rest have run (``robustprune evaluate`` does).
    """
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"need as many labels as inputs and at least one point (got {len(x)} and {len(y)})")
    t0 = time.perf_counter()
    with eval_mode(model):
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[-1])
        for spec in attacks:  # settings that depend on the model (targets, L2 / L0 budgets): before any work
            check_against_model(spec, num_classes, tuple(x.shape[1:]))
        clean_mask = torch.cat([_correct(model, x[i:i + batch_size], y[i:i + batch_size])
                                for i in range(0, len(x), batch_size)])
        n = len(x)
        clean_acc = int(clean_mask.sum()) / n
        run = AttackRun(rows=[{
            "attack": "clean", "norm": None, "eps": 0.0, "eps_str": "0", "robust_acc": clean_acc, "n_eval": n,
            "attack_config": {}, "attack_hash": "clean", "eval_wall_time": time.perf_counter() - t0,
        }], clean_mask=clean_mask)
        emitted = 0

        def flush() -> None:
            nonlocal emitted
            for r in run.rows[emitted:]:
                r["clean_acc"] = clean_acc
                if on_row is not None:
                    on_row(dict(r))
            emitted = len(run.rows)

        flush()
        plan = [(spec, info_for_spec(spec)) for spec in attacks]
        plan = [(spec, info, budgets_for(spec, info, default_eps, eps_by_norm)) for spec, info in plan]
        bar = _progress_bar(sum(1 if info.min_norm else len(b) for _s, info, b in plan), desc, progress, n)
        for spec, info, budgets in plan:
            if info.min_norm:
                bar.set_postfix_str(f"{spec_name(spec)} (min-norm)")
                _run_min_norm(run, model, x, y, spec, info, budgets, batch_size=batch_size, seed=seed, skip=skip,
                              curve_points=curve_points)
                bar.update(1)
                flush()
            else:
                _run_budget(run, model, x, y, spec, info, budgets, batch_size=batch_size, seed=seed, skip=skip,
                            keep_adv=keep_adv, bar=bar, after_row=flush)
            if len(run.rows) > 1:
                bar.set_postfix_str(f"{run.rows[-1]['attack']}@{run.rows[-1]['eps_str']} "
                                    f"{100 * run.rows[-1]['robust_acc']:.1f}%")
        bar.close()
    for r in run.rows:
        r["clean_acc"] = clean_acc
    return run


def _progress_bar(total: int, desc: str, enabled: bool, n: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{desc} ({n} points)", unit="run", disable=not enabled, leave=False)


def _settings(kw: Mapping[str, Any], name: str) -> dict[str, Any]:
    s = {k: v for k, v in kw.items() if k != "eps"}
    s["name"] = name
    return s


def _run_budget(run: AttackRun, model: nn.Module, x: Tensor, y: Tensor, spec: Any, info: EvalAttackInfo,
                budgets: Sequence[float], *, batch_size: int, seed: int, skip: Callable[[str, str], bool] | None,
                keep_adv: bool | Callable[[str, str], bool], bar: Any = None,
                after_row: Callable[[], None] | None = None) -> None:
    n = len(x)
    for eps in budgets:
        if bar is not None:
            bar.set_postfix_str(f"{spec_name(spec)}@{eps_to_str(eps)}")
            bar.update(1)
        kw = attack_kwargs(info, spec, eps)
        settings = _settings(kw, spec_name(spec))
        ahash = config_hash(settings)
        es = eps_to_str(eps)
        if skip is not None and skip(ahash, es):
            continue
        t0 = time.perf_counter()
        x_adv, norms = _attack_subset(info, model, x, y, run.clean_mask, kw, _gen(seed, x.device), batch_size)
        if norms is not None:  # a "budget" attack that reports norms: trust the norms at this budget
            robust = run.clean_mask & robust_mask_from_norms(norms, eps)
        else:
            robust = run.clean_mask & torch.cat([_correct(model, x_adv[i:i + batch_size], y[i:i + batch_size])
                                                 for i in range(0, n, batch_size)])
        if wants_adv(keep_adv, ahash, es):
            wrong = ~run.clean_mask
            if bool(wrong.any()):
                x_wrong, _ = _attack_subset(info, model, x, y, wrong, kw,
                                            _gen(seed + ADV_SEED_OFFSET, x.device), batch_size)
                x_adv = torch.where(wrong.view(-1, *([1] * (x.dim() - 1))), x_wrong, x_adv)
            run.adv[(ahash, es)] = x_adv
        run.correct[(ahash, es)] = robust
        run.infos[ahash] = info
        run.kwargs[(ahash, es)] = kw
        run.rows.append({
            "attack": spec_name(spec), "norm": info.norm, "eps": float(eps), "eps_str": es,
            "robust_acc": int(robust.sum()) / n, "n_eval": n, "attack_config": settings, "attack_hash": ahash,
            "eval_wall_time": time.perf_counter() - t0,
        })
        if after_row is not None:
            after_row()


def _run_min_norm(run: AttackRun, model: nn.Module, x: Tensor, y: Tensor, spec: Any, info: EvalAttackInfo,
                  budgets: Sequence[float], *, batch_size: int, seed: int,
                  skip: Callable[[str, str], bool] | None, curve_points: int) -> None:
    n = len(x)
    kw = attack_kwargs(info, spec, None, min_norm=True)
    if "eps_max" in info.params() and kw.get("eps_max") is None and budgets:
        kw["eps_max"] = float(max(budgets))  # a budget-anchored search (min-norm-linf): APGD at the largest budget
    settings = _settings(kw, spec_name(spec))
    ahash = config_hash(settings)
    todo = [e for e in budgets if skip is None or not skip(ahash, eps_to_str(e))]
    if not todo:
        return
    t0 = time.perf_counter()
    x_adv, norms = _attack_subset(info, model, x, y, run.clean_mask, kw, _gen(seed, x.device), batch_size)
    assert norms is not None
    norms = torch.where(run.clean_mask, norms, torch.zeros_like(norms))
    wall = time.perf_counter() - t0
    run.norms[ahash] = norms
    run.min_norm_adv[ahash] = x_adv
    run.infos[ahash] = info
    curve = security_curve(norms, default_eps_grid(norms, curve_points, extra=budgets))
    run.curves.append({"attack": spec_name(spec), "norm": info.norm, "attack_hash": ahash, "settings": settings,
                       **curve})
    for eps in todo:
        es = eps_to_str(eps)
        robust = run.clean_mask & robust_mask_from_norms(norms, eps)
        run.correct[(ahash, es)] = robust
        run.kwargs[(ahash, es)] = dict(kw)
        run.rows.append({
            "attack": spec_name(spec), "norm": info.norm, "eps": float(eps), "eps_str": es,
            "robust_acc": int(robust.sum()) / n, "n_eval": n, "attack_config": settings, "attack_hash": ahash,
            "eval_wall_time": wall,
        })


def evaluate_attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[Any],
    *,
    default_eps: float,
    batch_size: int = 500,
    seed: int = 0,
    skip: Callable[[str, str], bool] | None = None,
    eps_by_norm: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Robust accuracy of ``model`` on (x, y) for every attack and budget, plus one 'clean' row.

    Returns result rows (attack, norm, eps, eps_str, robust_acc, n_eval, attack_config, attack_hash,
    eval_wall_time, clean_acc). ``skip(attack_hash, eps_str)`` -> True leaves out a budget already evaluated.
    Each module's train/eval mode is restored afterwards. See :func:`run_attacks` for everything else a run
    measures (per-sample results, security curves of minimal-norm attacks).
    """
    return run_attacks(model, x, y, attacks, default_eps=default_eps, eps_by_norm=eps_by_norm,
                       batch_size=batch_size, seed=seed, skip=skip).rows
