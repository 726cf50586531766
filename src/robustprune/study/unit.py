"""A study's work units: **a unit computes, the store commits**.

A work unit is one base cell (dataset, architecture, seed) or one method chain on that base (every rate of one
method). The same function runs it in-process and in a Ray task (:func:`execute_unit`): it works in its own
scratch folder with its own SQLite file (a :class:`JournalStore` seeded with the rows of the unit's models, so
finished work is reused), and everything it produces -- model rows, result rows, failures, checks, vulnerability
measurements (a journal of store operations), the checkpoints it wrote, its log -- comes back as a
:class:`UnitOutput`. Only the driver opens the study's ``results.sqlite``: :func:`commit` places the artifacts
(checked against their content hashes) and replays the journal in one transaction.

In-process, the journal is committed after every write (a study killed at any moment keeps every finished cell,
as before); in a Ray task it is returned whole and committed by the driver as the task's result arrives, so a task
whose worker dies commits nothing and its retry commits everything once.

Artifacts travel as bytes through Ray's object store (the default: the study folder is the driver's), or, when the
study sets ``storage``, are written there by the task (:mod:`robustprune.study.storage`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustprune.checkpoint import sidecar_path
from robustprune.study.storage import StorageLocation
from robustprune.study.store import ResultsStore

JOURNALED = ("put_model", "update_model", "set_model_status", "put_results", "put_checks", "put_vulnerability",
             "put_failure", "clear_failure")
"""The store operations a unit may perform; each is journaled and replayed by the driver."""


@dataclass(frozen=True)
class Unit:
    """One work unit: the base cell (``method`` None) or one method's chain on the base of (dataset, arch, seed)."""

    dataset: str
    arch: str
    seed: int
    method: str | None = None

    def label(self) -> str:
        return f"{self.dataset}/{self.arch}/seed {self.seed}/" + (self.method or "base")


class JournalStore(ResultsStore):
    """A work unit's own results database (a scratch file): writes land in it, so the unit reads what it wrote,
    and in :attr:`journal`, which the driver replays on the study's database (:func:`commit`). ``on_write`` is
    called after every journaled write (the in-process runner commits there)."""

    def __init__(self, path: str | Path, *, on_write: Callable[[], None] | None = None) -> None:
        super().__init__(path)
        self.journal: list[tuple[str, tuple, dict]] = []
        self.on_write = on_write

    def take(self) -> list[tuple[str, tuple, dict]]:
        """The journal so far, emptied."""
        ops, self.journal = self.journal, []
        return ops

    def replay(self, ops: list[tuple[str, tuple, dict]]) -> None:
        """Apply another unit's journal here without journaling it (a chain sees its base task's rows)."""
        with self.batch():
            for name, args, kwargs in ops:
                getattr(ResultsStore, name)(self, *args, **kwargs)


def _journaled(name: str) -> Callable[..., Any]:
    base = getattr(ResultsStore, name)

    def method(self: JournalStore, *args: Any, **kwargs: Any) -> Any:
        out = base(self, *args, **kwargs)
        self.journal.append((name, args, kwargs))
        if self.on_write is not None:
            self.on_write()
        return out

    method.__name__ = name
    method.__doc__ = base.__doc__
    return method


for _name in JOURNALED:
    setattr(JournalStore, _name, _journaled(_name))


