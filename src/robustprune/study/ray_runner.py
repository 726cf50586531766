"""Run a study's cells as Ray tasks: on a local Ray instance (``--ray``) or an existing cluster (``--ray-address``).

The work units are those of :class:`StudyRunner` (one base cell per dataset/architecture/seed, then one method chain
per dataset/architecture/seed/method from the stored base model); each task runs one unit with the same code as the
in-process runner and commits its cells to the same SQLite store, so finished cells are reused, a killed study
resumes, and the rows are those of the in-process runner. No scheduler of our own: Ray places the tasks. A cell that
fails inside a task is stored by the task (as in-process); a task that fails as a whole (its worker died) has its
unfinished cells stored as failed by the driver, and the study goes on with the other tasks. On a
multi-machine cluster the output folder must be on a file system every node sees (SQLite WAL needs a local or
properly locking one).

Ray is an optional extra, imported lazily: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from robustprune.errors import ConfigError
from robustprune.study.runner import Log, StudyOutcome, StudyRunner
from robustprune.study.spec import StudySpec


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError('--ray needs Ray, which is not installed; install the extra: pip install -e ".[ray]"') \
            from None
    return ray


def _unit(spec_json: dict[str, Any], out_dir: str, device: str | None, dataset: str, arch: str, seed: int,
          method: str | None, threads: int | None = None) -> dict[str, Any]:
    """One Ray task: run one work unit in the worker process and return its counts and log lines. ``threads``:
    torch's intra-op thread count (the driver's), so that CPU float reductions run in the same order as
    in-process and the rows are bit-identical (Ray workers otherwise start torch with 1 thread)."""
    import torch

    from robustprune.study.spec import StudySpec as _Spec

    if threads is not None:
        torch.set_num_threads(int(threads))
    lines: list[str] = []
    runner = StudyRunner(_Spec.model_validate(spec_json), out_dir, device=device, log=lines.append, progress=False)
    counts = runner.run_unit(dataset, arch, seed, method)
    return {**counts, "log": lines}


def run_study_ray(spec: StudySpec, out_dir: str | Path, *, address: str | None = None, device: str | None = None,
                  log: Log = print, command: list[str] | None = None, num_cpus: int | None = None,
                  threads: int | None = None) -> StudyOutcome:
    """Run (or finish) ``spec`` into ``out_dir`` with every work unit as a Ray task; see the module docstring.
    ``address`` None starts a local Ray instance (``num_cpus`` caps it); else it joins that cluster ("auto" too).
    Tasks ask for one GPU each when the cluster has GPUs, else one CPU. ``threads``: torch threads per task (None:
    the driver's ``torch.get_num_threads()``, which makes the rows identical to the in-process runner's on the same
    machine; pass 1 to avoid oversubscribing the CPUs when many tasks run at once)."""
    import torch

    ray = _import_ray()
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
        gpus = float(ray.cluster_resources().get("GPU", 0))
        opts = {"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else {"num_cpus": 1}
        task = ray.remote(**opts)(_unit)
        spec_json = spec.model_dump(mode="json")
        dev = device if device is not None else ("cuda" if gpus >= 1 else None)
        bases, chains = runner.units()
        log(f"ray: {len(bases)} base task(s), then {len(chains)} method task(s) "
            f"({'1 GPU' if gpus >= 1 else '1 CPU'} each) on {ray.cluster_resources().get('CPU', 0):g} CPUs, "
            f"{gpus:g} GPUs")
        for wave in ([(d, a, s, None) for d, a, s in bases], chains):
            n_threads = threads if threads is not None else torch.get_num_threads()
            futures = [task.remote(spec_json, str(out), dev, d, a, s, m, n_threads) for d, a, s, m in wave]
            for unit, future in zip(wave, futures):
                try:
                    res = ray.get(future)
                except Exception as exc:  # noqa: BLE001  (the task as a whole failed: its cells are stored as such)
                    d, a, s, m = unit
                    runner.unit_failed(d, a, s, m, getattr(exc, "cause", None) or exc)
                    continue
                for line in res["log"]:
                    log(line)
                runner.outcome.models_trained += res["models_trained"]
                runner.outcome.models_reused += res["models_reused"]
                runner.outcome.rows_written += res["rows_written"]
                runner.outcome.failures += res.get("failures", [])
                runner.outcome.diverged += res.get("diverged", [])
    finally:
        if started_here:
            ray.shutdown()
    return runner._finish(t_start)
