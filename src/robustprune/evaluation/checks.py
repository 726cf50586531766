"""Sanity checks that run with every evaluation (Carlini et al. 2019, "On evaluating adversarial robustness";
Athalye et al. 2018 on gradient masking), cheap versions on a small subset.

Each check is a dict ``{name, passed, detail, value, threshold}``; ``passed`` is False when the numbers look
wrong. A failed check is a flag to report next to the numbers, never a reason to hide them.

Checks (``n`` evaluated points, ``m`` subset points, both in samples):

``eps_monotone:<attack>``     robust accuracy does not rise with ε (clean accuracy as ε = 0) by more than
                              ``max(1/n, 0.005)``.
``large_eps``                 L∞ PGD (20 steps) at ε = 1 (every image reachable) on the subset leaves at most
                              5 % robust accuracy.
``more_iterations:<attack>``  the attack with 2x steps and 2x restarts (whichever it has) on the subset is not
                              more accurate than the run on the same points by more than ``max(2/m, 0.01)``.
``converged:<attack>``        ... nor less accurate by more than ``max(3/m, 0.03)`` (else the run's attack had
                              not converged and under-reports vulnerability).
``whitebox_vs_transfer:<attack>@<eps>``  white-box robust accuracy <= transfer robust accuracy
                              + ``max(1/n, 0.005)`` (only when a transfer was evaluated).
``pgd_vs_apgd:<attack>@<eps>``  PGD (``pgd``/``pgd-linf``, any settings) robust accuracy exceeds the APGD one
                              (``apgd``, or ``autoattack``) at the same ε by at most 3 points: more means PGD
                              over-reports robustness for this model (Croce2020); row-based, costs nothing.
``input_gradients``           at most 1 % of the subset have an all-zero (or non-finite) input gradient of the
                              cross-entropy or of the CW margin (gradient masking / shattered gradients).
``min_norm_valid:<attack>``   a minimal-norm attack's found points are misclassified and their reported norms
                              match the measured ones (relative 1e-3, L0 within 0.5 of the changed elements or
                              pixels), for at least 99 % of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.attacks import perturbation_norm
from robustprune.evaluation.attack_info import EvalAttackInfo, attack_info, robust_mask_from_norms
from robustprune.evaluation.run import AttackRun, _attack_subset, _correct, clean_correct
from robustprune.metrics.accuracy import eval_mode
from robustprune.utils import eps_to_str, make_generator

STRONGER_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class CheckThresholds:
    monotone_min_tol: float = 0.005
    large_eps: float = 1.0
    large_eps_steps: int = 20
    large_eps_max_acc: float = 0.05
    stronger_min_tol: float = 0.01
    stronger_samples_tol: int = 2
    converged_min_tol: float = 0.03
    converged_samples_tol: int = 3
    transfer_min_tol: float = 0.005
    zero_grad_max_frac: float = 0.01
    min_norm_rel_tol: float = 1e-3
    min_norm_max_bad_frac: float = 0.01
    pgd_apgd_max_gap: float = 0.03


def _check(name: str, passed: bool | None, detail: str, value: float | None = None,
           threshold: float | None = None) -> dict[str, Any]:
    return {"name": name, "passed": passed, "detail": detail,
            "value": None if value is None or not math.isfinite(value) else float(value),
            "threshold": None if threshold is None else float(threshold)}


def _is_transfer(row: Mapping[str, Any]) -> bool:
    cfg = row.get("attack_config") or {}
    if isinstance(cfg, str):
        cfg = json.loads(cfg or "{}")
    return "transfer_from" in cfg


def _cfg(row: Mapping[str, Any]) -> dict[str, Any]:
    cfg = row.get("attack_config") or {}
    return json.loads(cfg) if isinstance(cfg, str) else dict(cfg)


def _group_key(row: Mapping[str, Any]) -> str:
    """Rows of one attack at different ε (its ε-dependent step ``alpha`` aside)."""
    cfg = {k: v for k, v in _cfg(row).items() if k != "alpha"}
    return json.dumps([row["attack"], row.get("norm"), cfg], sort_keys=True, default=str)


def _label(row: Mapping[str, Any]) -> str:
    return str(row["attack"])


def check_monotone(rows: Sequence[Mapping[str, Any]], th: CheckThresholds = CheckThresholds()) -> list[dict]:
    out = []
    clean = next((r for r in rows if r["attack"] == "clean"), None)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["attack"] != "clean":
            groups.setdefault(_group_key(r), []).append(r)
    names = {}
    for key, grp in groups.items():
        label = _label(grp[0])
        names[label] = names.get(label, 0) + 1
        if names[label] > 1:
            label = f"{label}#{names[label]}"
        pts = sorted(((float(r["eps"]), float(r["robust_acc"])) for r in grp))
        if clean is not None:
            pts = [(0.0, float(clean["robust_acc"]))] + pts
        n = int(grp[0].get("n_eval") or 1)
        tol = max(1.0 / n, th.monotone_min_tol)
        worst, where = 0.0, ""
        for i in range(1, len(pts)):
            lowest = min(p[1] for p in pts[:i])
            rise = pts[i][1] - lowest
            if rise > worst:
                worst, where = rise, f"eps {eps_to_str(pts[i][0])}: {pts[i][1]:.4f} > {lowest:.4f}"
        ok = worst <= tol
        detail = ("robust accuracy does not rise with eps over " + ", ".join(eps_to_str(e) for e, _ in pts[1:])
                  if ok else f"robust accuracy rises with eps by {worst:.4f} ({where}): the attack is unreliable")
        out.append(_check(f"eps_monotone:{label}", ok, detail, worst, tol))
    return out


def _subset_robust(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, info: EvalAttackInfo,
                   kw: Mapping[str, Any], eps: float, gen: torch.Generator, batch_size: int) -> Tensor:
    """Bool per sample: robust under ``info`` with ``kw`` at ``eps`` (budget: prediction; min-norm: norm > eps)."""
    x_adv, norms = _attack_subset(info, model, x, y, clean, kw, gen, batch_size)
    if norms is not None:
        return clean & robust_mask_from_norms(norms, eps)
    return clean & torch.cat([_correct(model, x_adv[i:i + batch_size], y[i:i + batch_size])
                              for i in range(0, len(x), batch_size)])


def check_large_eps(model: nn.Module, x: Tensor, y: Tensor, *, seed: int = 0, batch_size: int = 500,
                    th: CheckThresholds = CheckThresholds()) -> dict[str, Any]:
    info = attack_info("pgd")
    eps = th.large_eps
    kw = {"eps": eps, "steps": th.large_eps_steps, "alpha": 2.5 * eps / th.large_eps_steps}
    kw = {k: v for k, v in kw.items() if info.accepts(k)}
    clean = clean_correct(model, x, y, batch_size)
    with eval_mode(model):
        robust = _subset_robust(model, x, y, clean, info, kw, eps, make_generator(seed, x.device), batch_size)
    acc = float(robust.double().mean())
    ok = acc <= th.large_eps_max_acc
    detail = (f"L∞ PGD-{th.large_eps_steps} at eps {eps_to_str(eps)} leaves {acc:.4f} robust accuracy on "
              f"{len(x)} points" + ("" if ok else "; an attack that can reach any image should break nearly every "
                                   "point: the attack is failing (gradient masking?)"))
    return _check("large_eps", ok, detail, acc, th.large_eps_max_acc)


def _stronger(info: EvalAttackInfo, kw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]] | None:
    params = info.params()
    strong = dict(kw)
    changed = []
    if "steps" in params:
        default = params["steps"].default if params["steps"].default is not params["steps"].empty else 10
        strong["steps"] = 2 * int(kw.get("steps", default))
        changed.append(f"steps {kw.get('steps', default)}->{strong['steps']}")
    if "restarts" in params:
        default = params["restarts"].default if params["restarts"].default is not params["restarts"].empty else 1
        strong["restarts"] = 2 * int(kw.get("restarts", default))
        changed.append(f"restarts {kw.get('restarts', default)}->{strong['restarts']}")
    return (strong, changed) if changed else None


def check_more_iterations(model: nn.Module, x: Tensor, y: Tensor, rows: Sequence[Mapping[str, Any]], *,
                          run: AttackRun | None = None, subset: int = 100, seed: int = 0, batch_size: int = 500,
                          th: CheckThresholds = CheckThresholds()) -> list[dict]:
    """For each white-box attack with steps or restarts: rerun it on the first ``subset`` points with both
    doubled, at the ε whose robust accuracy is nearest half the clean accuracy."""
    out = []
    xs, ys = x[:subset], y[:subset]
    m = len(xs)
    clean = clean_correct(model, xs, ys, batch_size)
    clean_acc = next((float(r["robust_acc"]) for r in rows if r["attack"] == "clean"), 1.0)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["attack"] != "clean" and not _is_transfer(r):
            groups.setdefault(_group_key(r), []).append(r)
    for grp in groups.values():
        row = min(grp, key=lambda r: (abs(float(r["robust_acc"]) - clean_acc / 2), float(r["eps"])))
        try:
            info = run.infos[row["attack_hash"]] if run is not None and row["attack_hash"] in run.infos \
                else attack_info(row["attack"])
        except Exception:  # noqa: BLE001 - an attack no longer registered: nothing to rerun
            continue
        eps, es = float(row["eps"]), row["eps_str"]
        if run is not None and (row["attack_hash"], es) in run.kwargs:
            kw = dict(run.kwargs[(row["attack_hash"], es)])
        else:
            kw = {k: v for k, v in _cfg(row).items() if k != "name"}
            if not info.min_norm:
                kw["eps"] = eps
        made = _stronger(info, kw)
        if made is None:
            continue
        strong_kw, changed = made
        with eval_mode(model):
            if run is not None and (row["attack_hash"], es) in run.correct:
                base = run.correct[(row["attack_hash"], es)][:subset]
            else:
                base = _subset_robust(model, xs, ys, clean, info, kw, eps, make_generator(seed, x.device), batch_size)
            strong = _subset_robust(model, xs, ys, clean, info, strong_kw, eps,
                                    make_generator(seed + STRONGER_SEED_OFFSET, x.device), batch_size)
        a0, a1 = float(base.double().mean()), float(strong.double().mean())
        label = f"{row['attack']}@{es}"
        tol_up = max(th.stronger_samples_tol / m, th.stronger_min_tol)
        ok = a1 - a0 <= tol_up
        out.append(_check(
            f"more_iterations:{label}", ok,
            f"{', '.join(changed)} on {m} points: robust accuracy {a0:.4f} -> {a1:.4f}"
            + ("" if ok else "; a stronger attack should not be weaker: the attack is unreliable"),
            a1 - a0, tol_up))
        tol_down = max(th.converged_samples_tol / m, th.converged_min_tol)
        ok2 = a0 - a1 <= tol_down
        out.append(_check(
            f"converged:{label}", ok2,
            f"{', '.join(changed)} on {m} points lowers robust accuracy by {a0 - a1:.4f}"
            + ("" if ok2 else "; the attack had not converged: robust accuracy is over-reported, use more "
                              "steps/restarts"),
            a0 - a1, tol_down))
    return out


def check_transfer(rows: Sequence[Mapping[str, Any]], th: CheckThresholds = CheckThresholds()) -> list[dict]:
    from robustprune.evaluation.transfer import TRANSFER_PREFIX

    out = []
    white = {(r["attack"], r["eps_str"]): r for r in rows if r["attack"] != "clean" and not _is_transfer(r)}
    for t in rows:
        if t["attack"] == "clean" or not _is_transfer(t):
            continue
        base = t["attack"][len(TRANSFER_PREFIX):] if t["attack"].startswith(TRANSFER_PREFIX) else t["attack"]
        w = white.get((base, t["eps_str"]))
        if w is None:
            continue
        n = int(t.get("n_eval") or 1)
        tol = max(1.0 / n, th.transfer_min_tol)
        gap = float(w["robust_acc"]) - float(t["robust_acc"])
        ok = gap <= tol
        out.append(_check(
            f"whitebox_vs_transfer:{base}@{t['eps_str']}", ok,
            f"white-box {float(w['robust_acc']):.4f} vs transfer {float(t['robust_acc']):.4f}"
            + ("" if ok else "; the white-box attack is weaker than a transfer attack: gradient masking?"),
            gap, tol))
    return out


PGD_ATTACKS = ("pgd", "pgd-linf")
STRONG_ATTACKS = ("apgd", "autoattack")


def check_pgd_vs_apgd(rows: Sequence[Mapping[str, Any]], th: CheckThresholds = CheckThresholds()) -> list[dict]:
    """For every ε with a white-box PGD row and an APGD row (``apgd``, else ``autoattack``): PGD's robust accuracy
    must not exceed APGD's by more than ``th.pgd_apgd_max_gap`` (3 points). Row-based, like :func:`check_monotone`
    and :func:`check_transfer`; the study can call it on any model's stored rows."""
    out = []
    white = [r for r in rows if r["attack"] != "clean" and not _is_transfer(r)]
    strong: dict[str, Mapping[str, Any]] = {}
    for name in reversed(STRONG_ATTACKS):  # apgd wins over autoattack at the same eps
        for r in white:
            if str(r["attack"]).lower() == name:
                strong[str(r["eps_str"])] = r
    seen: dict[str, int] = {}
    for r in white:
        if str(r["attack"]).lower() not in PGD_ATTACKS:
            continue
        s_row = strong.get(str(r["eps_str"]))
        if s_row is None:
            continue
        key = f"{r['attack']}@{r['eps_str']}"
        seen[key] = seen.get(key, 0) + 1
        label = key if seen[key] == 1 else f"{r['attack']}#{seen[key]}@{r['eps_str']}"
        gap = float(r["robust_acc"]) - float(s_row["robust_acc"])
        ok = gap <= th.pgd_apgd_max_gap
        out.append(_check(
            f"pgd_vs_apgd:{label}", ok,
            f"PGD {float(r['robust_acc']):.4f} vs {s_row['attack']} {float(s_row['robust_acc']):.4f} at eps "
            f"{r['eps_str']}" + ("" if ok else "; PGD over-reports robustness: report the APGD number"),
            gap, th.pgd_apgd_max_gap))
    return out


