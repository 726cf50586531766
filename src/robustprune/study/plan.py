"""A study's plan before anything runs (``robustprune study FILE --plan``): the grid cell by cell (methods, their
groups, sparsities and rates), the attacks, the training budget in epochs, and -- when the study file states a
measured throughput (its ``cost`` key) -- the estimated time. Reads no data file and trains nothing.

Training budget: the base model's epochs over its training images, plus, per pruned model, the epochs of every
training phase of its method's settings (a phase without its own ``epochs`` takes the study's ``prune_epochs``);
an iterative chain (e.g. magnitude pruning that halves the remaining weights per step) costs its phases once per
step of the chain to the highest rate. That is an upper bound for methods that may stop a phase early (e.g. Robust
Bird's early-bird search). Every epoch is counted at the measured speed of ``cost.train_epoch_s`` per
``cost.epoch_images`` images (an upper bound for lighter phases, e.g. natural training or a distillation phase
without adversarial examples); evaluation at ``cost.eval_model_s`` per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from robustprune.rates import sparsity_percent
from robustprune.study.spec import StudySpec, method_of, split_architecture


@dataclass
class MethodPlan:
    name: str
    group: str
    rate_kind: str
    rates: list[float | None]
    epochs_per_base: float
    """Training epochs (over the pruning split) of all of this method's models on one base model."""


@dataclass
class StudyPlan:
    spec: StudySpec
    base_models: int
    pruned_models: int
    rows: int
    methods: list[MethodPlan]
    images: dict[str, dict[str, int | None]] = field(default_factory=dict)
    """Per dataset: ``train`` (images the base model trains on), ``prune`` (what the pruning phases see), ``test``
    (points evaluated); None where the dataset's size is unknown before its files are read."""
    image_epochs: float | None = None
    """Training images processed in all (base + pruning), None when a dataset's size is unknown."""
    base_image_epochs: float | None = None

    @property
    def models(self) -> int:
        return self.base_models + self.pruned_models

    works: list[Any] = field(default_factory=list)
    """Every work unit with its phases in passes (:func:`robustprune.study.eta.study_work`: the cost model the
    running study's time estimate uses too)."""
    rates: dict[str, float] | None = None
    """Seconds per training / evaluation pass from the study's ``cost`` key (None without it, or with a dataset of
    unknown size)."""

    def cost_seconds(self) -> dict[str, float] | None:
        """``{"train", "eval", "total"}`` seconds of the whole grid on one worker, from the study's ``cost`` (None
        without it, or with a dataset of unknown size)."""
        if self.rates is None:
            return None
        train = sum(ph.passes * self.rates["train"] for w in self.works for ph in w.phases if ph.kind == "train")
        ev = sum(ph.passes * self.rates["eval"] for w in self.works for ph in w.phases if ph.kind == "eval")
        return {"train": train, "eval": ev, "total": train + ev}

    def schedule(self, workers: int):
        """The grid on ``workers`` workers (:func:`robustprune.study.eta.schedule`); None without rates."""
        from robustprune.study.eta import schedule

        return None if self.rates is None else schedule(self.works, self.rates, workers)


def _phase_epochs(settings: Any, default: float) -> float:
    """Sum of the epochs of every training phase (a ``PhaseSettings``) in a method's settings, nested ones too;
    ``epochs`` None is ``default``."""
    from robustprune.methods.interface import PhaseSettings

    total = 0.0
    if isinstance(settings, PhaseSettings):
        return float(default if settings.epochs is None else settings.epochs)
    if isinstance(settings, BaseModel):
        for name in type(settings).model_fields:
            total += _phase_epochs(getattr(settings, name), default)
    return total


