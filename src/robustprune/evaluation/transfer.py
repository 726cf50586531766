"""Transfer (black-box) attacks: adversarial examples crafted on a source model, evaluated on a target.

Madaan2020 reports robust accuracy under a black-box attack crafted on an adversarially trained full network;
Ye2019 (Table 8) transfers PGD examples from unpruned models to pruned ones. Protocol here, mirroring the
white-box rows: the source attacks the points it classifies correctly (a point it already misclassifies is
passed on unchanged), batch by batch with the same generator, so a transfer from a model to itself gives
exactly its white-box robust accuracy. A point counts as robust when the target classifies it correctly both
clean and on the transferred example. For a minimal-norm attack the transferred example at budget ε is the
source's minimal adversarial point when its norm is <= ε, else the clean point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.evaluation.attack_info import (
    EvalAttackInfo,
    attack_info,
    attack_kwargs,
    info_for_spec,
    spec_name,
)
from robustprune.evaluation.run import (
    ADV_SEED_OFFSET,
    AttackRun,
    _attack_subset,
    _correct,
    _settings,
    budgets_for,
    clean_correct,
    wants_adv,
)
from robustprune.metrics.accuracy import eval_mode
from robustprune.utils import config_hash, eps_to_str, make_generator

TRANSFER_PREFIX = "transfer-"


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _predict_correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    return torch.cat([_correct(model, x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def transfer_attack(
    source_model: nn.Module,
    target_model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack_fn: Callable[..., Any] | str,
    *,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
    per_sample: bool = False,
    **kw: Any,
) -> float | Tensor:
    """Robust accuracy of ``target_model`` on examples crafted by ``attack_fn`` on ``source_model``.

    ``attack_fn`` is an attack function or a registered name; ``kw`` are its settings (``eps`` included; for a
    minimal-norm attack ``eps`` is the budget at which its points are used). ``per_sample`` returns the bool
    mask of robust points instead of the accuracy. Both models are evaluated in eval mode (modes restored).
    """
    info = attack_info(attack_fn) if isinstance(attack_fn, str) else EvalAttackInfo(
        getattr(attack_fn, "__name__", "attack"), attack_fn)
    kw = dict(kw)
    eps = kw.get("eps")
    with eval_mode(source_model), eval_mode(target_model):
        src_ok = _predict_correct(source_model, x, y, batch_size)
        call_kw = {k: v for k, v in kw.items() if not (k == "eps" and info.min_norm)}
        x_adv, norms = _attack_subset(info, source_model, x, y, src_ok, call_kw, generator, batch_size)
        if norms is not None:
            if eps is None:
                raise ConfigError("a minimal-norm attack transfers at a budget: pass eps=...")
            x_adv = torch.where(_bcast(norms <= float(eps), x), x_adv, x)
        robust = _predict_correct(target_model, x, y, batch_size) & _predict_correct(target_model, x_adv, y,
                                                                                   batch_size)
    return robust if per_sample else float(robust.double().mean())


@dataclass
class TransferExamples:
    """Adversarial examples crafted once on a source model, to be applied to any number of targets.

    ``items``: one entry per (attack, ε): ``(name, info, eps, settings, attack_hash, x_transfer, x_keep)`` where
    ``x_transfer`` holds the source's adversarial points on the points it classifies correctly (others unchanged)
    and ``x_keep`` additionally the source's errors attacked (only with ``keep_adv``; else ``x_transfer``).
    ``wall[i]``: seconds the source attack of item ``i`` took."""

    items: list[tuple[str, EvalAttackInfo, float, dict[str, Any], str, Tensor, Tensor]] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


def craft_transfer(
    source_model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[Any],
    *,
    default_eps: float,
    eps_by_norm: Mapping[str, float] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    source_id: str = "source",
    keep_adv: bool | Callable[[str, str], bool] = False,
    progress: bool = False,
) -> TransferExamples:
    """Craft the transfer examples of every (attack, ε) on ``source_model`` (see :func:`run_transfer`);
    ``keep_adv``: a flag, or a predicate on (attack hash, ε string) naming the budgets whose ``x_keep`` is needed.
    """
    from robustprune.evaluation.run import _progress_bar

    out = TransferExamples()
    plan = [(spec, info_for_spec(spec)) for spec in attacks]
    plan = [(spec, info, budgets_for(spec, info, default_eps, eps_by_norm)) for spec, info in plan]
    bar = _progress_bar(sum(1 if info.min_norm else len(b) for _s, info, b in plan), "transfer attacks on the source",
                        progress, len(x))
    with eval_mode(source_model):
        src_ok = _predict_correct(source_model, x, y, batch_size)
        for spec, info, budgets in plan:
            name = TRANSFER_PREFIX + spec_name(spec)
            bar.set_postfix_str(spec_name(spec))
            if info.min_norm:
                bar.update(1)
                t1 = time.perf_counter()
                kw = attack_kwargs(info, spec, None, min_norm=True)
                x_min, norms = _attack_subset(info, source_model, x, y, src_ok, kw, make_generator(seed, x.device),
                                              batch_size)
                assert norms is not None
                settings = {**_settings(kw, spec_name(spec)), "transfer_from": source_id}
                ahash = config_hash(settings)
                wall = (time.perf_counter() - t1) / max(len(budgets), 1)
                for eps in budgets:
                    xt = torch.where(_bcast(src_ok & (norms <= eps), x), x_min, x)
                    out.items.append((name, info, float(eps), settings, ahash, xt, xt))
                    out.wall.append(wall)
                continue
            for eps in budgets:
                bar.update(1)
                t1 = time.perf_counter()
                kw = attack_kwargs(info, spec, eps)
                settings = {**_settings(kw, spec_name(spec)), "transfer_from": source_id}
                ahash = config_hash(settings)
                xt, _ = _attack_subset(info, source_model, x, y, src_ok, kw, make_generator(seed, x.device),
                                       batch_size)
                x_keep = xt
                if wants_adv(keep_adv, ahash, eps_to_str(eps)) and bool((~src_ok).any()):
                    x_wrong, _ = _attack_subset(info, source_model, x, y, ~src_ok, kw,
                                                make_generator(seed + ADV_SEED_OFFSET, x.device), batch_size)
                    x_keep = torch.where(_bcast(~src_ok, x), x_wrong, xt)
                out.items.append((name, info, float(eps), settings, ahash, xt, x_keep))
                out.wall.append(time.perf_counter() - t1)
    bar.close()
    return out


def apply_transfer(
    target_model: nn.Module,
    x: Tensor,
    y: Tensor,
    examples: TransferExamples,
    *,
    batch_size: int = 500,
    keep_adv: bool = False,
    skip: Callable[[str, str], bool] | None = None,
    source_time: bool = True,
) -> AttackRun:
    """Transfer rows of ``target_model`` for every crafted (attack, ε) in ``examples`` (one forward pass each);
    the wall time of a row is the source attack's (``source_time``; leave it out when many targets share the
    examples) plus the target's forward. ``skip(attack_hash, eps_str)`` leaves a row out."""
    t0 = time.perf_counter()
    n = len(x)
    with eval_mode(target_model):
        tgt_clean = clean_correct(target_model, x, y, batch_size)
        clean_acc = int(tgt_clean.sum()) / n
        run = AttackRun(rows=[{
            "attack": "clean", "norm": None, "eps": 0.0, "eps_str": "0", "robust_acc": clean_acc, "n_eval": n,
            "attack_config": {}, "attack_hash": "clean", "eval_wall_time": time.perf_counter() - t0,
        }], clean_mask=tgt_clean)
        for (name, info, eps, settings, ahash, xt, x_keep), wall in zip(examples.items, examples.wall):
            if skip is not None and skip(ahash, eps_to_str(eps)):
                continue
            t1 = time.perf_counter()
            _add_row(run, target_model, x, y, xt, name, info, eps, settings, ahash, batch_size, 0.0, False)
            run.rows[-1]["eval_wall_time"] = (wall if source_time else 0.0) + time.perf_counter() - t1
            if keep_adv:
                run.adv[(ahash, eps_to_str(eps))] = x_keep
    for r in run.rows:
        r["clean_acc"] = clean_acc
    return run


