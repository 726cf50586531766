"""The same study in-process and on a 2-node Ray cluster on this machine, with the worker node unable to see the
driver's folder (docs/distributed.md): wall times, their ratio, and whether the rows are identical.

    python3 bench/bench_study_cluster.py [--study bench/study_cluster.yaml] [--threads 1]

Needs root (``unshare -m`` hides the study folder from the worker node) and the ``ray`` extra. The in-process run
uses ``--threads`` torch threads (each cluster task uses 1: ``--cpus-per-task 1``); with ``--threads 1`` the rows
must be identical. Measure with nothing else running."""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def rows(db: Path) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = {r[:5]: r[5:] for r in con.execute(
        "SELECT model_id, attack, eps_str, n_eval, seed, robust_acc, clean_acc, achieved_sparsity FROM results")}
    con.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "bench" / "study_cluster.yaml"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the in-process run")
    args = ap.parse_args()
    from test_study_cluster import Cluster  # the tests' 2-node cluster on loopback addresses

    root = Path(tempfile.mkdtemp(prefix="rp-cluster-bench-"))
    hidden = root / "driver"
    hidden.mkdir()
    cluster = Cluster(root, hidden)
    env = {**cluster.env, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    local = subprocess.run([sys.executable, "-c", f"import torch; torch.set_num_threads({args.threads}); "
                            "from robustprune.cli.main import main; main()", "study", args.study, "--out",
                            str(hidden / "in-process")], env=env, capture_output=True, text=True)
    t_local = time.perf_counter() - t0
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    try:
        cluster.start_head()
        cluster.add_worker("worker1")
        cluster.wait_nodes(2)
        t0 = time.perf_counter()
        remote = subprocess.run([sys.executable, "-m", "robustprune", "study", args.study, "--out",
                                 str(hidden / "cluster"), "--ray-address", cluster.address, "--cpus-per-task", "1"],
                                env=cluster.env, capture_output=True, text=True)
        t_cluster = time.perf_counter() - t0
        assert remote.returncode == 0, remote.stdout[-2000:] + remote.stderr[-2000:]
    finally:
        cluster.stop()
    a, b = rows(hidden / "in-process" / "results.sqlite"), rows(hidden / "cluster" / "results.sqlite")
    print(next(ln for ln in local.stdout.splitlines() if ln.startswith("study ")))
    print(next(ln for ln in remote.stdout.splitlines() if "units ran on" in ln))
    print(f"in-process ({args.threads} torch thread(s)): {t_local:.0f} s")
    print(f"2-node cluster (1 CPU per node, 1 thread per task): {t_cluster:.0f} s (cluster start not counted)")
    print(f"wall-time ratio in-process / cluster: {t_local / t_cluster:.2f}")
    print(f"rows: {len(a)} in-process, {len(b)} on the cluster, identical: {a == b}")


if __name__ == "__main__":
    main()