@dataclass
class UnitOutput:
    """Everything a unit produced (see the module docstring). ``artifacts``: the checkpoints to commit, each
    ``{"rel", "sha256"}`` plus ``data`` (bytes of the file and ``sidecar`` bytes), ``path`` (a local file the driver
    moves) or ``stored`` (already in the study's storage). ``provides``: the artifacts a dependent unit needs (the
    base checkpoint of a base unit, new or reused). ``transfer``: the transfer examples crafted on the base model."""

    unit: Unit
    ops: list[tuple[str, tuple, dict]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    provides: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    node: str | None = None
    transfer: Any = None


def _sidecar(rel: str) -> str:
    """The sidecar of the checkpoint ``rel`` (a path relative to the study folder or storage), as a string."""
    return sidecar_path(rel).as_posix()


def artifacts_of(ops: list[tuple[str, tuple, dict]]) -> list[tuple[str, str]]:
    """(relative checkpoint path, sha256) of every model row in ``ops``."""
    out = []
    for name, args, kwargs in ops:
        if name == "put_model":
            rec = args[0] if args else kwargs["record"]
            if rec.get("checkpoint"):
                out.append((rec["checkpoint"], rec.get("checkpoint_sha256")))
    return out


def publish(ops: list[tuple[str, tuple, dict]], scratch: Path, *, how: str,
            storage: StorageLocation | None) -> list[dict[str, Any]]:
    """The artifacts of ``ops``' model rows, ready for the driver: ``how`` = 'path' (in-process: the driver moves
    the scratch files), 'data' (a Ray task: the bytes travel with the result) or, with ``storage``, written there
    now ('stored')."""
    out = []
    for rel, sha in artifacts_of(ops):
        src, side = scratch / rel, scratch / _sidecar(rel)
        item: dict[str, Any] = {"rel": rel, "sha256": sha}
        if storage is not None:
            storage.put(side, _sidecar(rel), move=how == "path")
            storage.put(src, rel, move=how == "path")  # the weights last: a present weights file has its sidecar
            item["stored"] = True
        elif how == "path":
            item["path"], item["sidecar_path"] = str(src), str(side)
        else:
            item["data"], item["sidecar"] = src.read_bytes(), side.read_bytes()
        out.append(item)
    return out


def place_artifacts(items: list[dict[str, Any]], target: StorageLocation) -> None:
    """Put every artifact where the study keeps them, checked against the content hash its model row will
    hold; a mismatch (a corrupted transfer) is an error and nothing of that unit is committed."""
    from robustprune.checkpoint import sha256_bytes
    from robustprune.provenance import file_sha256

    for a in items:
        rel, sha = a["rel"], a.get("sha256")
        if a.get("stored"):
            continue
        if "data" in a:
            got = sha256_bytes(a["data"])
            if sha and got != sha:
                raise RuntimeError(f"artifact {rel} arrived with content hash {got[:12]}, expected {sha[:12]}")
            target.write_bytes(_sidecar(rel), a["sidecar"])
            target.write_bytes(rel, a["data"])
        else:
            src = Path(a["path"])
            if sha and file_sha256(src) != sha:
                raise RuntimeError(f"artifact {rel} changed before it was committed (content hash differs)")
            target.put(Path(a["sidecar_path"]), _sidecar(rel), move=True)
            target.put(src, rel, move=True)


def commit(store: ResultsStore, ops: list[tuple[str, tuple, dict]], artifacts: list[dict[str, Any]],
           target: StorageLocation) -> None:
    """The driver's side: the artifacts first (so a committed row never names a missing file), then the whole
    journal in one transaction."""
    place_artifacts(artifacts, target)
    if not ops:
        return
    with store.batch():
        for name, args, kwargs in ops:
            if name not in JOURNALED:
                raise ValueError(f"unit journal: {name!r} is not a unit's store operation")
            getattr(ResultsStore, name)(store, *args, **kwargs)


def new_scratch(parent: str | Path | None = None) -> Path:
    """A fresh scratch folder for one unit (node-local: the system's temporary folder unless ``parent``), named
    after this process so that :func:`remove_stale_scratch` knows when it is left over."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"robustprune-unit-{os.getpid()}-", dir=parent))


def remove_stale_scratch(parent: Path) -> None:
    """Scratch folders under ``parent`` of processes that are gone (a study killed mid-unit): removed."""
    if not parent.is_dir():
        return
    for d in parent.glob("robustprune-unit-*"):
        try:
            pid = int(d.name.split("-")[2])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run_unit_task(payload: dict[str, Any], base_out: UnitOutput | None = None) -> UnitOutput:
    """One Ray task: run one unit in node-local scratch space and return everything it produced (nothing is
    written outside the scratch folder, except the artifacts, to the study's ``storage`` when it has one).
    ``base_out``: the result of the base unit this chain depends on (its rows, checkpoint and transfer
    examples)."""
    import torch

    from robustprune.checkpoint import _atomic_write_bytes
    from robustprune.study.runner import StudyRunner
    from robustprune.study.spec import StudySpec

    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    unit = Unit(*payload["unit"])
    scratch = new_scratch()
    lines: list[str] = []
    try:
        storage = StorageLocation(payload["storage"]) if payload.get("storage") else None
        inputs = list(payload.get("artifacts", ())) + (list(base_out.provides) if base_out is not None else [])
        for a in inputs:
            if "data" in a:
                _atomic_write_bytes(scratch / a["rel"], a["data"])
                _atomic_write_bytes(scratch / _sidecar(a["rel"]), a["sidecar"])
        spec = StudySpec.model_validate(payload["spec"])
        runner = StudyRunner(spec, scratch, device=payload.get("device"), log=lines.append, progress=False)
        runner.layouts = dict(payload.get("layouts") or {})
        runner.given = dict(payload.get("given") or {})
        runner.storage = storage
        store = JournalStore(scratch / "unit.sqlite")
        try:
            store.load_rows(payload.get("rows") or {})
            if base_out is not None:
                store.replay(base_out.ops)
                if base_out.transfer is not None:
                    runner.evaluator.seed_transfer(base_out.transfer)
            out = runner.execute(store, unit, scratch=scratch, craft_transfer=bool(payload.get("craft_transfer")))
            out.ops = store.take()
        finally:
            store.close()
        out.artifacts = publish(out.ops, scratch, how="data", storage=storage)
        if unit.method is None:  # what the chains of this base need: its checkpoint, new or reused
            out.provides = [a for a in out.artifacts if "data" in a] or \
                [a for a in payload.get("artifacts", ()) if "data" in a]
        out.log = lines
        try:
            import ray

            # is_initialized first: get_runtime_context() would start a Ray instance outside a task
            out.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        except ImportError:  # outside Ray (the task function called directly)
            out.node = None
        return out
    finally:
        remove_scratch(scratch)