def check_input_gradients(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500,
                          th: CheckThresholds = CheckThresholds()) -> dict[str, Any]:
    from robustprune.attacks.losses import ce_loss, cw_loss

    zero = {"ce": 0, "cw": 0}
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].detach().clone().requires_grad_(True)
            yb = y[i:i + batch_size]
            with torch.enable_grad():
                logits = model(xb)
                for name, fn in (("ce", ce_loss), ("cw", cw_loss)):
                    (g,) = torch.autograd.grad(fn(logits, yb).sum(), xb, retain_graph=name == "ce",
                                               allow_unused=True)
                    if g is None:
                        zero[name] += len(xb)
                        continue
                    g = g.flatten(1)
                    bad = (g == 0).all(1) | ~torch.isfinite(g).all(1)
                    zero[name] += int(bad.sum())
    n = max(len(x), 1)
    frac = {k: v / n for k, v in zero.items()}
    worst = max(frac.values())
    ok = worst <= th.zero_grad_max_frac
    detail = (f"all-zero or non-finite input gradients: {frac['ce']:.4f} of {len(x)} points (cross-entropy), "
              f"{frac['cw']:.4f} (CW margin)")
    if not ok:
        detail += "; gradient-based attacks cannot move these points: gradient masking, evaluate with a " \
                  "gradient-free or transfer attack"
    return _check("input_gradients", ok, detail, worst, th.zero_grad_max_frac)


