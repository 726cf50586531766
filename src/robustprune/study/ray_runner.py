"""Run a study's work units as Ray tasks: on a local Ray instance (``--ray``) or an existing cluster
(``--ray-address``), whose nodes need not share a file system.

**One writer.** Each task runs one unit (:func:`robustprune.study.unit.run_unit_task`: the unit function of the
in-process runner) in node-local scratch space and returns everything it produced; only this driver opens
``results.sqlite``, committing each task's journal and checkpoints in one transaction as the results arrive
(``ray.wait``, not submission order). Checkpoints travel through Ray's object store, or are written by the tasks to
the study's ``storage`` (a folder or URI every node reaches).

**Dependencies, not waves.** A method chain's task takes its base task's result as an argument, so it starts as
soon as its own base exists, whatever the other bases are doing.

**Faults.** A task whose worker or node dies is retried by Ray (``max_retries``); it committed nothing, so its
retry commits every cell once. A Python exception inside a cell is stored as that cell's failure by the unit (no
blind retry); one that escapes a unit is not retried either, and its cells are stored as failed. A killed driver
loses only the tasks it had not committed: a rerun reuses every committed cell.

**Same numbers.** The memory layout is decided once per study, architecture and device type (on a worker when the
tasks use GPUs), stored, and handed to every task; each task runs torch with ``--cpus-per-task`` threads. The rows
are those of the in-process runner run with the same thread count.

Ray is an optional extra, imported lazily: ``pip install -e ".[ray]"``. Ray's token authentication stays as the
cluster has it (docs/distributed.md shows how to start and join a token-protected cluster).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from robustprune.checkpoint import sidecar_path
from robustprune.errors import ConfigError
from robustprune.study.runner import Log, StudyOutcome, StudyRunner
from robustprune.study.spec import StudySpec
from robustprune.study.storage import StorageLocation
from robustprune.study.store import STATUS_DONE, ResultsStore
from robustprune.study.unit import Unit, UnitOutput, commit

MAX_RETRIES = 3
"""Times Ray reruns a task whose worker process or node died (system failures only; a Python error is not
retried)."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError('--ray needs Ray, which is not installed; install the extra: pip install -e ".[ray]"') \
            from None
    return ray


