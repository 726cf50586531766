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
from robustprune.study.spec import LEARNED_RATE, ObjectiveSpec, StudySpec, is_learned_rate_recipe, is_study_recipe
from robustprune.study.store import ResultsStore
from robustprune.sparsity import MaskSet
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

    def _vuln_key(self, splits: Splits) -> tuple[Any, str, float] | None:
        """(attack spec, attack hash, ε) whose examples the vulnerability is measured on: the first L∞ budget
        attack, at the dataset's ε when it is one of its budgets, else at its middle budget."""
        from robustprune.evaluation.attack_info import attack_kwargs, info_for_spec, spec_name
        from robustprune.evaluation.run import _settings, budgets_for

        for a in self.spec.attacks:
            info = info_for_spec(a)
            if info.min_norm or info.norm != "Linf":
                continue
            budgets = sorted(budgets_for(a, info, splits.spec.eps_linf, None))
            eps = splits.spec.eps_linf if any(abs(b - splits.spec.eps_linf) < 1e-12 for b in budgets) \
                else budgets[len(budgets) // 2]
            return a, config_hash(_settings(attack_kwargs(info, a, eps), spec_name(a))), float(eps)
        return None

    def _transfer_examples(self, base_id: str, base_state: dict[str, torch.Tensor], splits: Splits, arch: str,
                           seed: int):
        """Every budget attack's examples crafted once on the unpruned base model (cached per base model)."""
        from robustprune.evaluation.transfer import craft_transfer
        from robustprune.utils import eps_to_str

        cache = self.__dict__.setdefault("_transfer_cache", {})
        if base_id not in cache:
            source = model_for_dataset(arch, splits.spec, width=self.spec.width).to(self.device)
            source.load_state_dict(base_state)
            test = splits.test
            n = min(self.spec.eval_n, len(test))
            vkey = self._vuln_key(splits) if self.spec.vulnerability else None
            v_es = eps_to_str(vkey[2]) if vkey else None
            keep = (lambda ah, es: es == v_es) if vkey else False  # x_keep only where vulnerability is measured
            t0 = time.perf_counter()
            cache[base_id] = craft_transfer(source, test.x[:n], test.y[:n], self.spec.attacks,
                                            default_eps=splits.spec.eps_linf, batch_size=self.spec.eval_batch_size,
                                            seed=seed, source_id=base_id, keep_adv=keep)
            self.log(f"  transfer examples crafted on the base model {base_id} in {time.perf_counter() - t0:.0f}s")
        return cache[base_id]

    def _transfer_done(self, store: ResultsStore, model_id: str, splits: Splits, want_black: bool) -> bool:
        """Every transfer row (and the black-box vulnerability) of this model is stored: nothing to craft."""
        from robustprune.evaluation.attack_info import info_for_spec
        from robustprune.evaluation.run import budgets_for
        from robustprune.evaluation.transfer import TRANSFER_PREFIX

        expected = sum(len(budgets_for(a, info_for_spec(a), splits.spec.eps_linf, None)) for a in self.spec.attacks)
        have = len(store.results("model_id = ? AND attack LIKE ?", (model_id, TRANSFER_PREFIX + "%")))
        if have < expected:
            return False
        return not want_black or store.has_vulnerability(model_id, "black")

    def _evaluate(self, store: ResultsStore, model_id: str, model: nn.Module, splits: Splits, base: dict[str, Any],
                  train_wall: float, source: tuple[str, dict[str, torch.Tensor]] | None = None) -> None:
        """Clean and white-box rows of every attack; with ``source`` = (base id, base state) and ``transfer``,
        black-box rows from the base model; vulnerability (white / black); the row-based sanity checks."""
        from robustprune.evaluation.checks import check_input_gradients, check_monotone, check_transfer
        from robustprune.evaluation.run import run_attacks
        from robustprune.evaluation.transfer import TRANSFER_PREFIX, apply_transfer
        from robustprune.metrics.vulnerability import latent_vulnerability
        from robustprune.utils import eps_to_str

        spec = self.spec
        test = splits.test
        n = min(spec.eval_n, len(test))
        x, y = test.x[:n], test.y[:n]
        vkey = self._vuln_key(splits) if spec.vulnerability else None
        v_hash, v_es = (vkey[1], eps_to_str(vkey[2])) if vkey else ("", "")
        need_white = vkey is not None and not store.has_vulnerability(model_id, "white", v_hash, v_es)
        run = run_attacks(
            model, x, y, spec.attacks, default_eps=splits.spec.eps_linf, batch_size=spec.eval_batch_size,
            seed=base["seed"], keep_adv=lambda ah, es: need_white and (ah, es) == (v_hash, v_es),
            skip=lambda ah, es: store.has_result(model_id, ah, es) and not (need_white and (ah, es) == (v_hash, v_es)),
        )
        rows = list(run.rows)
        if need_white and (v_hash, v_es) in run.adv:
            v = latent_vulnerability(model, x, run.adv[(v_hash, v_es)], batch_size=spec.eval_batch_size)
            store.put_vulnerability(model_id, "white", v_hash, v_es, network=v.network, layers=v.layers,
                                    features={k: t.tolist() for k, t in v.features.items()}, n_points=v.n)
        if source is not None and spec.transfer and not self._transfer_done(store, model_id, splits, vkey is not None):
            examples = self._transfer_examples(source[0], source[1], splits, base["architecture"], base["seed"])
            t_hash = next((it[4] for it in examples.items if vkey and it[0] == TRANSFER_PREFIX + vkey[0].name
                           and eps_to_str(it[2]) == v_es and config_hash({k: v for k, v in it[3].items()
                                                                         if k != "transfer_from"}) == v_hash), None)
            need_black = t_hash is not None and not store.has_vulnerability(model_id, "black", t_hash, v_es)
            trun = apply_transfer(model, x, y, examples, batch_size=spec.eval_batch_size, keep_adv=need_black,
                                  source_time=False)  # crafted once per base model, logged there
            rows += trun.rows[1:]
            if need_black and (t_hash, v_es) in trun.adv:
                v = latent_vulnerability(model, x, trun.adv[(t_hash, v_es)], batch_size=spec.eval_batch_size)
                store.put_vulnerability(model_id, "black", t_hash, v_es, network=v.network, layers=v.layers,
                                        features={k: t.tolist() for k, t in v.features.items()}, n_points=v.n)
        sizes = size_metrics(model, splits.spec.shape)
        full = []
        for r in rows:
            if store.has_result(model_id, r["attack_hash"], r["eps_str"]):
                continue  # already stored (a resumed cell, or a budget re-attacked only for its examples)
            row = {**base, **sizes, **r, "model_id": model_id, "study": spec.name, "code_version": code_version(),
                   "train_wall_time": train_wall}
            row["config_hash"] = config_hash({"model": model_id, "attack": r["attack_hash"], "eps": r["eps_str"]})
            full.append(row)
        if len(full) > 0:
            store.put_results(full)
            self.outcome.rows_written += len(full)
            # sanity checks from the rows (cheap): eps monotone, white-box <= transfer, non-zero input gradients
            stored = store.results("model_id = ?", (model_id,))
            checks = check_monotone(stored) + check_transfer(stored)
            checks.append(check_input_gradients(model, x[:256], y[:256], batch_size=spec.eval_batch_size))
            store.put_checks(model_id, checks, evaluation_id="study", code_version=code_version())
        attacked = [r for r in full if r["attack"] != "clean"]
        summary = ", ".join(f"{r['attack']}@{r['eps_str']} {r['robust_acc']:.3f}" for r in attacked)
        rate = base["target_compression"]
        self.log(f"  evaluated {base['method']} c={'learned' if rate == 0 else f'{rate:g}'}: "
                 f"clean {rows[0]['clean_acc']:.3f}" + (f", {summary}" if summary else " (robust rows already stored)")
                 + f", sparsity {sizes['achieved_sparsity']:.3f}")

    # ---- the loop ------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "study.json").write_text(json.dumps(self.spec.model_dump(mode="json"), indent=2))
        with ResultsStore(self.outcome.db_path) as store:
            store.set_meta("spec", self.spec.model_dump(mode="json"))
            store.set_meta("command", list(self.command) if self.command is not None else list(sys.argv))
            store.set_meta("started_at", time.time())
            done = len(store.results())
        plan = self.plan()
        self.log(f"study {self.spec.name}: {plan['models']} models ({plan['base_models']} base), {plan['rows']} result "
                 f"rows; {done} rows already in {self.outcome.db_path}")

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

    def plan(self) -> dict[str, int]:
        """The grid's size before anything runs: base models (one per dataset/architecture/seed), pruned models
        (per base: one per method and target rate; one per Bayesian recipe, whose rate is learned), and result rows
        (per model: clean + every attack budget; per pruned model also one transfer row per budget)."""
        from robustprune.data import get_spec
        from robustprune.evaluation.attack_info import info_for_spec
        from robustprune.evaluation.run import budgets_for

        spec = self.spec
        per_base = 0
        for m in spec.methods:
            if is_learned_rate_recipe(m):
                per_base += 1
            elif is_study_recipe(m):
                per_base += len(spec.recipe_rates())
            else:
                per_base += len([r for r in spec.compression if r > 1])
        bases = pruned = rows = 0
        for d in spec.datasets:
            eps = get_spec(d).eps_linf
            budgets = sum(len(budgets_for(a, info_for_spec(a), eps, None)) for a in spec.attacks)
            n = len(spec.architectures) * len(spec.seeds)
            bases += n
            pruned += n * per_base
            rows += n * (1 + budgets) + n * per_base * (1 + budgets * (2 if spec.transfer else 1))
        return {"base_models": bases, "pruned_models": pruned, "models": bases + pruned, "rows": rows}

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
        seed_everything(seed)  # a chain's numbers do not depend on what ran before it (in-process, Ray, resume)
        if is_learned_rate_recipe(method):
            self._run_bayesian(store, splits, arch, seed, method, base_id, base_state, row_base)
            return
        if is_study_recipe(method):
            rates = spec.recipe_rates()
            if rates:
                self._run_recipe(store, splits, arch, seed, method, base_id, base_state, row_base, rates)
            return
        targets = [r for r in spec.compression if r > 1]
        if not targets:
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
                self._evaluate(store, cell_id(rate), m, splits, {**row, "target_compression": rate}, cumulative,
                               source=(base_id, base_state))
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
                                   float(rec["metrics"].get("cumulative_wall_time", rec["wall_time"] or 0.0)),
                                   source=(base_id, base_state))
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
                self._evaluate(store, cid, model, splits, {**row, "target_compression": step.rate}, wall,
                               source=(base_id, base_state))


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
        update_every = rs.update_every
        if update_every == "auto":
            from robustprune.methods import auto_update_every

            steps = -(-len(ft_train) // rs.admm_train.batch_size)
            if rs.admm_train.max_steps_per_epoch is not None:
                steps = min(steps, rs.admm_train.max_steps_per_epoch)
            total = rs.admm_train.epochs * (steps if rs.update_unit == "step" else 1)
            update_every = auto_update_every(rs.rho, rs.rho_factor, rs.rho_max, total)
        admm_kw = dict(rho=rs.rho, rho_factor=rs.rho_factor, rho_max=rs.rho_max, update_every=update_every,
                       update_unit=rs.update_unit, augment=splits.spec.augment)
        for rate in targets:
            cid = config_hash({"kind": "recipe", "base": base_id, "method": method, "rate": rate, "cfg": rcfg})
            rec = store.get_model(cid)
            loaded = self._load(rec) if rec else None
            if loaded is not None:
                self._evaluate(store, cid, loaded[0], splits, {**row, "target_compression": rate},
                               float(rec["wall_time"] or 0.0), source=(base_id, base_state))
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
            self._evaluate(store, cid, model, splits, {**row, "target_compression": rate}, wall,
                           source=(base_id, base_state))


    def _run_bayesian(self, store: ResultsStore, splits: Splits, arch: str, seed: int, method: str, base_id: str,
                      base_state: dict[str, torch.Tensor], row_base: dict[str, Any]) -> None:
        """Seed 000 recipes (ANP, ANP-VS, BP, PAT, VIB): gates inserted into the base model, weights and masks
        trained with ``recipe.bayes_train``; the test-time masks are folded into a plain checkpoint of the same
        architecture (pruned units exactly zero, masks stored). The rate is learned: ``target_compression`` 0."""
        from robustprune.methods import fold_gates

        spec, rs = self.spec, self.spec.recipe
        recipe = get_recipe(method)
        kind = getattr(recipe.fn, "keywords", {}).get("method", "")
        eps = spec.finetune_objective.eps if spec.finetune_objective.eps is not None else splits.spec.eps_linf
        bcfg = {"train": _train_cfg_dict(rs.bayes_train), "gamma": rs.gamma, "beta": rs.beta,
                "vs_lambda": rs.vs_lambda if kind == "anp-vs" else None,
                "gate_init": rs.gate_init if method.endswith("-bbd") else None, "pgd_steps": rs.pgd_steps,
                "mask_lr_factor": rs.mask_lr_factor,
                "limit": spec.finetune_limit, "eps": eps}
        cid = config_hash({"kind": "bayesian", "base": base_id, "method": method, "cfg": bcfg})
        row = {**row_base, "method": method, "scheme": "filter", "scope": "learned", "score": "bayesian",
               "schedule": "one-shot", "target_compression": LEARNED_RATE}
        rec = store.get_model(cid)
        loaded = self._load(rec) if rec else None
        if loaded is not None:
            self._evaluate(store, cid, loaded[0], splits, row, float(rec["wall_time"] or 0.0),
                           source=(base_id, base_state))
            self.outcome.models_reused += 1
            return
        self.log(f"[{splits.spec.name}/{arch}/seed {seed}] {method}: learning unit masks on the base model "
                 f"({rs.bayes_train.epochs} epoch(s), gamma {rs.gamma:g})")
        model = model_for_dataset(arch, splits.spec, width=spec.width).to(self.device)
        model.load_state_dict(base_state)
        seed_everything(seed)
        kw: dict[str, Any] = dict(train=self._finetune_split(splits.train, seed), val=splits.val,
                                  cfg=self._cfg(rs.bayes_train.model_copy(update={"seed": seed})), eps=eps,
                                  gamma=rs.gamma, beta=rs.beta, steps=rs.pgd_steps, val_eps=eps,
                                  augment=splits.spec.augment, mask_lr_factor=rs.mask_lr_factor)
        if bcfg["vs_lambda"] is not None:
            kw["lam"] = bcfg["vs_lambda"]
        if bcfg["gate_init"] is not None:
            kw["gate_kwargs"] = {"a_uc_init": bcfg["gate_init"]}
        t0 = time.perf_counter()
        result = recipe.run(model, **kw)
        folded, fmasks = fold_gates(model, example=splits.train.x[:2])
        masks = MaskSet(fmasks)
        wall = time.perf_counter() - t0
        ckpt = self.ckpt_dir / f"{cid}.safetensors"
        summary = {"units": result.units, "unit_sparsity": result.unit_sparsity, "kl_scale": result.kl_scale,
                   "phases": {k: v.to_dict() for k, v in result.phases.items()}}
        save_checkpoint(ckpt, folded, meta=self._meta(splits, arch, {"config": {"base": base_id, "method": method,
                                                                               **bcfg}, "recipe_result": summary}),
                        masks=masks)
        store.put_model({"model_id": cid, "study": spec.name, "kind": "pruned", "parent_id": base_id,
                         "dataset": splits.spec.name, "architecture": arch, "method": method,
                         "target_compression": LEARNED_RATE, "seed": seed,
                         "checkpoint": str(ckpt.relative_to(self.out)),
                         "metrics": {"units": result.units, "unit_sparsity": result.unit_sparsity,
                                     "cumulative_wall_time": wall},
                         "config": {"base": base_id, "method": method, **bcfg}, "wall_time": wall})
        self.outcome.models_trained += 1
        self.log(f"  {method}: units kept {result.units_string()} of {result.units_string(dense=True)} "
                 f"(unit sparsity {result.unit_sparsity:.2f}) in {wall:.0f}s")
        self._evaluate(store, cid, folded, splits, row, wall, source=(base_id, base_state))


def run_study(spec: StudySpec, out_dir: str | Path, *, device: str | None = None, log: Log = print,
              progress: bool | None = None, command: list[str] | None = None) -> StudyOutcome:
    """Run (or finish) the study ``spec`` into ``out_dir``; see :class:`StudyRunner`. ``command`` (default
    ``sys.argv``) is stored in the database's meta table and shown in the report."""
    return StudyRunner(spec, out_dir, device=device, log=log, progress=progress, command=command).run()