def check_min_norm(model: nn.Module, x: Tensor, y: Tensor, run: AttackRun, *, batch_size: int = 500,
                   th: CheckThresholds = CheckThresholds()) -> list[dict]:
    out = []
    for ahash, norms in run.norms.items():
        info = run.infos[ahash]
        x_adv = run.min_norm_adv[ahash]
        found = run.clean_mask & torch.isfinite(norms)
        label = next((r["attack"] for r in run.rows if r["attack_hash"] == ahash), info.name)
        k = int(found.sum())
        if k == 0:
            out.append(_check(f"min_norm_valid:{label}", True, "no adversarial example found to verify", 0.0,
                              th.min_norm_max_bad_frac))
            continue
        idx = torch.nonzero(found).squeeze(1)
        xa, xc, yy, rep = x_adv[idx], x[idx], y[idx], norms[idx]
        with eval_mode(model):
            still = torch.cat([_correct(model, xa[i:i + batch_size], yy[i:i + batch_size])
                               for i in range(0, k, batch_size)])
        xc, xa = xc.double(), xa.double()
        if info.norm == "L0":
            elems = perturbation_norm(xc, xa, "L0", l0_unit="element")
            pixels = perturbation_norm(xc, xa, "L0", l0_unit="pixel")
            mismatch = ((elems - rep).abs() > 0.5) & ((pixels - rep).abs() > 0.5)
        else:
            mismatch = (perturbation_norm(xc, xa, info.norm) - rep).abs() > th.min_norm_rel_tol * rep.abs() + 1e-6
        bad = still | mismatch
        frac = int(bad.sum()) / k
        ok = frac <= th.min_norm_max_bad_frac
        detail = (f"{k} adversarial examples found: {int(still.sum())} not misclassified, "
                  f"{int(mismatch.sum())} with a reported {info.norm} norm that differs from the measured one")
        out.append(_check(f"min_norm_valid:{label}", ok, detail, frac, th.min_norm_max_bad_frac))
    return out