def method_plan(spec: StudySpec, name: str) -> MethodPlan:
    """The cells of one method of ``spec`` on one base model, and their training epochs."""
    from robustprune.methods import get_method

    m = get_method(method_of(name))
    settings = m.settings(spec.method_settings.get(name, {}))
    rates = spec.rates_for(name)
    per_step = _phase_epochs(settings, float(spec.prune_epochs))
    set_rates = [r for r in rates if r is not None]
    if m.incremental(settings) and set_rates:
        steps = len(m.rate_path(sorted(set_rates), settings))
    else:
        steps = len(rates)
    return MethodPlan(name=name, group=m.group, rate_kind=m.rate_kind, rates=rates, epochs_per_base=per_step * steps)


def study_plan(spec: StudySpec) -> StudyPlan:
    """The plan of ``spec`` (see the module docstring)."""
    from robustprune.data import get_spec
    from robustprune.study.runner import StudyRunner

    runner = StudyRunner(spec, "/nonexistent-plan-only")
    counts = runner.plan()
    method_settings = runner.method_settings()  # every method's settings, validated as the run validates them
    methods = [method_plan(spec, m) for m in spec.methods]
    images: dict[str, dict[str, int | None]] = {}
    image_epochs: float | None = 0.0
    base_image_epochs: float | None = 0.0
    per_dataset = len(spec.architectures) * len(spec.seeds)
    for d in spec.datasets:
        ds = get_spec(d)
        if ds.sizes is None:
            images[d] = {"train": None, "prune": None, "test": None}
            image_epochs = base_image_epochs = None
            continue
        n_train = max(0, ds.sizes[0] - spec.val_size)
        if spec.train_limit is not None:
            n_train = min(n_train, spec.train_limit)
        n_prune = n_train if spec.finetune_limit is None else min(n_train, spec.finetune_limit)
        images[d] = {"train": n_train, "prune": n_prune, "test": min(spec.eval_n, ds.sizes[1])}
        for m, settings in method_settings:  # what the run refuses before any work (a phase of 0 steps, Flying
            m.check_budget(settings, epochs=spec.prune_epochs, n_train=n_prune)  # Bird with no topology update)
        if image_epochs is not None and base_image_epochs is not None:
            base = per_dataset * spec.base_train.epochs * n_train
            base_image_epochs += base
            image_epochs += base + per_dataset * sum(mp.epochs_per_base for mp in methods) * n_prune
    plan = StudyPlan(spec=spec, base_models=counts["base_models"], pruned_models=counts["pruned_models"],
                     rows=counts["rows"], methods=methods, images=images, image_epochs=image_epochs,
                     base_image_epochs=base_image_epochs)
    if image_epochs is not None:
        from robustprune.study.eta import rates_from_cost, study_work

        runner = StudyRunner(spec, "/nonexistent-plan-only")
        sizes = {get_spec(d).name: (n["train"], spec.val_size, n["test"]) for d, n in images.items()}
        plan.works = study_work(runner, sizes)
        plan.rates = rates_from_cost(runner, sizes)
    return plan


def _epochs_text(epochs: float) -> str:
    """``"22 epochs"`` / ``"0.012 epochs"``: never rounded to 0 when something trains."""
    if epochs >= 10 or epochs == 0:
        return f"{epochs:,.0f} epochs"
    return f"{epochs:.2g} epoch{'' if epochs == 1 else 's'}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _attack_text(a: Any) -> str:
    from robustprune.evaluation.attack_info import info_for_spec
    from robustprune.utils import eps_to_str

    info = info_for_spec(a)
    settings = {k: v for k, v in a.settings().items() if k not in ("name", "eps") and v is not None}
    extra = ", ".join(f"{k}={v}" for k, v in settings.items())
    budgets = ", ".join(eps_to_str(e) for e in a.eps) or "the dataset's eps"
    kind = " (minimal norm: one run, a row at every eps and a security curve)" if info.min_norm else ""
    return f"{a.name}" + (f" [{extra}]" if extra else "") + f" at eps {budgets}{kind}"