def check_resources(nodes: list[dict[str, Any]], *, cpus_per_task: float, gpus_per_task: float) -> str:
    """A one-line ConfigError when no alive node of the cluster can run one task (``nodes``: ``ray.nodes()``);
    else a one-line description of the cluster."""
    alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    res = [n.get("Resources", {}) for n in alive]
    cpus = sum(r.get("CPU", 0) for r in res)
    gpus = sum(r.get("GPU", 0) for r in res)
    fits = [r for r in res if r.get("CPU", 0) >= cpus_per_task and r.get("GPU", 0) >= gpus_per_task]
    if not fits:
        biggest = max(res, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise ConfigError(
            f"no node of the Ray cluster can run a task of {cpus_per_task:g} CPU(s)"
            + (f" and {gpus_per_task:g} GPU(s)" if gpus_per_task else "")
            + f" (the cluster has {len(alive)} node(s), {cpus:g} CPUs and {gpus:g} GPUs in all; the largest node "
              f"{biggest.get('CPU', 0):g} CPUs, {biggest.get('GPU', 0):g} GPUs); lower --cpus-per-task"
            + (" / --gpus-per-task" if gpus_per_task else "") + " or add nodes")
    return f"{len(alive)} node(s), {cpus:g} CPUs, {gpus:g} GPUs"


def _inputs(store: ResultsStore, ids: list[str], target: StorageLocation, ship: list[str] | None
            ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The rows of a unit's models, and the bytes of the checkpoints of the models ``ship`` (None: none, the tasks
    read the study's storage)."""
    rows = store.rows_for(ids)
    artifacts = []
    if ship:
        for m in rows["models"]:
            if m["model_id"] not in ship:
                continue
            rel = m.get("checkpoint")
            path = target.path(rel) if rel else None
            side = target.path(sidecar_path(rel).as_posix()) if rel else None
            if path is not None and path.is_file() and side is not None and side.is_file():
                artifacts.append({"rel": rel, "sha256": m.get("checkpoint_sha256"), "data": path.read_bytes(),
                                  "sidecar": side.read_bytes()})
    return rows, artifacts


def run_study_ray(spec: StudySpec, out_dir: str | Path, *, address: str | None = None, device: str | None = None,
                  log: Log = print, command: list[str] | None = None, num_cpus: int | None = None,
                  threads: int | None = None, cpus_per_task: float = 1, gpus_per_task: float | None = None,
                  max_retries: int = MAX_RETRIES) -> StudyOutcome:
    """Run (or finish) ``spec`` into ``out_dir`` with every work unit as a Ray task; see the module docstring.

    ``address`` None starts a local Ray instance (``num_cpus`` caps it); else it joins that cluster ("auto" too).
    ``cpus_per_task``: CPUs each task asks for, and torch's thread count in it (``threads`` overrides the latter);
    ``gpus_per_task``: GPUs each task asks for (fractional: 0.25 lets four small models share one GPU; None: 1 when
    the cluster has GPUs, else 0). A cluster on which no node can run one task is a one-line error before any
    work."""
    ray = _import_ray()
    if cpus_per_task <= 0:
        raise ConfigError(f"--cpus-per-task must be > 0, got {cpus_per_task:g}")
    if gpus_per_task is not None and gpus_per_task < 0:
        raise ConfigError(f"--gpus-per-task must be >= 0, got {gpus_per_task:g}")
    out = Path(out_dir).resolve()
    runner = StudyRunner(spec, out, device=device, log=log, command=command)
    t_start = time.perf_counter()
    runner._start()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        nodes = ray.nodes()
        gpus_total = sum(n.get("Resources", {}).get("GPU", 0) for n in nodes if n.get("Alive", True))
        gpt = float(gpus_per_task if gpus_per_task is not None else (1 if gpus_total >= 1 else 0))
        cluster = check_resources(nodes, cpus_per_task=cpus_per_task, gpus_per_task=gpt)
        n_threads = int(threads if threads is not None else max(1, int(cpus_per_task)))
        dev = device if device is not None else ("cuda" if gpt > 0 else "cpu")
        opts: dict[str, Any] = {"num_cpus": cpus_per_task, "max_retries": max_retries, "retry_exceptions": False}
        if gpt > 0:
            opts["num_gpus"] = gpt
        target = runner.storage or StorageLocation(out)
        spec_json = spec.model_dump(mode="json")
        with ResultsStore(runner.outcome.db_path) as store:
            _decide_layouts(ray, runner, store, spec_json, opts, dev, n_threads)
            task = ray.remote(**opts)(_task)
            bases = [Unit(d, a, s) for d in spec.datasets for s in spec.seeds for a in spec.architectures]
            log(f"ray: {len(bases)} base task(s), {len(bases) * len(spec.methods)} method task(s) "
                f"({cpus_per_task:g} CPU" + (f", {gpt:g} GPU" if gpt else "") + f" each, {n_threads} torch "
                f"thread(s)) on {cluster}; each method task starts when its base exists")
            pending: dict[Any, Unit] = {}
            base_refs: dict[Unit, Any] = {}
            for b in bases:
                payload, chains = unit_payloads(runner, store, b, target, device=dev, threads=n_threads)
                base_ref = task.remote(payload, None)
                pending[base_ref], base_refs[b] = b, base_ref
                for c, cpay in chains:  # each starts when its base task's result (rows, checkpoint) exists
                    pending[task.remote(cpay, base_ref)] = c
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    unit = pending.pop(ref)
                    try:
                        res: UnitOutput = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001  (the task as a whole failed after Ray's retries)
                        cause = getattr(exc, "cause", None) or exc
                        if unit.method is None:
                            runner.unit_failed(unit.dataset, unit.arch, unit.seed, None, cause)
                        elif _failed(ray, base_refs[Unit(unit.dataset, unit.arch, unit.seed)]):
                            runner.base_unit_failed(unit)  # Ray passed its base task's error on
                        else:
                            runner.unit_failed(unit.dataset, unit.arch, unit.seed, unit.method, cause)
                        continue
                    commit(store, res.ops, res.artifacts, target)
                    for line in res.log:
                        log(line)
                    o = runner.outcome
                    o.models_trained += res.counts.get("models_trained", 0)
                    o.models_reused += res.counts.get("models_reused", 0)
                    o.rows_written += res.counts.get("rows_written", 0)
                    o.failures += res.failures
                    o.diverged += res.diverged
                    o.nodes[res.node or "?"] = o.nodes.get(res.node or "?", 0) + 1
        nodes = runner.outcome.nodes
        log(f"ray: units ran on {len(nodes)} node(s): " + ", ".join(f"{k[:8]} {v}" for k, v in sorted(nodes.items())))
    finally:
        if started_here:
            ray.shutdown()
    return runner._finish(t_start)


def unit_payloads(runner: StudyRunner, store: ResultsStore, base: Unit, target: StorageLocation, *, device: str,
                  threads: int) -> tuple[dict[str, Any], list[tuple[Unit, dict[str, Any]]]]:
    """What the tasks of one base unit and of its method chains get (everything they need, nothing of the driver's
    disk): the spec, the rows of their models, the bytes of the checkpoints those rows name (without ``storage``),
    the given base checkpoint (``base_models``), the layouts, and whether the base task crafts the transfer
    examples (when some chain cell still needs them)."""
    spec = runner.spec
    ship = runner.storage is None
    base_ids = runner.unit_ids(base)
    rows, arts = _inputs(store, base_ids, target, base_ids if ship else None)
    given = runner.given_base(base.dataset, base.arch, base.seed)
    if given is not None and store.get_model(base_ids[0]) is None:  # the checkpoint to start from
        _ship_given(given, arts if ship else None, runner.storage)
    chains = [Unit(base.dataset, base.arch, base.seed, m) for m in spec.methods]
    chain_ids = {c: runner.unit_ids(c) for c in chains}
    craft = bool(spec.transfer and chains and any(
        (rec := store.get_model(i)) is None or rec.get("status") != STATUS_DONE
        for ids in chain_ids.values() for i in ids[1:]))
    payload = {"spec": spec.model_dump(mode="json"), "unit": [base.dataset, base.arch, base.seed, None],
               "rows": rows, "artifacts": arts, "device": device, "threads": threads, "layouts": runner.layouts,
               "storage": spec.storage, "craft_transfer": craft, "given": runner.given}
    out = []
    for c in chains:  # the base's checkpoint comes with the base task's result, not from here
        crow, carts = _inputs(store, chain_ids[c], target, chain_ids[c][1:] if ship else None)
        out.append((c, {**payload, "unit": [c.dataset, c.arch, c.seed, c.method], "rows": crow, "artifacts": carts,
                        "craft_transfer": False}))
    return payload, out


def _ship_given(given: dict[str, Any], artifacts: list[dict[str, Any]] | None,
                storage: StorageLocation | None) -> None:
    """A ``base_models`` checkpoint for the task that loads it: its bytes with the task's inputs, or into the
    study's storage (once)."""
    path = Path(given["path"])
    side = sidecar_path(path)
    rel_side = sidecar_path(given["rel"]).as_posix()
    if artifacts is not None:
        artifacts.append({"rel": given["rel"], "sha256": given["sha256"], "data": path.read_bytes(),
                          "sidecar": side.read_bytes()})
    elif storage is not None and not storage.exists(given["rel"]):
        storage.put(side, rel_side)
        storage.put(path, given["rel"])


def _failed(ray: Any, ref: Any) -> bool:
    """Whether the (finished) task behind ``ref`` failed."""
    try:
        ray.get(ref, timeout=0)
    except Exception:  # noqa: BLE001
        return True
    return False


def _task(payload: dict[str, Any], base_out: UnitOutput | None) -> UnitOutput:
    """The Ray task (a module-level function, so that its process title names it: ``ray::_task``)."""
    from robustprune.study.unit import run_unit_task

    return run_unit_task(payload, base_out)


def _decide_layouts(ray: Any, runner: StudyRunner, store: ResultsStore, spec_json: dict[str, Any],
                    opts: dict[str, Any], device: str, threads: int) -> None:
    """The study's memory layouts: stored ones reused; missing ones measured once on a worker of the tasks' kind
    (its device type may differ from the driver's), then stored."""
    from robustprune.study.layouts import measure_layouts_task

    runner.layout_device = str(device).split(":")[0]  # the layouts are keyed by the tasks' device type

    def remote(pairs: list[tuple[str, str]]) -> dict[str, Any]:
        probe = ray.remote(**{k: v for k, v in opts.items() if k != "retry_exceptions"})(measure_layouts_task)
        return ray.get(probe.remote(spec_json, [list(p) for p in pairs], device, threads))

    runner.decide_layouts(store, measure=remote)
