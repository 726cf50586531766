"""Run a study in-process: one generic loop over (dataset, seed, architecture, method, rate), with finished work
reused from the results database. Methods are reached only through :class:`robustprune.methods.PruningMethod`:
adding a method never means editing this file.

Layout of the output folder::

    results.sqlite            the results database (single source of truth)
    checkpoints/<id>.safetensors + .json
    study.json                the validated spec that ran
    report.html, report.md, robust_vs_compression.png
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
from robustprune.data import DatasetSpec, Split, Splits, get_spec, load_splits
from robustprune.errors import CheckpointError, ConfigError, DivergenceError, RobustPruneError
from robustprune.methods import PruneResult, PruneTask, PruningMethod, get_method
from robustprune.methods.interface import FLAG_TEXT, result_flags
from robustprune.models import model_for_dataset
from robustprune.objectives import build_objective
from robustprune.precision import effective_precision
from robustprune.provenance import code_version, file_sha256
from robustprune.study.eta import StudyClock
from robustprune.study.layouts import measure_layouts
from robustprune.study.outcome import StudyOutcome, cell_label, one_line, rate_text
from robustprune.study.model_eval import ModelEvaluator
from robustprune.study.spec import ObjectiveSpec, StudySpec, method_of, split_architecture
from robustprune.study.storage import StorageLocation
from robustprune.study.store import STATUS_DONE, STATUS_FAILED, ResultsStore
from robustprune.study.unit import (
    JournalStore,
    Unit,
    UnitOutput,
    commit,
    new_scratch,
    publish,
    remove_scratch,
    remove_stale_scratch,
)
from robustprune.train import TrainConfig, fit
from robustprune.utils import config_hash, default_device, seed_everything

Log = Callable[[str], None]


def _train_cfg_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A training config as hashed into a model's identity: without ``progress``, and without the precision
    fields at their defaults (fp32, no compile, default layout), so models made before they existed keep their
    ids and are reused."""
    d = cfg.model_dump()
    d.pop("progress", None)
    for key, default in (("precision", "fp32"), ("compile", False)):
        if key in d and d[key] == default:
            d.pop(key)
    d.pop("channels_last", None)  # a memory layout: only the speed depends on it
    return d


@contextlib.contextmanager
def cell_lock(folder: Path, key: str):
    """An exclusive lock on one cell (a base model, or one method's cells on one base model) of a study folder, so
    two studies run into the same folder never make the same model twice: the second waits, then reuses."""
    lock_dir = folder / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{key}.lock", "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no POSIX locks here (Windows, some network file systems): run unlocked
            pass
        yield


def _without_seed(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k != "seed"}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k != "seed"}
    return out


@dataclass
class _DatasetOnly:
    """What :meth:`StudyRunner._objective` reads of a ``Splits`` (its dataset spec), before the data is loaded."""

    spec: DatasetSpec


@dataclass
class _MethodCells:
    """The cells of one method on one base model: their ids (``keys``) and what their rows share, computed without
    training anything (so that the cells of a failed base model can be named too)."""

    name: str
    method: PruningMethod
    settings: Any
    settings_json: dict[str, Any]
    rates: list[float | None]
    incremental: bool
    task_cfg: dict[str, Any]
    base_key: str
    base_id: str
    cell: dict[str, Any]

    def keys(self, rate: float | None) -> tuple[str, str]:
        """(model_id, model_key) of the cell at ``rate``."""
        if rate is None:
            path: Any = "learned"
        elif self.incremental:
            path = self.method.rate_path([r for r in self.rates if r is not None and r <= rate], self.settings)
        else:
            path = [rate]
        cell = {"kind": "pruned", "base": self.base_key, "method": self.name, "settings": self.settings_json,
                "path": path, "task": self.task_cfg}
        return config_hash({**cell, "base_id": self.base_id}), config_hash(cell)

    def failure_cell(self, rate: float | None) -> dict[str, Any]:
        return {**self.cell, "cell_id": self.keys(rate)[0], "rate": rate}