def plan_lines(spec: StudySpec, workers: int | None = None) -> list[str]:
    """The plan as printed by ``robustprune study FILE --plan [--workers N]``."""
    p = study_plan(spec)
    archs = ", ".join(f"{n}" + (f" (width {w:g})" if w != 1 else "") for n, w in
                      (split_architecture(a, spec.width) for a in spec.architectures))
    lines = [f"plan of study {spec.name!r}: {len(spec.datasets)} dataset(s) x {len(spec.architectures)} "
             f"architecture(s) x {len(spec.seeds)} seed(s) = {p.base_models} base model(s); {p.pruned_models} "
             f"pruned model(s); {p.models} models, {p.rows} result rows",
             f"  datasets: {', '.join(spec.datasets)}; architectures: {archs}; seeds: "
             f"{', '.join(map(str, spec.seeds))}"]
    for d, n in p.images.items():
        if n["train"] is None:
            lines.append(f"  {d}: size unknown before its files are read (the cost is not estimated)")
        else:
            lines.append(f"  {d}: base training on {n['train']:,} images ({spec.val_size:,} carved out for "
                         f"validation), pruning phases on {n['prune']:,}, evaluation on {n['test']:,} test points")
    obj = spec.base_objective
    obj_text = obj.name + "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}"
                                  for k, v in obj.record().items() if k != "name" and v is not None)
    bt = spec.base_train
    lines.append(f"  base model: {obj_text}; {bt.epochs} epochs, {bt.optimizer} lr {bt.lr:g}, batch "
                 f"{bt.batch_size}, {bt.schedule}; precision {spec.precision}")
    table = [("method", "group", "sparsity (%)", "rate c", "epochs per base model")]
    for mp in p.methods:
        if mp.rate_kind == "learned":
            sp, cs = "learned", "learned"
        else:
            sp = " ".join(sparsity_percent(r) for r in mp.rates) or "-"
            cs = " ".join(f"{r:g}" for r in mp.rates if r is not None) or "-"
        table.append((mp.name, mp.group, sp, cs, f"{mp.epochs_per_base:g}"))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    lines.append("  attacks: " + "; ".join(_attack_text(a) for a in spec.attacks)
                 + (f"; transferred from the base model: {', '.join(a.name for a in spec.transferred_attacks())}"
                    if spec.transfer and spec.transferred_attacks() else ""))
    if p.image_epochs is not None:
        ref = spec.cost.epoch_images if spec.cost is not None else 50_000
        base = p.base_image_epochs or 0.0
        lines.append(f"  training: {p.image_epochs:,.0f} training images processed in all (base {base:,.0f}, "
                     f"pruning {p.image_epochs - base:,.0f}) = {_epochs_text(p.image_epochs / ref)} of {ref:,} images; "
                     "every phase of every method's settings, an upper bound for phases that stop early")
    cost = p.cost_seconds()
    if cost is not None:
        c = spec.cost
        lines.append(f"  estimated cost: training {_hours(cost['train'])} (every phase's forward + backward passes "
                     f"at the speed of {c.train_epoch_s:g} s per {c.epoch_images:,}-image epoch of the base objective)"
                     f" + evaluation {_hours(cost['eval'])} ({p.models} models' attack passes at {c.eval_model_s:g} s "
                     f"per base model) = {_hours(cost['total'])} on one worker"
                     + (f"; basis: {c.basis}" if c.basis else ""))
        one = p.schedule(1)
        crit = " then ".join("base model" if u.method is None else u.method for u in one.critical_units)
        lines.append(f"  critical path: {_hours(one.critical)} ({crit} of {one.critical_units[0].label().rsplit('/', 1)[0]}"
                     "): no number of workers finishes sooner")
        for n in sorted({1, workers or 1}):
            sch = p.schedule(n)
            lines.append(f"  wall time on {n} worker(s) (one GPU or CPU per task, `--ray-address`): "
                         f"{_hours(sch.wall)} ({sch.serial / sch.wall / n:.0%} of the workers busy)")
    elif spec.cost is None:
        lines.append("  estimated cost: not stated (give the study a `cost:` key with the measured train_epoch_s "
                     "and eval_model_s)")
    if spec.leaderboard:
        lines.append(f"  leaderboard: {spec.leaderboard} (the report sets the published numbers beside these)")
    return lines