def sanity_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    rows: Sequence[Mapping[str, Any]],
    *,
    run: AttackRun | None = None,
    subset: int = 100,
    seed: int = 0,
    batch_size: int = 500,
    thresholds: CheckThresholds = CheckThresholds(),
    large_eps: bool = True,
    more_iterations: bool = True,
    gradients: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run every applicable check on an evaluation's ``rows`` (white-box and transfer rows of ``model`` on
    (x, y)); see the module docstring for the list and thresholds. ``run`` (from :func:`run_attacks`) lets the
    checks reuse per-sample results and verify minimal-norm points. Returns ``[{name, passed, detail, value,
    threshold}]``; checks that do not apply (no transfer rows, no minimal-norm attack) are left out."""
    from tqdm.auto import tqdm

    th = thresholds
    xs, ys = x[:subset], y[:subset]
    steps = [("eps monotone, transfer, PGD vs APGD", lambda: check_monotone(rows, th) + check_transfer(rows, th)
              + check_pgd_vs_apgd(rows, th))]
    if large_eps:
        steps.append(("large eps", lambda: [check_large_eps(model, xs, ys, seed=seed, batch_size=batch_size, th=th)]))
    if more_iterations:
        steps.append(("more iterations (reruns every attack)", lambda: check_more_iterations(
            model, x, y, rows, run=run, subset=subset, seed=seed, batch_size=batch_size, th=th)))
    if gradients:
        steps.append(("input gradients", lambda: [check_input_gradients(model, xs, ys, batch_size=batch_size,
                                                                         th=th)]))
    if run is not None:
        steps.append(("min-norm points", lambda: check_min_norm(model, x, y, run, batch_size=batch_size, th=th)))
    checks: list[dict[str, Any]] = []
    with tqdm(total=len(steps), desc=f"sanity checks ({subset} points)", unit="check", disable=not progress,
              leave=False) as bar:
        for name, fn in steps:
            bar.set_postfix_str(name)
            checks += fn()
            bar.update(1)
    return checks


def failed(checks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in checks if c.get("passed") is False]
