"""Run a study in-process: a loop over the pipeline, with finished work reused from the results database.

Layout of the output folder::

    results.sqlite            the results database (single source of truth)
    checkpoints/<id>.safetensors + .json
    study.json                the validated spec that ran
    report.md, robust_vs_compression.png
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robustprune
from robustprune.checkpoint import load_checkpoint, save_checkpoint
from robustprune.data import Split, Splits, load_splits
from robustprune.errors import CheckpointError, RobustPruneError
from robustprune.methods import get_method, get_recipe, halving_schedule, iterative_prune
from robustprune.models import model_for_dataset
from robustprune.objectives import build_objective
from robustprune.study.evaluate import evaluate_attacks, size_metrics
from robustprune.study.spec import ObjectiveSpec, StudySpec, is_study_recipe
from robustprune.study.store import ResultsStore
from robustprune.train import TrainConfig, fit
from robustprune.utils import config_hash, default_device, seed_everything

Log = Callable[[str], None]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    version = robustprune.__version__
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+{sha}" if sha else version


def _train_cfg_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.model_dump()
    d.pop("progress", None)
    return d


@dataclass
class StudyOutcome:
    out_dir: Path
    db_path: Path
    models_trained: int = 0
    models_reused: int = 0
    rows_written: int = 0
    wall_time: float = 0.0
    report_files: list[Path] = field(default_factory=list)


class StudyRunner:
    """Runs every cell of a :class:`StudySpec`, skipping cells whose results are already in the database."""

    def __init__(self, spec: StudySpec, out_dir: str | Path, *, device: str | None = None, log: Log = print,
                 progress: bool | None = None, command: list[str] | None = None) -> None:
        self.spec = spec
        self.command = command
        self.out = Path(out_dir)
        self.device = default_device(device)
        self.log = log
        self.progress = progress
        self.ckpt_dir = self.out / "checkpoints"
        self.outcome = StudyOutcome(self.out, self.out / "results.sqlite")

    # ---- helpers ------------------------------------------------------------------------------------------
    def _cfg(self, cfg: TrainConfig) -> TrainConfig:
        return cfg if self.progress is None else cfg.model_copy(update={"progress": self.progress})

    def _objective(self, spec: ObjectiveSpec, splits: Splits):
        return build_objective(spec.name, **spec.kwargs(splits.spec.eps_linf))

    def _val_eps(self, spec: ObjectiveSpec, splits: Splits) -> float | None:
        if spec.name == "natural":
            return None
        return spec.eps if spec.eps is not None else splits.spec.eps_linf

    def _meta(self, splits: Splits, arch: str, extra: dict[str, Any]) -> dict[str, Any]:
        s = splits.spec
        return {"architecture": arch, "dataset": s.name, "num_classes": s.num_classes, "input_shape": list(s.shape),
                "width": self.spec.width, "mean": list(s.mean), "std": list(s.std), "code_version": code_version(),
                **extra}

    def _load(self, record: dict[str, Any]):
        path = Path(record["checkpoint"])
        if not path.is_absolute():
            path = self.out / path
        if not path.exists():
            return None  # a models row whose checkpoint is gone (deleted, or a crash before it landed): redo the cell
        try:
            return load_checkpoint(path, self.device)
        except CheckpointError as exc:
            self.log(f"  checkpoint {path.name} unreadable ({exc}); the cell is redone")
            return None

    def _finetune_split(self, train: Split, seed: int) -> Split:
        n = self.spec.finetune_limit
        if n is None or n >= len(train):
            return train
        g = torch.Generator().manual_seed(seed + 7919)
        idx = torch.randperm(len(train), generator=g)[:n].to(train.x.device)
        return Split(x=train.x[idx], y=train.y[idx])

    def _evaluate(self, store: ResultsStore, model_id: str, model: nn.Module, splits: Splits, base: dict[str, Any],
                  train_wall: float) -> None:
        test = splits.test
        n = min(self.spec.eval_n, len(test))
        rows = evaluate_attacks(
            model, test.x[:n], test.y[:n], self.spec.attacks, default_eps=splits.spec.eps_linf,
            batch_size=self.spec.eval_batch_size, seed=base["seed"],
            skip=lambda ah, es: store.has_result(model_id, ah, es),
        )
        sizes = size_metrics(model, splits.spec.shape)
        full = []
        for r in rows:
            if r["attack"] == "clean" and store.has_result(model_id, "clean", "0"):
                continue
            row = {**base, **sizes, **r, "model_id": model_id, "study": self.spec.name, "code_version": code_version(),
                   "train_wall_time": train_wall}
            row["config_hash"] = config_hash({"model": model_id, "attack": r["attack_hash"], "eps": r["eps_str"]})
            full.append(row)
        if len(full) > 0:
            store.put_results(full)
            self.outcome.rows_written += len(full)
        attacked = [r for r in full if r["attack"] != "clean"]
        summary = ", ".join(f"{r['attack']}@{r['eps_str']} {r['robust_acc']:.3f}" for r in attacked)
        self.log(f"  evaluated {base['method']} c={base['target_compression']:g}: clean {rows[0]['clean_acc']:.3f}"
                 + (f", {summary}" if summary else " (robust rows already stored)")
                 + f", sparsity {sizes['achieved_sparsity']:.3f}")

    # ---- the loop ------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "study.json").write_text(json.dumps(self.spec.model_dump(mode="json"), indent=2))
        with ResultsStore(self.outcome.db_path) as store:
            store.set_meta("spec", self.spec.model_dump(mode="json"))
            store.set_meta("command", list(self.command) if self.command is not None else list(sys.argv))
            store.set_meta("started_at", time.time())

    def _finish(self, t_start: float) -> StudyOutcome:
        self.outcome.wall_time = time.perf_counter() - t_start
        with ResultsStore(self.outcome.db_path) as store:
            store.set_meta("study_wall_time", self.outcome.wall_time)
        from robustprune.study.report import write_report

        self.outcome.report_files = write_report(self.out)
        return self.outcome

    def _splits(self, dataset: str, seed: int) -> Splits:
        seed_everything(seed)
        return load_splits(dataset, data_dir=self.spec.data_dir, val_size=self.spec.val_size, seed=seed,
                           device=self.device, train_limit=self.spec.train_limit, test_limit=self.spec.eval_n)

    def units(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int, str]]]:
        """The study's work units: one base cell per (dataset, architecture, seed), then one method chain per
        (dataset, architecture, seed, method) that needs its base. The Ray runner runs each as one task."""
        bases = [(d, a, s) for d in self.spec.datasets for s in self.spec.seeds for a in self.spec.architectures]
        chains = [(d, a, s, m) for (d, a, s) in bases for m in self.spec.methods]
        return bases, chains

    def run(self) -> StudyOutcome:
        t_start = time.perf_counter()
        self._start()
        with ResultsStore(self.outcome.db_path) as store:
            for dataset in self.spec.datasets:
                for seed in self.spec.seeds:
                    splits = self._splits(dataset, seed)
                    for arch in self.spec.architectures:
                        base_id, model, row_base = self._run_base(store, splits, arch, seed)
                        base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                        for method in self.spec.methods:
                            self._run_chain(store, splits, arch, seed, method, base_id, base_state, row_base)
        return self._finish(t_start)

    def run_unit(self, dataset: str, arch: str, seed: int, method: str | None = None) -> dict[str, int]:
        """Run one work unit (the base cell when ``method`` is None, else one method chain from the stored base
        model) and return its counts. What the Ray runner's tasks call."""
        with ResultsStore(self.outcome.db_path) as store:
            splits = self._splits(dataset, seed)
            if method is None:
                self._run_base(store, splits, arch, seed)
            else:
                base_id = config_hash(self._base_cfg(splits, arch, seed))
                rec = store.get_model(base_id)
                loaded = self._load(rec) if rec else None
                if loaded is None:
                    raise RobustPruneError(f"base model {base_id} of {dataset}/{arch}/seed {seed} is not in "
                                           f"{self.outcome.db_path}; its base task must finish first")
                base_state = {k: v.detach().clone() for k, v in loaded[0].state_dict().items()}
                row_base = {"dataset": splits.spec.name, "architecture": arch, "width": self.spec.width, "seed": seed}
                self._run_chain(store, splits, arch, seed, method, base_id, base_state, row_base)
        o = self.outcome
        return {"models_trained": o.models_trained, "models_reused": o.models_reused, "rows_written": o.rows_written}

    def _base_cfg(self, splits: Splits, arch: str, seed: int) -> dict[str, Any]:
        spec = self.spec
        return {
            "kind": "base", "dataset": splits.spec.name, "architecture": arch, "width": spec.width, "seed": seed,
            "train_limit": spec.train_limit, "val_size": spec.val_size,
            "objective": spec.base_objective.model_dump(), "train": _train_cfg_dict(spec.base_train),
        }

    def _run_base(self, store: ResultsStore, splits: Splits, arch: str,
                  seed: int) -> tuple[str, nn.Module, dict[str, Any]]:
        spec = self.spec
        base_cfg = self._base_cfg(splits, arch, seed)
        base_id = config_hash(base_cfg)
        row_base = {"dataset": splits.spec.name, "architecture": arch, "width": spec.width, "seed": seed}
        record = store.get_model(base_id)
        loaded = self._load(record) if record else None
        if loaded is not None:
            model, _, _ = loaded
            train_wall = float(record["wall_time"] or 0.0)
            self.outcome.models_reused += 1
            self.log(f"[{splits.spec.name}/{arch}/seed {seed}] base model {base_id}: reused")
        else:
            self.log(f"[{splits.spec.name}/{arch}/seed {seed}] training base model {base_id} "
                     f"({spec.base_objective.name}, {spec.base_train.epochs} epochs, {len(splits.train)} images)")
            seed_everything(seed)
            model = model_for_dataset(arch, splits.spec, width=spec.width).to(self.device)
            cfg = self._cfg(spec.base_train.model_copy(update={"seed": seed}))
            res = fit(model, self._objective(spec.base_objective, splits), splits.train, splits.val, cfg,
                      val_eps=self._val_eps(spec.base_objective, splits), augment=splits.spec.augment, desc="base")
            train_wall = res.wall_time
            ckpt = self.ckpt_dir / f"{base_id}.safetensors"
            save_checkpoint(ckpt, model, meta=self._meta(splits, arch, {"config": base_cfg, "train": res.to_dict()}))
            store.put_model({"model_id": base_id, "study": spec.name, "kind": "base", "dataset": splits.spec.name,
                             "architecture": arch, "method": "unpruned", "target_compression": 1.0, "seed": seed,
                             "checkpoint": str(ckpt.relative_to(self.out)), "metrics": res.to_dict(),
                             "config": base_cfg, "wall_time": train_wall})
            self.outcome.models_trained += 1
            last = res.history[-1] if res.history else {}
            self.log(f"  base trained in {train_wall:.0f}s (best epoch {res.best_epoch} by {res.selected_by}; "
                     + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("val_")) + ")")
        self._evaluate(store, base_id, model, splits,
                       {**row_base, "method": "unpruned", "scheme": "none", "scope": "none", "score": "none",
                        "schedule": "none", "target_compression": 1.0}, train_wall)
        return base_id, model, row_base

    def _run_chain(self, store: ResultsStore, splits: Splits, arch: str, seed: int, method: str, base_id: str,
                   base_state: dict[str, torch.Tensor], row_base: dict[str, Any]) -> None:
        spec = self.spec
        targets = [r for r in spec.compression if r > 1]
        if not targets:
            return
        seed_everything(seed)  # a chain's numbers do not depend on what ran before it (in-process, Ray, resume)
        if is_study_recipe(method):
            self._run_recipe(store, splits, arch, seed, method, base_id, base_state, row_base, targets)
            return
        pspec = get_method(method)
        ft_cfg = {"objective": spec.finetune_objective.model_dump(), "train": _train_cfg_dict(spec.finetune_train),
                  "limit": spec.finetune_limit}

        def cell_id(rate: float) -> str:
            path = (halving_schedule([r for r in targets if r <= rate]) if spec.schedule == "iterative" else [rate])
            return config_hash({"kind": "pruned", "base": base_id, "method": method, "schedule": spec.schedule,
                                "path": path, "finetune": ft_cfg})

        row = {**row_base, "method": method, "scheme": pspec.group, "scope": pspec.scope, "score": pspec.score,
               "schedule": spec.schedule}
        model = model_for_dataset(arch, splits.spec, width=spec.width).to(self.device)
        objective = self._objective(spec.finetune_objective, splits)
        ft_train = self._finetune_split(splits.train, seed)
        cfg = self._cfg(spec.finetune_train.model_copy(update={"seed": seed}))
        val_eps = self._val_eps(spec.finetune_objective, splits)
        # Resume: start after the furthest target whose model is already stored (iterative chains build on it).
        start_rate, masks, done_wall = 1.0, None, 0.0
        remaining = list(targets)
        if spec.schedule == "iterative":
            for rate in targets:
                rec = store.get_model(cell_id(rate))
                loaded = self._load(rec) if rec else None
                if loaded is None:
                    break
                m, _, mk = loaded
                cumulative = float(rec["metrics"].get("cumulative_wall_time", rec["wall_time"] or 0.0))
                self._evaluate(store, cell_id(rate), m, splits, {**row, "target_compression": rate}, cumulative)
                self.outcome.models_reused += 1
                model.load_state_dict(m.state_dict())
                start_rate, masks, done_wall = rate, mk, cumulative
                remaining.remove(rate)
        if start_rate == 1.0:
            model.load_state_dict(base_state)
        jobs = [remaining] if spec.schedule == "iterative" else [[r] for r in remaining]
        for job in jobs:
            if not job:
                continue
            if spec.schedule == "one-shot":
                rec = store.get_model(cell_id(job[0]))
                loaded = self._load(rec) if rec else None
                if loaded is not None:
                    self._evaluate(store, cell_id(job[0]), loaded[0], splits, {**row, "target_compression": job[0]},
                                   float(rec["metrics"].get("cumulative_wall_time", rec["wall_time"] or 0.0)))
                    self.outcome.models_reused += 1
                    continue
                model.load_state_dict(base_state)
                masks, done_wall = None, 0.0
            self.log(f"[{splits.spec.name}/{arch}/seed {seed}] {method}: pruning to c={', '.join(f'{r:g}' for r in job)}"
                     f" from c={start_rate:g}")
            wall = done_wall  # cumulative time of the chain up to this model (what it cost to make it)
            since_last = 0.0  # time since the previous stored model (what this cell itself cost)
            for step in iterative_prune(model, pspec, job, objective=objective, train=ft_train, val=splits.val,
                                        cfg=cfg, val_eps=val_eps, augment=splits.spec.augment, masks=masks,
                                        start_rate=start_rate if spec.schedule == "iterative" else 1.0,
                                        schedule=spec.schedule, seed=seed):
                wall += step.wall_time
                since_last += step.wall_time
                masks = step.masks
                if not step.is_target:
                    continue
                cid = cell_id(step.rate)
                ckpt = self.ckpt_dir / f"{cid}.safetensors"
                meta = self._meta(splits, arch, {"config": {"base": base_id, "method": method, "rate": step.rate,
                                                            "schedule": spec.schedule, "finetune": ft_cfg},
                                                 "finetune_history": step.history})
                save_checkpoint(ckpt, model, meta=meta, masks=step.masks)
                store.put_model({"model_id": cid, "study": spec.name, "kind": "pruned", "parent_id": base_id,
                                 "dataset": splits.spec.name, "architecture": arch, "method": method,
                                 "target_compression": step.rate, "seed": seed,
                                 "checkpoint": str(ckpt.relative_to(self.out)),
                                 "metrics": {"history": step.history, "cumulative_wall_time": wall},
                                 "config": {"base": base_id, "method": method, "finetune": ft_cfg},
                                 "wall_time": since_last})
                since_last = 0.0
                self.outcome.models_trained += 1
                self._evaluate(store, cid, model, splits, {**row, "target_compression": step.rate}, wall)


    def _run_recipe(self, store: ResultsStore, splits: Splits, arch: str, seed: int, method: str, base_id: str,
                    base_state: dict[str, torch.Tensor], row_base: dict[str, Any], targets: list[float]) -> None:
        """ADMM recipes (AdvPrune ``admm-*``, PwoA ``pwoa-*``): each rate pruned from the base model."""
        spec, rs = self.spec, self.spec.recipe
        recipe = get_recipe(method)
        eps = spec.finetune_objective.eps if spec.finetune_objective.eps is not None else splits.spec.eps_linf
        admm_cfg = self._cfg(rs.admm_train.model_copy(update={"seed": seed}))
        retrain_cfg = self._cfg(spec.finetune_train.model_copy(update={"seed": seed}))
        rcfg = {"recipe": rs.model_dump(mode="json"), "retrain": _train_cfg_dict(spec.finetune_train),
                "limit": spec.finetune_limit, "eps": eps}
        rcfg["recipe"]["admm_train"].pop("progress", None)
        row = {**row_base, "method": method, "scheme": recipe.scheme, "scope": "local", "score": "admm",
               "schedule": "one-shot"}
        ft_train = self._finetune_split(splits.train, seed)
        admm_kw = dict(rho=rs.rho, rho_factor=rs.rho_factor, rho_max=rs.rho_max, update_every=rs.update_every,
                       update_unit=rs.update_unit, augment=splits.spec.augment)
        for rate in targets:
            cid = config_hash({"kind": "recipe", "base": base_id, "method": method, "rate": rate, "cfg": rcfg})
            rec = store.get_model(cid)
            loaded = self._load(rec) if rec else None
            if loaded is not None:
                self._evaluate(store, cid, loaded[0], splits, {**row, "target_compression": rate},
                               float(rec["wall_time"] or 0.0))
                self.outcome.models_reused += 1
                continue
            self.log(f"[{splits.spec.name}/{arch}/seed {seed}] {method}: ADMM pruning to c={rate:g} from the base model")
            model = model_for_dataset(arch, splits.spec, width=spec.width).to(self.device)
            model.load_state_dict(base_state)
            seed_everything(seed)
            if recipe.family == "pwoa":
                teacher = model_for_dataset(arch, splits.spec, width=spec.width).to(self.device)
                teacher.load_state_dict(base_state)
                result = recipe.run(model, teacher=teacher, train=ft_train, val=splits.val, rate=rate,
                                    dataset=splits.spec.name, admm_cfg=admm_cfg, retrain_cfg=retrain_cfg,
                                    tau=rs.tau, use_hbar=rs.use_hbar, mix_ratio=rs.mix_ratio, eps=eps,
                                    pgd_steps=rs.pgd_steps, ce_weight=rs.ce_weight, val_eps=eps, **admm_kw)
            else:
                result = recipe.run(model, eps=eps, steps=rs.pgd_steps, train=ft_train, val=splits.val, rate=rate,
                                    admm_cfg=admm_cfg, retrain_cfg=retrain_cfg, val_eps=eps, **admm_kw)
            wall = float(result.times.get("total", 0.0))
            ckpt = self.ckpt_dir / f"{cid}.safetensors"
            summary = result.to_dict()
            meta = self._meta(splits, arch, {"config": {"base": base_id, "method": method, "rate": rate, **rcfg},
                                             "recipe_result": summary})
            save_checkpoint(ckpt, model, meta=meta, masks=result.masks)
            store.put_model({"model_id": cid, "study": spec.name, "kind": "pruned", "parent_id": base_id,
                             "dataset": splits.spec.name, "architecture": arch, "method": method,
                             "target_compression": rate, "seed": seed, "checkpoint": str(ckpt.relative_to(self.out)),
                             "metrics": {"times": result.times, "cumulative_wall_time": wall},
                             "config": {"base": base_id, "method": method, **rcfg}, "wall_time": wall})
            self.outcome.models_trained += 1
            self._evaluate(store, cid, model, splits, {**row, "target_compression": rate}, wall)


def run_study(spec: StudySpec, out_dir: str | Path, *, device: str | None = None, log: Log = print,
              progress: bool | None = None, command: list[str] | None = None) -> StudyOutcome:
    """Run (or finish) the study ``spec`` into ``out_dir``; see :class:`StudyRunner`. ``command`` (default
    ``sys.argv``) is stored in the database's meta table and shown in the report."""
    return StudyRunner(spec, out_dir, device=device, log=log, progress=progress, command=command).run()