def run_transfer(
    source_model: nn.Module,
    target_model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[Any],
    *,
    default_eps: float,
    eps_by_norm: Mapping[str, float] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    source_id: str = "source",
    keep_adv: bool = False,
    progress: bool = False,
) -> AttackRun:
    """Transfer rows for every (attack, ε): attack name ``transfer-<name>``, settings with ``transfer_from``
    (``source_id``), robust accuracy of the target (see :func:`transfer_attack`). ``keep_adv`` keeps the
    transferred examples (the source's errors attacked too, with another generator). To attack many targets
    with the same source, call :func:`craft_transfer` once and :func:`apply_transfer` per target."""
    examples = craft_transfer(source_model, x, y, attacks, default_eps=default_eps, eps_by_norm=eps_by_norm,
                              progress=progress,
                              batch_size=batch_size, seed=seed, source_id=source_id, keep_adv=keep_adv)
    return apply_transfer(target_model, x, y, examples, batch_size=batch_size, keep_adv=keep_adv)


def _add_row(run: AttackRun, target: nn.Module, x: Tensor, y: Tensor, xt: Tensor, name: str, info: EvalAttackInfo,
             eps: float, settings: dict[str, Any], ahash: str, batch_size: int, wall: float, keep_adv: bool) -> None:
    es = eps_to_str(eps)
    robust = run.clean_mask & _predict_correct(target, xt, y, batch_size)
    run.correct[(ahash, es)] = robust
    run.infos[ahash] = info
    if keep_adv:
        run.adv[(ahash, es)] = xt
    run.rows.append({
        "attack": name, "norm": info.norm, "eps": float(eps), "eps_str": es, "robust_acc": int(robust.sum()) / len(x),
        "n_eval": len(x), "attack_config": settings, "attack_hash": ahash, "eval_wall_time": wall,
    })