class StudyRunner:
    """Runs every cell of a :class:`StudySpec`, skipping cells whose results are already in the database.

    Failures: an exception while training, pruning or evaluating one cell is stored in the database's ``failures``
    table (and a model whose evaluation failed gets ``status`` 'failed'); the cells that depend on it are stored as
    not run, and every other cell goes on. A rerun retries the failed cells and reuses the rest. User errors that
    can be found before any work (settings, objectives, data files) are raised by :meth:`run` before it starts."""

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
        self.evaluator = ModelEvaluator(spec, self.device, log, self.outcome)
        self.train_precision = effective_precision(spec.precision, self.device)
        """What training computes in on this device (tf32 is fp32 on a CPU): recorded on every model and row."""
        self.clock: StudyClock | None = None
        """The remaining-time estimate (``robustprune.study.eta``) of an in-process run; None in Ray tasks."""
        self._sizes: dict[str, tuple[int, int, int]] = {}
        self.layouts: dict[str, bool] = {}
        """The memory layout of each ``device type|dataset|architecture`` (True: channels_last), decided once per
        study and stored in the database's meta (:meth:`decide_layouts`); every cell and every task uses it."""
        self.storage: StorageLocation | None = StorageLocation(spec.storage) if spec.storage else None
        """Where checkpoints go (the study key ``storage``); None: the study folder."""
        self.scratch: Path = self.out
        """The running unit's scratch folder: its checkpoints are written there, then committed."""
        self.given: dict[tuple[str, str, int], dict[str, Any] | None] = {}
        """The study key ``base_models``' checkpoints, by (dataset, architecture, seed) (see :meth:`given_base`)."""
        self.layout_device: str | None = None
        """The device type the layouts are decided for (None: this runner's; a Ray driver sets its tasks')."""
        self.read_out = True
        """Whether checkpoints may be read from the study folder (in-process: yes; a Ray task: never, it reads its
        scratch folder and the storage only)."""

    # ---- helpers ------------------------------------------------------------------------------------------
    def _cfg(self, cfg: TrainConfig) -> TrainConfig:
        return cfg if self.progress is None else cfg.model_copy(update={"progress": self.progress})

    def _base_train(self) -> TrainConfig:
        """The base model's training config, in the study's precision."""
        return self.spec.base_train.model_copy(update={"precision": self.train_precision,
                                                       "compile": self.spec.compile})

    def _objective(self, spec: ObjectiveSpec, splits: Splits):
        return build_objective(spec.name, **spec.kwargs(splits.spec.eps_linf))

    def _val_eps(self, spec: ObjectiveSpec, splits: Splits) -> float | None:
        if spec.name == "natural":
            return None
        return spec.eps if spec.eps is not None else splits.spec.eps_linf

    def _eps(self, ds: DatasetSpec) -> float:
        e = self.spec.finetune_objective.eps
        return float(e) if e is not None else float(ds.eps_linf)

    def _arch(self, arch: str) -> tuple[str, float]:
        """(registered model name, width) of an architecture entry (``NAME`` or ``NAME*W``)."""
        return split_architecture(arch, self.spec.width)

    def _build(self, arch: str, splits: Splits) -> nn.Module:
        name, width = self._arch(arch)
        return model_for_dataset(name, splits.spec, width=width).to(self.device)

    def _meta(self, splits: Splits, arch: str, extra: dict[str, Any]) -> dict[str, Any]:
        s = splits.spec
        name, width = self._arch(arch)
        return {"architecture": name, "dataset": s.name, "num_classes": s.num_classes, "input_shape": list(s.shape),
                "width": width, "mean": list(s.mean), "std": list(s.std), "code_version": code_version(),
                "precision": {"train": self.train_precision, "eval": self.spec.eval_precision}, **extra}

    def _find(self, rel: str) -> Path | None:
        """The local file of a stored checkpoint: in the unit's scratch folder, the study folder (in-process), or
        fetched from the study's storage into the scratch folder; None when it is nowhere."""
        path = Path(rel)
        if path.is_absolute():
            return path if path.exists() else None
        roots = [self.scratch] + ([self.out] if self.read_out else [])
        for root in roots:
            if (root / rel).exists():
                return root / rel
        if self.storage is not None and self.storage.get(rel, self.scratch / rel):
            side = sidecar_path(rel).as_posix()
            self.storage.get(side, self.scratch / side)
            return self.scratch / rel
        return None

    def _load(self, record: dict[str, Any]):
        path = self._find(record["checkpoint"])
        if path is None:
            return None  # a models row whose checkpoint is gone (deleted, or a crash before it landed): redo the cell
        want = record.get("checkpoint_sha256")
        if want and file_sha256(path) != want:
            self.log(f"  checkpoint {path.name} changed since it was stored (content hash differs); the cell is redone")
            return None
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

    # ---- failures -----------------------------------------------------------------------------------------
    def _failure_cell(self, dataset: str, arch: str, seed: int, method: str, rate: float | None,
                      cell_id: str) -> dict[str, Any]:
        return {"cell_id": cell_id, "study": self.spec.name, "dataset": dataset, "architecture": self._arch(arch)[0],
                "seed": seed, "method": method, "rate": rate}

    def _free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _failed(self, store: ResultsStore, cell: dict[str, Any], step: str, exc: BaseException) -> dict[str, Any]:
        """Store the failure of one cell, say it in one line, free what it held; the study goes on."""
        self._clock_drop(cell.get("cell_id"))
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        rec = store.put_failure({**cell, "step": step, "error": type(exc).__name__, "message": one_line(exc),
                                 "traceback": tb})
        self.outcome.failures.append(rec)
        if isinstance(exc, DivergenceError):
            self.outcome.diverged.append(cell_label(cell))
        self.log(f"  warning: {cell_label(cell)} failed in {step}: {type(exc).__name__}: {one_line(exc)} "
                 f"(stored; the study goes on, a rerun retries it)")
        self._free_memory()
        return rec

    def _not_run(self, store: ResultsStore, cell: dict[str, Any], why: str, message: str) -> None:
        """Store a cell that was not run because a cell it depends on failed."""
        self._clock_drop(cell.get("cell_id"))
        if store.get_model(cell["cell_id"]) is not None:
            return  # made by an earlier run: it stays (and is reused once what it depends on is back)
        rec = store.put_failure({**cell, "step": f"not run: {why}", "error": None, "message": message,
                                 "traceback": None}, attempted=False)
        self.outcome.failures.append(rec)
        self.log(f"  warning: {cell_label(cell)} not run: {why}")

    def _succeeded(self, store: ResultsStore, model_id: str) -> None:
        store.set_model_status(model_id, STATUS_DONE)
        store.clear_failure(model_id)

    def _evaluate(self, store: ResultsStore, model_id: str, model: nn.Module, splits: Splits, base: dict[str, Any],
                  train_wall: float, source: tuple[str, dict[str, torch.Tensor]] | None = None) -> bool:
        """Evaluate a stored model; a failure marks it 'failed' (kept, reused and re-evaluated by a rerun)."""
        self._clock_start(f"eval|{model_id}")
        try:
            self.evaluator.evaluate(store, model_id, model, splits, base, train_wall, source=source,
                                    channels_last=self._channels_last(
                                        f"{base['architecture']}*{float(base.get('width') or self.spec.width):g}",
                                        splits))
            self._clock_done(f"eval|{model_id}", say=True)
        except Exception as exc:  # noqa: BLE001  (any failure of one cell is stored; the study goes on)
            store.set_model_status(model_id, STATUS_FAILED)
            self._failed(store, self._failure_cell(splits.spec.name, base["architecture"], base["seed"],
                                                   base["method"], base.get("rate"), model_id), "evaluation", exc)
            return False
        self._succeeded(store, model_id)
        return True

    # ---- the remaining-time estimate (robustprune.study.eta) -------------------------------------------------
    def _clock_start(self, key: str) -> None:
        if self.clock is not None:
            self.clock.start(key)

    def _clock_done(self, key: str, seconds: float | None = None, *, say: bool = False) -> None:
        if self.clock is not None:
            if self.clock.done(key, seconds) and say:
                self.clock.say()

    def _clock_drop(self, cell_id: str | None) -> None:
        if self.clock is not None and cell_id:
            self.clock.drop(f"train|{cell_id}")
            self.clock.drop(f"eval|{cell_id}")

    def _layout_key(self, dataset: str, arch: str) -> str:
        name, width = self._arch(arch)
        return f"{self.layout_device or self.device.type}|{dataset}|{name}" + ("" if width == 1 else f"*{width:g}")

    def _channels_last(self, arch: str, splits: Splits) -> bool:
        """The memory layout of ``arch`` on this device type: the study key ``channels_last``, else the choice
        :meth:`decide_layouts` made once for this study (stored in the database, so every cell, every Ray task
        and every rerun computes in the same layout and gives the same numbers)."""
        if self.spec.channels_last is not None:
            return bool(self.spec.channels_last)
        key = self._layout_key(splits.spec.name, arch)
        if key not in self.layouts:
            raise RobustPruneError(f"no memory layout was decided for {key} before the work started (an internal "
                                   "error: StudyRunner.decide_layouts must run first)")
        return self.layouts[key]

    def layout_keys(self) -> list[tuple[str, str]]:
        """(dataset, architecture) pairs whose layout the study needs."""
        return [(get_spec(d).name, a) for d in self.spec.datasets for a in self.spec.architectures]

    def decide_layouts(self, store: ResultsStore, measure: Callable[[list[tuple[str, str]]], dict[str, Any]]
                       | None = None) -> None:
        """Every (dataset, architecture)'s memory layout on this device type, decided once per study: the one
        stored in the database's meta (``layouts``) when there is one, else measured now (``measure``: a function
        of the missing pairs, e.g. a probe on a Ray worker's device; default: :func:`measure_layouts` here) and
        stored. Not measured when the study key ``channels_last`` forces one."""
        if self.spec.channels_last is not None:
            return
        stored = dict(store.get_meta("layouts") or {})
        missing = [(d, a) for d, a in self.layout_keys() if self._layout_key(d, a) not in stored]
        if missing:
            found = (measure or (lambda pairs: measure_layouts(self, pairs)))(missing)
            for (d, a) in missing:
                key = self._layout_key(d, a)
                choice = found[key]
                stored[key] = bool(choice["channels_last"])
                self.log(f"[{d}/{a}] memory layout: {'channels_last' if choice['channels_last'] else 'NCHW'} "
                         f"({choice['why']}); decided once for this study on {self.layout_device or self.device.type} and stored: "
                         "every cell and every rerun uses it (study key channels_last: true/false forces one)")
            store.set_meta("layouts", stored)
        self.layouts = {k: bool(v) for k, v in stored.items()}

    def _plan_time(self, store: ResultsStore) -> None:
        """Every phase still to run, counted in passes by the study's one cost model
        (:func:`robustprune.study.eta.study_work`, which ``--plan`` uses too); what the database holds as done is
        left out."""
        from robustprune.study.eta import study_work

        assert self.clock is not None
        for work in study_work(self, self._sizes, store):
            for ph in work.phases:
                self.clock.add(ph.key, ph.group, ph.kind, ph.passes)

    def _probe(self, splits: Splits, arch: str) -> None:
        """Before the first work: a few training steps of the base objective and a few PGD steps on an evaluation
        batch, timed on this machine, then the first estimate. Once per study."""
        from robustprune.study.eta import probe_attack, probe_training

        clock = self.clock
        if clock is None or clock.probe_rate or not clock.phases:
            return
        try:
            model = self._build(arch, splits)
            obj = self._objective(self.spec.base_objective, splits)
            n = min(len(splits.train), 4 * self.spec.base_train.batch_size)
            cl = self._channels_last(arch, splits)
            clock.probe("train", *probe_training(model, obj, splits.train.x[:n], splits.train.y[:n],
                                                 batch_size=self.spec.base_train.batch_size, channels_last=cl))
            clock.probe("eval", *probe_attack(model, splits.test.x, splits.test.y, eps=splits.spec.eps_linf,
                                              batch_size=self.spec.eval_batch_size, channels_last=cl))
        except Exception as exc:  # noqa: BLE001 - the estimate is a courtesy: it never costs the study
            self.log(f"  (no time estimate: the timing probe failed: {type(exc).__name__}: {one_line(exc, 120)})")
            self.clock = None
            return
        clock.say(first=True)

    # ---- before any work ------------------------------------------------------------------------------------
    def _check_out(self) -> None:
        """The output folder is a writable folder, checked before any work starts."""
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"study output {self.out} is a file; give a folder (--out DIR)")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.out, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"cannot write to the study folder {self.out} ({exc.strerror or exc}); choose a "
                              "writable folder with --out") from None

    def method_settings(self) -> list[tuple[Any, Any]]:
        """(method, its validated settings) for every entry of ``methods`` (a variant ``name@label`` with its own)."""
        return [(m, m.settings(self.spec.method_settings.get(name, {})))
                for name in self.spec.methods for m in [get_method(method_of(name))]]

    def _check_inputs(self) -> None:
        """Everything that can be checked before any work: every method's settings, the objectives at each
        dataset's budget, the precision, and that every dataset's files load (decoded files are cached in-process,
        so the study's own loads are cheap). A user error here stops the study with its one line."""
        spec = self.spec
        if spec.compile and not hasattr(nn.Module, "compile"):
            raise ConfigError(f"compile needs torch >= 2.2 with nn.Module.compile (this is torch "
                              f"{torch.__version__}); drop compile")
        methods = self.method_settings()  # every method's settings validated here, once
        if spec.export:
            from robustprune.deploy.formats import check_format_available

            for f in spec.export:
                check_format_available(f)  # e.g. onnx without the extra: the install hint now, not after training
        for d in spec.datasets:
            ds = get_spec(d)
            for o in (spec.base_objective, spec.finetune_objective):
                build_objective(o.name, **o.kwargs(ds.eps_linf))
            sp = load_splits(d, data_dir=spec.data_dir, val_size=spec.val_size, seed=spec.seeds[0], device="cpu",
                             train_limit=spec.train_limit, test_limit=spec.eval_n)
            self._sizes[ds.name] = (len(sp.train), len(sp.val), len(sp.test))
            n_prune = len(sp.train) if spec.finetune_limit is None else min(spec.finetune_limit, len(sp.train))
            for m, settings in methods:  # a phase that would take 0 gradient steps on the pruning split: refused now
                m.check_budget(settings, epochs=spec.prune_epochs, n_train=n_prune)
            for arch in spec.architectures:  # a given base model exists and fits, before any work
                for seed in spec.seeds:
                    self._check_given(ds.name, arch, seed)

    def unused_option_warnings(self) -> list[str]:
        """A generic option the study file sets and a listed method does not use, one sentence each (said, not
        dropped). Only what the file sets: the default ``prune_epochs`` of a study whose methods all have their own
        phase epochs is not the user's choice and is not warned about."""
        if "prune_epochs" not in self.spec.model_fields_set:
            return []
        return [f"prune_epochs: {why.replace('(--set ', '(method_settings: ')}"
                for m, settings in self.method_settings()
                for why in m.unused_options(settings, epochs=self.spec.prune_epochs)]

    def _start(self) -> None:
        self._check_out()
        if self.storage is not None:
            self.storage.check_writable()
        self._check_inputs()
        remove_stale_scratch(self.out / ".scratch")
        (self.out / "study.json").write_text(json.dumps(self.spec.model_dump(mode="json"), indent=2))
        with ResultsStore(self.outcome.db_path) as store:
            store.set_meta("spec", self.spec.model_dump(mode="json"))
            store.set_meta("command", list(self.command) if self.command is not None else list(sys.argv))
            store.set_meta("started_at", time.time())
            store.set_meta("spec_warnings", list(self.spec.warnings))  # settings with no effect, said when read
            done = len(store.results())
            failed = len(store.failures())
        for why in self.unused_option_warnings():
            self.log(f"  warning: {why}")
        plan = self.plan()
        self.outcome.models_planned = plan["models"]
        self.log(f"study {self.spec.name}: {plan['models']} models ({plan['base_models']} base), {plan['rows']} result "
                 f"rows; {done} rows already in {self.outcome.db_path}"
                 + (f"; {failed} failed cell(s) of an earlier run to retry" if failed else ""))

    def _finish(self, t_start: float) -> StudyOutcome:
        """Record the wall time and write the report (also after failed cells: it lists them)."""
        self.outcome.wall_time = time.perf_counter() - t_start
        with ResultsStore(self.outcome.db_path) as store:
            store.set_meta("study_wall_time", self.outcome.wall_time)
            if self.clock is not None and self.clock.first_total is not None:
                store.set_meta("study_time_estimate", self.clock.first_total)
                self.log(f"study work took {self.outcome.wall_time / 60:.1f} min; first estimate "
                         f"{self.clock.first_total / 60:.1f} min")
        if self.spec.export:
            self._export()
        self._write_report()
        return self.outcome

    def _export(self) -> None:
        """The study key ``export``: every done model to each format, verified (``robustprune.study.exports``); a
        failed export is a row of its own and never costs the other models."""
        from robustprune.study.exports import export_study, export_summary

        self.log(f"exporting every model to {', '.join(self.spec.export)} (verified on the first {self.spec.eval_n} "
                 "test images)")
        self.outcome.exports = export_study(self.out, self.spec.export, n=self.spec.eval_n,
                                            data_dir=self.spec.data_dir, log=self.log)
        self.outcome.export_error = export_summary(self.out)

    def _write_report(self) -> None:
        from robustprune.study.report import write_report

        try:
            self.outcome.report_files = write_report(self.out)
        except Exception as exc:  # noqa: BLE001  (the database is complete; the report can be rewritten later)
            self.outcome.report_error = f"{type(exc).__name__}: {one_line(exc)} (the results are in " \
                                        f"{self.outcome.db_path}; `robustprune report {self.out}` retries)"
            self.log(f"  warning: the report could not be written: {self.outcome.report_error}")

    def _splits(self, dataset: str, seed: int) -> Splits:
        seed_everything(seed)
        return load_splits(dataset, data_dir=self.spec.data_dir, val_size=self.spec.val_size, seed=seed,
                           device=self.device, train_limit=self.spec.train_limit, test_limit=self.spec.eval_n)

    def units(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int, str]]]:
        """The study's work units: one base cell per (dataset, architecture, seed), then one method cell group per
        (dataset, architecture, seed, method) that needs its base. The Ray runner runs each as one task."""
        bases = [(d, a, s) for d in self.spec.datasets for s in self.spec.seeds for a in self.spec.architectures]
        chains = [(d, a, s, m) for (d, a, s) in bases for m in self.spec.methods]
        return bases, chains

    def plan(self) -> dict[str, int]:
        """The grid's size before anything runs: base models (one per dataset/architecture/seed), pruned models
        (per base: one per method and rate; one per learned-rate method), and result rows (per model: clean + every
        attack budget; per pruned model also one transfer row per budget)."""
        from robustprune.evaluation.attack_info import info_for_spec
        from robustprune.evaluation.run import budgets_for

        spec = self.spec
        per_base = sum(len(spec.rates_for(m)) for m in spec.methods)
        bases = pruned = rows = 0
        for d in spec.datasets:
            eps = get_spec(d).eps_linf
            budgets = sum(len(budgets_for(a, info_for_spec(a), eps, None)) for a in spec.attacks)
            moved = sum(len(budgets_for(a, info_for_spec(a), eps, None)) for a in spec.transferred_attacks())
            n = len(spec.architectures) * len(spec.seeds)
            bases += n
            pruned += n * per_base
            rows += n * (1 + budgets) + n * per_base * (1 + budgets + (moved if spec.transfer else 0))
        return {"base_models": bases, "pruned_models": pruned, "models": bases + pruned, "rows": rows}

    def run(self) -> StudyOutcome:
        """Every unit in this process, in order (each base, then its method chains), each committed as it writes
        (see :mod:`robustprune.study.unit`): the same unit function and the same commit as a Ray task's."""
        t_start = time.perf_counter()
        self._start()
        self.clock = StudyClock(log=self.log)
        target = self.storage or StorageLocation(self.out)
        try:
            with ResultsStore(self.outcome.db_path) as store:
                self.decide_layouts(store)
                self._plan_time(store)
                for dataset in self.spec.datasets:
                    for seed in self.spec.seeds:
                        splits = self._splits(dataset, seed)
                        for arch in self.spec.architectures:
                            self._probe(splits, arch)
                            self.run_here(store, Unit(dataset, arch, seed), target, splits)
                            for method in self.spec.methods:
                                self.run_here(store, Unit(dataset, arch, seed, method), target, splits)
        except Exception:
            self._write_report()  # what finished is reported even when something outside every cell failed
            raise
        return self._finish(t_start)

    def unit_ids(self, unit: Unit) -> list[str]:
        """The model ids a unit may read or write: its base model, and every cell of its method chain."""
        ds = get_spec(unit.dataset)
        base_id = config_hash(self._base_cfg(ds.name, unit.arch, unit.seed))
        if unit.method is None:
            return [base_id]
        cells = self._method_cells(ds, unit.arch, unit.seed, unit.method, base_id)
        return [base_id] + [cells.keys(r)[0] for r in cells.rates]

    def run_here(self, store: ResultsStore, unit: Unit, target: StorageLocation, splits: Splits | None = None) -> None:
        """Run one unit in this process: in a scratch folder beside the study's, with its own journal store seeded
        from ``store``; every write is committed to ``store`` (artifacts to ``target``) as it happens, so a study
        killed at any moment keeps every finished cell."""
        scratch = new_scratch(self.out / ".scratch")
        journal: JournalStore | None = None

        def flush() -> None:
            assert journal is not None
            ops = journal.take()
            commit(store, ops, publish(ops, scratch, how="path", storage=self.storage), target)

        try:
            journal = JournalStore(scratch / "unit.sqlite", on_write=flush)
            journal.load_rows(store.rows_for(self.unit_ids(unit)))
            self.execute(journal, unit, scratch=scratch, splits=splits)
        finally:
            if journal is not None:
                journal.close()
            remove_scratch(scratch)

    def execute(self, store: ResultsStore, unit: Unit, *, scratch: Path, splits: Splits | None = None,
                craft_transfer: bool = False) -> UnitOutput:
        """The unit function: run one work unit (the base cell when ``unit.method`` is None, else one method's
        cells from the stored base model) against ``store`` (a unit's journal store), writing checkpoints under
        ``scratch``. Returns what it did (counts, failures, log); the caller commits the journal. With
        ``craft_transfer`` a base unit also crafts the transfer examples its chains evaluate with (a Ray task hands
        them to the chain tasks; in-process they are cached)."""
        o = self.outcome
        before = (o.models_trained, o.models_reused, o.rows_written, len(o.failures), len(o.diverged))
        self.scratch = scratch
        out = UnitOutput(unit)
        if splits is None:
            splits = self._splits(unit.dataset, unit.seed)
        dataset, arch, seed, method = unit.dataset, unit.arch, unit.seed, unit.method
        if method is None:
            base = self._run_base(store, splits, arch, seed)
            if base is not None and craft_transfer and self.spec.transfer and self.spec.methods:
                base_id, model, _row = base
                self.evaluator.channels_last = self._channels_last(arch, splits)
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                name, width = self._arch(arch)
                out.transfer = {base_id: self.evaluator._transfer_examples(base_id, state, splits, name, seed, width)}
        else:
            base_id = config_hash(self._base_cfg(splits.spec.name, arch, seed))
            rec = store.get_model(base_id)
            loaded = self._load(rec) if rec else None
            if loaded is None and store.failures("cell_id = ?", (base_id,)):
                self._base_failed(store, splits.spec, arch, seed, method)
            elif loaded is None:
                raise RobustPruneError(f"base model {base_id} of {dataset}/{arch}/seed {seed} is not in the study's "
                                       "database; its base unit must finish first")
            else:
                base_state = {k: v.detach().clone() for k, v in loaded[0].state_dict().items()}
                row_base = self._row_base(splits, arch, seed)
                self._run_method(store, splits, arch, seed, method, base_id, base_state, row_base)
        out.counts = {"models_trained": o.models_trained - before[0], "models_reused": o.models_reused - before[1],
                      "rows_written": o.rows_written - before[2]}
        out.failures = [{k: v for k, v in f.items() if k != "traceback"} for f in o.failures[before[3]:]]
        out.diverged = list(o.diverged[before[4]:])
        return out

    def _base_failed(self, store: ResultsStore, ds: DatasetSpec, arch: str, seed: int, method: str) -> None:
        """The cells of ``method`` on a base model that failed: stored as not run."""
        base_id = config_hash(self._base_cfg(ds.name, arch, seed))
        cells = self._method_cells(ds, arch, seed, method, base_id)
        for rate in cells.rates:
            self._not_run(store, cells.failure_cell(rate), "its base model failed",
                          f"its base model {base_id} ({ds.name}/{arch}/seed {seed}) failed; see that model's failure")

    def base_unit_failed(self, unit: Unit) -> None:
        """The cells of a method unit whose base unit failed as a whole: stored as not run."""
        with ResultsStore(self.outcome.db_path) as store:
            self._base_failed(store, get_spec(unit.dataset), unit.arch, unit.seed, str(unit.method))

    def unit_failed(self, dataset: str, arch: str, seed: int, method: str | None, exc: BaseException) -> None:
        """A work unit that failed outside every cell (e.g. its Ray worker died): each of its cells not stored
        gets a failure row (step 'ray task')."""
        ds = get_spec(dataset)
        base_id = config_hash(self._base_cfg(ds.name, arch, seed))
        with ResultsStore(self.outcome.db_path) as store:
            if method is None:
                cells = [self._failure_cell(ds.name, arch, seed, "unpruned", 1.0, base_id)]
            else:
                mc = self._method_cells(ds, arch, seed, method, base_id)
                cells = [mc.failure_cell(r) for r in mc.rates]
            for cell in cells:
                rec = store.get_model(cell["cell_id"])
                if rec is None or rec.get("status") == STATUS_FAILED:
                    self._failed(store, cell, "ray task", exc)

    def _row_base(self, splits: Splits, arch: str, seed: int) -> dict[str, Any]:
        name, width = self._arch(arch)
        return {"dataset": splits.spec.name, "architecture": name, "width": width, "seed": seed,
                "eval_precision": self.spec.eval_precision}

    def _base_cfg(self, dataset: str, arch: str, seed: int) -> dict[str, Any]:
        """The config hashed into a base model's id (``dataset``: the registered name). The precision is part of it
        only when it is not the default (fp32, no compile), so earlier studies' models keep their ids."""
        spec = self.spec
        name, width = self._arch(arch)
        given = self.given_base(dataset, arch, seed)
        if given is not None:  # a checkpoint to start from: its content hash is its identity (a changed file is new)
            return {"kind": "base", "dataset": dataset, "architecture": name, "width": width, "seed": seed,
                    "train_limit": spec.train_limit, "val_size": spec.val_size, "given_sha256": given["sha256"]}
        return {
            "kind": "base", "dataset": dataset, "architecture": name, "width": width, "seed": seed,
            "train_limit": spec.train_limit, "val_size": spec.val_size,
            "objective": spec.base_objective.record(), "train": _train_cfg_dict(self._base_train()),
        }

    def given_base(self, dataset: str, arch: str, seed: int) -> dict[str, Any] | None:
        """The study key ``base_models``' checkpoint for this base model: ``{"path", "file", "sha256", "rel"}``
        (``rel``: where a Ray task finds its copy), None when the base model is trained. A file that does not exist
        or does not fit is a one-line error (checked before any work by :meth:`_check_inputs`)."""
        key = (get_spec(dataset).name, arch, seed)
        if key not in self.given:
            path = self.spec.given_base(dataset, arch, seed)
            if path is None:
                self.given[key] = None
            else:
                p = Path(path).expanduser().resolve()
                if not p.is_file():
                    raise ConfigError(f"base_models: checkpoint {path} for {dataset}/{arch} not found"
                                      + (" (it is a folder)" if p.is_dir() else "")
                                      + "; give a .safetensors file (`robustprune import` makes one from a .pt)")
                sha = file_sha256(p)
                self.given[key] = {"path": str(p), "file": p.name, "sha256": sha,
                                   "rel": f"given/{sha[:16]}.safetensors"}
        return self.given[key]

    def _check_given(self, dataset: str, arch: str, seed: int) -> None:
        """A given base checkpoint must be of this architecture (and width) and dataset: else a one-line error."""
        from robustprune.checkpoint import read_meta

        given = self.given_base(dataset, arch, seed)
        if given is None:
            return
        meta = read_meta(given["path"])
        name, width = self._arch(arch)
        ds = get_spec(dataset)
        where = f"base_models: {given['path']} (for {dataset}/{arch}"
        if meta.get("architecture") != name or float(meta.get("width") or 1.0) != float(width):
            raise ConfigError(f"{where}) is a {meta.get('architecture')} of width {meta.get('width') or 1}, not "
                              f"{name} of width {width:g}; give a checkpoint of that architecture")
        if meta.get("dataset") not in (None, ds.name) or int(meta.get("num_classes") or ds.num_classes) != ds.num_classes:
            raise ConfigError(f"{where}) was made for {meta.get('dataset')} ({meta.get('num_classes')} classes), not "
                              f"{ds.name}; give a checkpoint of that dataset")

    def _save(self, store: ResultsStore, model_id: str, model: nn.Module, meta: dict[str, Any], masks: Any,
              record: dict[str, Any]) -> None:
        rel = f"checkpoints/{model_id}.safetensors"
        ckpt = self.scratch / rel  # the unit's scratch folder; committed with the model row (robustprune.study.unit)
        save_checkpoint(ckpt, model, meta=meta, masks=masks)
        store.put_model({**record, "model_id": model_id, "study": self.spec.name,
                         "checkpoint": rel, "checkpoint_sha256": file_sha256(ckpt),
                         "train_precision": self.train_precision, "eval_precision": self.spec.eval_precision})

    def _run_base(self, store: ResultsStore, splits: Splits, arch: str,
                  seed: int) -> tuple[str, nn.Module, dict[str, Any]] | None:
        """The base cell: reuse or train, then evaluate. None when its training failed (stored as a failure)."""
        with cell_lock(self.out, config_hash(self._base_cfg(splits.spec.name, arch, seed))):
            return self._run_base_locked(store, splits, arch, seed)

    def _run_base_locked(self, store: ResultsStore, splits: Splits, arch: str,
                         seed: int) -> tuple[str, nn.Module, dict[str, Any]] | None:
        spec = self.spec
        base_cfg = self._base_cfg(splits.spec.name, arch, seed)
        base_id = config_hash(base_cfg)
        model_key = config_hash(_without_seed(base_cfg))
        row_base = self._row_base(splits, arch, seed)
        record = store.get_model(base_id)
        loaded = self._load(record) if record else None
        if loaded is not None:
            model, _, _ = loaded
            train_wall = float(record["wall_time"] or 0.0)
            train_epochs, train_steps = record.get("metrics", {}).get("epochs"), record.get("metrics", {}).get("steps")
            train_precision = record.get("train_precision")
            self.outcome.models_reused += 1
            self.log(f"[{splits.spec.name}/{arch}/seed {seed}] base model {base_id}: reused")
        elif self.given_base(splits.spec.name, arch, seed) is not None:
            given = self.given_base(splits.spec.name, arch, seed)
            step = "loading the given base model"
            try:
                path = self._find(given["rel"]) or Path(given["path"])
                model, meta, _ = load_checkpoint(path, self.device)
                train_wall, train_epochs, train_steps = 0.0, 0.0, 0
                train_precision = (meta.get("precision") or {}).get("train")
                source = {"file": given["file"], "path": given["path"], "sha256": given["sha256"],
                          "provenance": meta.get("source") or meta.get("provenance")}
                self.log(f"[{splits.spec.name}/{arch}/seed {seed}] base model {base_id}: the given checkpoint "
                         f"{given['file']} (sha256 {given['sha256'][:12]}), not trained")
                step = "saving the base model"
                self._save(store, base_id, model,
                           self._meta(splits, arch, {"config": base_cfg, "given": source}),
                           None, {"kind": "base", "dataset": splits.spec.name, "architecture": self._arch(arch)[0],
                                  "method": "unpruned", "rate": 1.0, "rate_kind": "none", "group": "none",
                                  "settings": {}, "model_key": model_key, "seed": seed,
                                  "metrics": {"given": source, "epochs": 0.0, "steps": 0}, "config": base_cfg,
                                  "wall_time": 0.0, "converged": None, "flags": [], "convergence": {},
                                  "train_epochs": 0.0, "train_steps": 0})
            except Exception as exc:  # noqa: BLE001  (stored; the cells that need this base are not run)
                self._failed(store, self._failure_cell(splits.spec.name, arch, seed, "unpruned", 1.0, base_id), step,
                             exc)
                return None
            self.outcome.models_reused += 1
        else:
            self.log(f"[{splits.spec.name}/{arch}/seed {seed}] training base model {base_id} "
                     f"({spec.base_objective.name}, {spec.base_train.epochs} epochs, {len(splits.train)} images"
                     + (f", {self.train_precision}" if self.train_precision != "fp32" else "") + ")")
            step = "base training"
            self._clock_start(f"train|{base_id}")
            try:
                seed_everything(seed)
                model = self._build(arch, splits)
                cfg = self._cfg(self._base_train().model_copy(
                    update={"seed": seed, "channels_last": self._channels_last(arch, splits)}))
                res = fit(model, self._objective(spec.base_objective, splits), splits.train, splits.val, cfg,
                          val_eps=self._val_eps(spec.base_objective, splits), augment=splits.spec.augment,
                          desc="base")
                train_wall = res.wall_time
                self._clock_done(f"train|{base_id}", train_wall)
                train_epochs, train_steps = float(cfg.epochs), int(res.steps)
                metrics = {**res.to_dict(), "epochs": train_epochs}
                step = "saving the base model"
                self._save(store, base_id, model,
                           self._meta(splits, arch, {"config": base_cfg, "train": res.to_dict()}),
                           None, {"kind": "base", "dataset": splits.spec.name, "architecture": self._arch(arch)[0],
                                  "method": "unpruned",
                                  "rate": 1.0, "rate_kind": "none", "group": "none", "settings": {},
                                  "model_key": model_key, "seed": seed, "metrics": metrics, "config": base_cfg,
                                  "wall_time": train_wall, "converged": None, "flags": [], "convergence": {},
                                  "train_epochs": train_epochs, "train_steps": train_steps})
            except Exception as exc:  # noqa: BLE001  (stored; the cells that need this base are not run)
                self._failed(store, self._failure_cell(splits.spec.name, arch, seed, "unpruned", 1.0, base_id), step,
                             exc)
                return None
            train_precision = self.train_precision
            self.outcome.models_trained += 1
            last = res.history[-1] if res.history else {}
            self.log(f"  base trained in {train_wall:.0f}s (best epoch {res.best_epoch} by {res.selected_by}; "
                     + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("val_")) + ")")
        self._evaluate(store, base_id, model, splits,
                       {**row_base, "method": "unpruned", "group": "none", "scope": "none", "score": "none",
                        "schedule": "none", "rate": 1.0, "rate_kind": "none", "settings": "{}",
                        "model_key": model_key, "converged": None, "flags": "[]", "train_epochs": train_epochs,
                        "train_steps": train_steps, "train_precision": train_precision}, train_wall)
        return base_id, model, row_base

    # ---- one method: every rate, through the PruningMethod interface ------------------------------------------
    def _method_cells(self, ds: DatasetSpec, arch: str, seed: int, name: str, base_id: str) -> _MethodCells:
        spec = self.spec
        method = get_method(method_of(name))
        settings = method.settings(spec.method_settings.get(name, {}))
        task_cfg: dict[str, Any] = {
            "epochs": spec.prune_epochs, "limit": spec.finetune_limit, "eps": self._eps(ds),
            "objective": spec.finetune_objective.record() if method.uses_objective else None}
        if self.train_precision != "fp32":  # part of the identity only when not fp32: earlier ids stay
            task_cfg["precision"] = self.train_precision
        if spec.compile:
            task_cfg["compile"] = True
        return _MethodCells(
            name=name, method=method, settings=settings, settings_json=settings.model_dump(mode="json"),
            rates=spec.rates_for(name), incremental=method.incremental(settings), task_cfg=task_cfg,
            base_key=config_hash(_without_seed(self._base_cfg(ds.name, arch, seed))), base_id=base_id,
            cell={"study": spec.name, "dataset": ds.name, "architecture": self._arch(arch)[0], "seed": seed,
                  "method": name})

    def _run_method(self, store: ResultsStore, splits: Splits, arch: str, seed: int, name: str, base_id: str,
                    base_state: dict[str, torch.Tensor], row_base: dict[str, Any]) -> None:
        with cell_lock(self.out, config_hash({"base": base_id, "method": name})):
            self._run_method_locked(store, splits, arch, seed, name, base_id, base_state, row_base)

    def _run_method_locked(self, store: ResultsStore, splits: Splits, arch: str, seed: int, name: str,
                           base_id: str, base_state: dict[str, torch.Tensor], row_base: dict[str, Any]) -> None:
        """Every rate of one method on one base model. Each rate is a cell: a failure is stored and the other
        rates go on (an incremental chain's later rates depend on the failed one and are stored as not run)."""
        spec = self.spec
        seed_everything(seed)  # a method's numbers do not depend on what ran before it (in-process, Ray, resume)
        cells = self._method_cells(splits.spec, arch, seed, name, base_id)
        method, settings, incremental, rates = cells.method, cells.settings, cells.incremental, cells.rates
        if not rates:
            return
        eps = self._eps(splits.spec)
        keys = cells.keys
        row = {**row_base, "method": name, "group": method.group, "scope": getattr(method, "scope", "local"),
               "score": getattr(method, "score", name.split("-")[0]),
               "schedule": getattr(settings, "schedule", "one-shot"), "rate_kind": method.rate_kind,
               "settings": cells.settings_json}
        # Reuse what is stored; an incremental chain resumes after its furthest stored rate.
        todo: list[float | None] = []
        start_model: nn.Module | None = None
        start_masks, start_rate, done_wall, start_achieved = None, 1.0, 0.0, 1.0
        for rate in rates:
            cid, mkey = keys(rate)
            rec = store.get_model(cid)
            loaded = self._load(rec) if rec and (not todo or not incremental) else None
            if loaded is None:
                todo.append(rate)
                continue
            m, _, mk = loaded
            cumulative = float(rec["metrics"].get("cumulative_wall_time", rec["wall_time"] or 0.0))
            self._evaluate(store, cid, m, splits, self._row(row, rate, mkey, rec), cumulative,
                           source=(base_id, base_state))
            self.outcome.models_reused += 1
            if incremental:
                start_model, start_masks, start_rate, done_wall = m, mk, float(rate), cumulative
                start_achieved = float((rec.get("metrics") or {}).get("achieved_compression") or 1.0)
        if not todo:
            return
        teacher = None
        if method.needs_teacher:
            teacher = self._build(arch, splits)
            teacher.load_state_dict(base_state)
        task = PruneTask(train=self._finetune_split(splits.train, seed), val=splits.val, eps=eps,
                         epochs=spec.prune_epochs,
                         objective=self._objective(spec.finetune_objective, splits) if method.uses_objective else None,
                         dataset=splits.spec.name, augment=splits.spec.augment, seed=seed,
                         progress=bool(self.progress) if self.progress is not None else False,
                         masks=start_masks, start_rate=start_rate, teacher=teacher, log=self.log,
                         precision=self.train_precision, compile=spec.compile,
                         channels_last=self._channels_last(arch, splits))
        pending = list(todo)
        model = start_model
        wall = done_wall
        while pending:
            if model is None:  # from the base model (after a failed rate: a fresh copy, whatever the method did)
                model = self._build(arch, splits)
                model.load_state_dict(base_state)
            self.log(f"[{splits.spec.name}/{arch}/seed {seed}] {name} [{method.paper.key}]: "
                     + ("learning its rate" if pending == [None] else
                        f"pruning to c={', '.join(f'{r:g}' for r in pending if r is not None)} from c={start_rate:g}"))
            current, step = pending[0], "pruning"
            self._clock_start(f"train|{keys(current)[0]}")
            try:
                # Non-incremental methods get every pending rate at once (a method may share work between them);
                # after a failure the remaining rates are asked for again, so one rate's failure costs no other.
                for res in method.prune_many(model, task, list(pending), settings):
                    current, step = res.rate, "saving the pruned model"
                    wall = (wall if incremental else 0.0) + res.wall_time
                    self._store_result(store, splits, arch, seed, name, base_id, base_state, res, keys(res.rate), row,
                                       wall, start_achieved if incremental else 1.0)
                    if incremental and res.rate is not None:
                        start_rate, start_achieved = res.rate, res.achieved_compression
                    if res.rate in pending:
                        pending.remove(res.rate)
                    else:
                        pending.pop(0)
                    step = "pruning"
                    if pending:
                        current = pending[0]
                        self._clock_start(f"train|{keys(current)[0]}")
                pending = []  # rates a method does not return are not retried in a loop
            except Exception as exc:  # noqa: BLE001  (stored; the other cells go on)
                self._failed(store, cells.failure_cell(current), step, exc)
                if current in pending:
                    pending.remove(current)
                if incremental:
                    for r in pending:
                        self._not_run(store, cells.failure_cell(r), f"{rate_text(current)} of its chain failed",
                                      f"{name} {rate_text(r)} continues from {rate_text(current)}, which failed "
                                      f"({type(exc).__name__}: {one_line(exc, 160)})")
                    pending = []
                model = None

    def _row(self, row: dict[str, Any], rate: float | None, model_key: str, rec: dict[str, Any]) -> dict[str, Any]:
        metrics = rec.get("metrics") or {}
        return {**row, "rate": rate, "model_key": model_key, "converged": rec.get("converged"),
                "flags": rec.get("flags") or [], "train_epochs": metrics.get("epochs"),
                "train_steps": metrics.get("steps"), "train_precision": rec.get("train_precision")}

    def _base_val_clean(self, base_id: str, base_state: dict[str, torch.Tensor], like: nn.Module, splits: Splits,
                        seed: int) -> float | None:
        """The unpruned base model's validation clean accuracy (once per base), for the ``accuracy-lost`` flag."""
        cache = self.__dict__.setdefault("_base_val_cache", {})
        if base_id not in cache:
            from robustprune.train import evaluate_split

            try:
                m = copy.deepcopy(like)
                m.load_state_dict(base_state)
                cache[base_id] = evaluate_split(m, splits.val, n=min(1000, len(splits.val)), eps=None, steps=1,
                                                seed=seed).get("clean")
            except Exception:  # noqa: BLE001 - a folded or slimmed model of another shape: no flag, no failure
                cache[base_id] = None
        return cache[base_id]

    def _store_result(self, store: ResultsStore, splits: Splits, arch: str, seed: int, name: str, base_id: str,
                      base_state: dict[str, torch.Tensor], res: PruneResult, ids: tuple[str, str],
                      row: dict[str, Any], cumulative: float, start_achieved: float) -> None:
        from robustprune.train import evaluate_split

        cid, mkey = ids
        self._clock_done(f"train|{cid}", res.wall_time)
        val = evaluate_split(res.model, splits.val, n=min(1000, len(splits.val)), eps=None, steps=1, seed=seed)
        flags = result_flags(res, val_clean=val.get("clean"), num_classes=splits.spec.num_classes,
                             start_compression=start_achieved,
                             base_val_clean=self._base_val_clean(base_id, base_state, res.model, splits, seed))
        for f in flags:
            self.log(f"  warning: {name} c={res.rate_label}: {FLAG_TEXT.get(f, f)}")
        summary = res.summary()
        metrics = {"cumulative_wall_time": cumulative, "epochs": res.epochs, "steps": res.steps,
                   "times": res.times, "history": res.history, "validation": val,
                   "achieved_compression": res.achieved_compression}
        config = {"base": base_id, "method": name, "rate": res.rate, "settings": res.settings,
                  "epochs": self.spec.prune_epochs, "limit": self.spec.finetune_limit}
        meta = self._meta(splits, arch, {"config": config, "prune_result": summary, "flags": flags})
        self._save(store, cid, res.model, meta, res.masks,
                   {"kind": "pruned", "parent_id": base_id, "dataset": splits.spec.name,
                    "architecture": self._arch(arch)[0],
                    "method": name, "rate": res.rate, "rate_kind": res.rate_kind, "group": res.group,
                    "settings": res.settings, "model_key": mkey, "seed": seed, "metrics": metrics, "config": config,
                    "wall_time": res.wall_time, "converged": res.converged, "flags": flags,
                    "convergence": res.convergence, "train_epochs": res.epochs, "train_steps": res.steps})
        self.outcome.models_trained += 1
        self.log(f"  {name} c={res.rate_label}: achieved x{res.achieved_compression:.3g} in {res.wall_time:.0f}s"
                 + (f", converged {res.converged}" if res.converged is not None else ""))
        self._evaluate(store, cid, res.model, splits,
                       {**row, "rate": res.rate, "model_key": mkey, "converged": res.converged, "flags": flags,
                        "train_epochs": res.epochs, "train_steps": res.steps,
                        "train_precision": self.train_precision}, cumulative,
                       source=(base_id, base_state))


def run_study(spec: StudySpec, out_dir: str | Path, *, device: str | None = None, log: Log = print,
              progress: bool | None = None, command: list[str] | None = None) -> StudyOutcome:
    """Run (or finish) the study ``spec`` into ``out_dir``; see :class:`StudyRunner`. ``command`` (default
    ``sys.argv``) is stored in the database's meta table and shown in the report."""
    return StudyRunner(spec, out_dir, device=device, log=log, progress=progress, command=command).run()
