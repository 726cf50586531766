"""One call for a complete, honest evaluation: white-box rows, optional transfer rows, security curves of
minimal-norm attacks, latent vulnerability, and the sanity checks, all in one report that serialises to a
RobustBench-style JSON document."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from robustprune.evaluation.checks import CheckThresholds, failed, sanity_checks
from robustprune.evaluation.run import AttackRun, run_attacks
from robustprune.evaluation.transfer import run_transfer
from robustprune.metrics.vulnerability import latent_vulnerability

JSON_FORMAT = "robustprune-eval/1"


class SanityCheckWarning(UserWarning):
    """A sanity check of an evaluation failed: the numbers next to it may not be trustworthy."""


@dataclass
class EvaluationReport:
    """Rows (clean first, then white-box, then transfer rows), security curves, sanity checks, vulnerability."""

    rows: list[dict[str, Any]]
    curves: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    vulnerability: list[dict[str, Any]] = field(default_factory=list)
    run: AttackRun | None = None
    transfer: AttackRun | None = None
    transfer_source: str | None = None
    seed: int = 0

    @property
    def clean_acc(self) -> float:
        return float(self.rows[0]["clean_acc"])

    @property
    def n_points(self) -> int:
        return int(self.rows[0]["n_eval"])

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return list(failed(self.checks))

    def to_json(self, **meta: Any) -> dict[str, Any]:
        """RobustBench-style document: ``meta`` (model, dataset, architecture, sizes ...) first, then
        ``clean_acc``, ``n_points``, ``robust`` (one entry per (attack, ε): attack, threat, norm, eps, eps_str,
        robust_acc, n_points, settings, attack_hash, wall_time, source), ``security_curves``, ``checks``,
        ``checks_passed`` (None when no check ran), ``vulnerability``."""
        robust = []
        for r in self.rows:
            if r["attack"] == "clean":
                continue
            cfg = dict(r["attack_config"])
            source = cfg.pop("transfer_from", None)
            robust.append({
                "attack": r["attack"], "threat": "transfer" if source is not None else "white-box",
                "norm": r["norm"], "eps": r["eps"], "eps_str": r["eps_str"], "robust_acc": r["robust_acc"],
                "n_points": r["n_eval"], "settings": cfg, "attack_hash": r["attack_hash"],
                "wall_time": r["eval_wall_time"], "source": source,
            })
            if r["norm"] == "L0":  # DESIGN: say whether an L0 budget counts pixels or tensor elements
                robust[-1]["l0_unit"] = cfg.get("l0_unit", "pixel")
        curves = [dict(c, l0_unit=c["settings"].get("l0_unit", "pixel")) if c["norm"] == "L0" else dict(c)
                  for c in self.curves]
        doc = {"format": JSON_FORMAT, **meta, "clean_acc": self.clean_acc, "n_points": self.n_points,
               "seed": self.seed, "threat_models": sorted({e["norm"] for e in robust if e["norm"]}),
               "robust": robust, "security_curves": curves, "checks": self.checks,
               "checks_passed": (not self.failed_checks) if self.checks else None, "vulnerability": self.vulnerability}
        return _json_safe(doc)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return _json_safe(obj.tolist())
    return obj


def _vulnerability_entries(model: nn.Module, x: Tensor, run: AttackRun, threat: str, batch_size: int,
                           per_feature: bool) -> list[dict[str, Any]]:
    out = []
    for r in run.rows:
        key = (r["attack_hash"], r["eps_str"])
        if r["attack"] == "clean" or key not in run.adv:
            continue
        v = latent_vulnerability(model, x, run.adv[key], batch_size=batch_size)
        out.append({"attack": r["attack"], "threat": threat, "norm": r["norm"], "eps": r["eps"],
                    "eps_str": r["eps_str"], **v.to_dict(per_feature=per_feature)})
    return out


def evaluate_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[Any],
    *,
    default_eps: float,
    eps_by_norm: Mapping[str, float] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    transfer_from: nn.Module | None = None,
    transfer_source: str = "source",
    checks: bool = True,
    check_subset: int = 100,
    thresholds: CheckThresholds = CheckThresholds(),
    vulnerability: bool = False,
    per_feature: bool = True,
    warn: bool = True,
    progress: bool = False,
    precision: str = "fp32",
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> EvaluationReport:
    """Evaluate ``model`` on (x, y) under ``attacks`` (see :func:`run_attacks`), and

    - with ``transfer_from`` (a source model), the same attacks crafted on the source (rows ``transfer-<name>``);
    - with ``vulnerability``, the latent vulnerability (Madaan2020, Eq. 1-2) of ``model`` under every budget
      attack's examples, white-box and transfer (all points attacked; rows unchanged);
    - with ``checks`` (default), the sanity checks of :mod:`robustprune.evaluation.checks` on the first
      ``check_subset`` points; failures are emitted as :class:`SanityCheckWarning` when ``warn``.

    ``progress``: progress bars for the white-box attacks, the transfer attacks and the sanity checks.
    ``precision``: the math of every attack and check, strict IEEE ``fp32`` (TF32 off, no autocast) by default so
    that a robust accuracy does not depend on the chip; ``tf32`` allows TF32 on CUDA.
    ``on_row(row)``: called with every row as soon as it is measured (white-box rows one (attack, ε) at a time,
    transfer rows once the source's examples are crafted), before the checks run.
    """
    import torch

    from robustprune.precision import evaluation_precision

    _check_inputs(model, x, y, default_eps=default_eps, batch_size=batch_size, seed=seed,
                  transfer_from=transfer_from, flags={"checks": checks, "vulnerability": vulnerability,
                                                      "per_feature": per_feature, "warn": warn, "progress": progress})
    with evaluation_precision(precision), torch.autocast(x.device.type, enabled=False):
        return _evaluate_model(model, x, y, attacks, default_eps=default_eps, eps_by_norm=eps_by_norm,
                               batch_size=batch_size, seed=seed, transfer_from=transfer_from,
                               transfer_source=transfer_source, checks=checks, check_subset=check_subset,
                               thresholds=thresholds, vulnerability=vulnerability, per_feature=per_feature,
                               warn=warn, progress=progress, on_row=on_row)


def _check_inputs(model: Any, x: Any, y: Any, *, default_eps: Any, batch_size: Any, seed: Any, transfer_from: Any,
                  flags: Mapping[str, Any]) -> None:
    """What the CLI checks before an evaluation, as one-line ConfigErrors before any attack runs: a model that
    returns one logits tensor, float NCHW images in [0, 1] with integer labels within its outputs, the numbers, the
    flags (a string such as 'no' is refused), and a transfer source of the same inputs and classes."""
    from robustprune.data import check_split
    from robustprune.errors import ConfigError
    from robustprune.metrics.accuracy import eval_mode
    from robustprune.utils import check_flag, check_logits, check_number

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    check_split(x, y, "x, y")
    check_number(default_eps, "default_eps", low=0)
    check_number(batch_size, "batch_size", integer=True, low=1)
    check_number(seed, "seed", integer=True, low=0)
    for name, v in flags.items():
        check_flag(v, name)
    for m, what in ((model, "model"), (transfer_from, "transfer_from")):
        if m is None:
            continue
        if not isinstance(m, nn.Module):
            raise ConfigError(f"{what} must be an nn.Module, got {type(m).__name__}")
        with eval_mode(m):
            classes = check_logits(m, x, what, "x")
        if int(y.max()) >= classes:
            raise ConfigError(f"y: labels must lie in 0..{classes - 1} ({what} has {classes} outputs), got "
                              f"{int(y.min())}..{int(y.max())}")


def _evaluate_model(model: nn.Module, x: Tensor, y: Tensor, attacks: Sequence[Any], *, default_eps: float,
                    eps_by_norm: Mapping[str, float] | None, batch_size: int, seed: int,
                    transfer_from: nn.Module | None, transfer_source: str, checks: bool, check_subset: int,
                    thresholds: CheckThresholds, vulnerability: bool, per_feature: bool, warn: bool,
                    progress: bool, on_row: Callable[[dict[str, Any]], None] | None = None) -> EvaluationReport:
    run = run_attacks(model, x, y, attacks, default_eps=default_eps, eps_by_norm=eps_by_norm,
                      batch_size=batch_size, seed=seed, keep_adv=vulnerability, progress=progress,
                      desc="white-box attacks", on_row=on_row)
    rows = [dict(r) for r in run.rows]
    trun = None
    if transfer_from is not None:
        trun = run_transfer(transfer_from, model, x, y, attacks, default_eps=default_eps, eps_by_norm=eps_by_norm,
                            batch_size=batch_size, seed=seed, source_id=transfer_source, keep_adv=vulnerability,
                            progress=progress)
        moved = [dict(r) for r in trun.rows if r["attack"] != "clean"]
        rows += moved
        if on_row is not None:
            for r in moved:
                on_row(dict(r))
    report = EvaluationReport(rows=rows, curves=list(run.curves), run=run, transfer=trun,
                              transfer_source=transfer_source if transfer_from is not None else None, seed=seed)
    if vulnerability:
        report.vulnerability = _vulnerability_entries(model, x, run, "white-box", batch_size, per_feature)
        if trun is not None:
            report.vulnerability += _vulnerability_entries(model, x, trun, "transfer", batch_size, per_feature)
    if checks:
        report.checks = sanity_checks(model, x, y, rows, run=run, subset=check_subset, seed=seed,
                                      batch_size=batch_size, thresholds=thresholds, progress=progress)
        if warn:
            for c in report.failed_checks:
                warnings.warn(f"sanity check {c['name']} failed: {c['detail']}", SanityCheckWarning, stacklevel=3)
    return report
