"""A study on a real 2-node Ray cluster on this machine, with token authentication, whose worker node cannot see the
driver's study folder (it runs in its own mount namespace with an empty file system mounted over that folder): the
rows are those of the in-process runner, and a killed worker, a removed node and a killed driver lose nothing and
store nothing twice.

These tests start Ray processes (``ray start``) and need root for ``unshare -m`` (CI runs as root); they are marked
``cluster`` and run as their own step of the test command (README)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from robustprune.study import ResultsStore, load_study_spec, run_study

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("fmnist_available")]

pytest.importorskip("ray", reason='ray not installed (pip install -e ".[ray]")')

SPEC = {
    "name": "cluster", "architectures": ["lenet-mnist-w"], "width": 4, "train_limit": 1000, "val_size": 200,
    "eval_n": 100, "seeds": [0, 1],
    "base_train": {"epochs": 2, "batch_size": 100, "optimizer": "adam", "lr": 5e-3, "weight_decay": 0,
                   "progress": False, "val_size": 100},
    "method_settings": {m: {"finetune": {"batch_size": 100, "optimizer": "adam", "lr": 1e-3}}
                        for m in ("magnitude-unstructured-global", "random-filter-local")},
    "finetune_limit": 300, "methods": ["magnitude-unstructured-global", "random-filter-local"],
    "prune_epochs": 2, "compression": [1, 2, 4], "attacks": [{"name": "pgd", "eps": [0.1], "steps": 3}],
    # one layout for the in-process reference and every cluster run: each study folder would otherwise decide its
    # own by timing (stored and reused within a study: tests/test_study_units.py)
    "channels_last": True,
}
N_MODELS = 2 * (1 + 2 * 2)  # 2 seeds x (base + 2 methods x 2 rates)
KEY = ("model_id", "method", "rate", "attack", "eps_str", "seed")
VALUES = ("robust_acc", "clean_acc", "achieved_sparsity", "params_nonzero", "flops_effective", "n_eval",
          "filters_removed")


def _rows(out: Path) -> dict:
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        return {tuple(r[k] for k in KEY): {k: r[k] for k in VALUES} for r in store.results()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mnt_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _pids(title: str | None = None, ns: str | None = None) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title is not None and title not in cmd:
            continue
        if ns is not None and _mnt_ns(p) != ns:
            continue
        out.append(int(p))
    return out


class Cluster:
    """A head node (1 CPU) and worker nodes (1 CPU each), each on its own loopback address (127.0.0.2, .3, ...:
    Ray would replace 127.0.0.1 by the machine's network address), token authentication on; each worker node in
    its own mount namespace with an empty tmpfs over ``hidden``."""

    def __init__(self, root: Path, hidden: Path) -> None:
        self.root, self.hidden = root, hidden
        self.port = _free_port()
        self.address = f"127.0.0.2:{self.port}"
        token = root / "ray-token"
        token.write_text(os.urandom(32).hex())
        token.chmod(0o600)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "OMP_NUM_THREADS": "1"}
        self.workers: list[str] = []  # mount namespaces of the worker nodes

    def start_head(self) -> None:
        subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.2", f"--port={self.port}",
                        "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
                       env=self.env, check=True, capture_output=True, timeout=120)

    def add_worker(self, name: str) -> str:
        """A worker node that cannot see ``hidden``; returns its mount namespace."""
        ns_file = self.root / f"{name}.ns"
        script = (f"readlink /proc/self/ns/mnt > {ns_file} && mount -t tmpfs tmpfs {self.hidden} && "
                  f"exec ray start --address={self.address} --node-ip-address=127.0.0.{3 + len(self.workers)} "
                  "--num-cpus=1 "
                  f"--resources='{{\"{name}\": 1}}' --disable-usage-stats")
        subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=self.env, check=True,
                       capture_output=True, timeout=120)
        ns = ns_file.read_text().strip()
        self.workers.append(ns)
        return ns

    def python(self, code: str) -> str:
        """Run ``code`` in a driver process connected to the cluster; what it passed to ``result(...)``. Ray's
        own messages (e.g. "raylet has lagging heartbeats" on a loaded machine) go to the same stdout, so the
        value is marked rather than taken from the last line."""
        mark = "@@result "
        r = subprocess.run([sys.executable, "-c", f"import ray\nray.init(address={self.address!r}, "
                            f"log_to_driver=False)\ndef result(v):\n    print({mark!r} + str(v), flush=True)\n"
                            f"{code}"], env=self.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        values = [line[len(mark):] for line in r.stdout.splitlines() if line.startswith(mark)]
        assert len(values) == 1, f"expected one result line, got: {r.stdout[-2000:]}"
        return values[0]

    def alive_nodes(self) -> int:
        return int(self.python("result(sum(1 for n in ray.nodes() if n['Alive']))"))

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        end = time.time() + timeout
        while self.alive_nodes() != n:
            if time.time() > end:
                raise TimeoutError(f"cluster has {self.alive_nodes()} alive nodes, expected {n}")
            time.sleep(0.5)

    def stop(self) -> None:
        subprocess.run(["ray", "stop", "--force"], env=self.env, capture_output=True, timeout=120)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ray") is None:
        return False
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not _can_unshare():
        pytest.skip("needs `unshare -m` (root) and the ray command to hide the study folder from a worker node")
    root = tmp_path_factory.mktemp("cluster")
    hidden = root / "driver"  # every study folder of these tests lives here: the worker nodes see an empty folder
    hidden.mkdir()
    c = Cluster(root, hidden)
    try:
        c.start_head()
        c.add_worker("worker1")
        c.wait_nodes(2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def in_process_rows(tmp_path_factory) -> dict:
    """The rows of SPEC run in-process with one torch thread (what each cluster task uses)."""
    out = tmp_path_factory.mktemp("in-process") / "study"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_study(load_study_spec(None, SPEC), out, log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    assert res.ok and res.models_trained == N_MODELS, res.summary()
    return _rows(out)


def _study_cmd(cluster: Cluster, out: Path, spec: dict | None = None) -> list[str]:
    study = out.parent / f"{out.name}.yaml"
    study.parent.mkdir(parents=True, exist_ok=True)
    study.write_text(yaml.safe_dump(spec or SPEC))
    return [sys.executable, "-m", "robustprune", "study", str(study), "--out", str(out), "--ray-address",
            cluster.address, "--cpus-per-task", "1"]


def _run(cluster: Cluster, out: Path, spec: dict | None = None) -> str:
    """The study as a user runs it on the cluster (the CLI, a driver process of its own); its output."""
    r = subprocess.run(_study_cmd(cluster, out, spec), env=cluster.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _assert_same(out: Path, expected: dict) -> None:
    got = _rows(out)
    assert got.keys() == expected.keys()
    assert got == expected  # bit-identical: same layout, same thread count, same seeds
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        assert len(store.models()) == N_MODELS and not store.failures()
        ids = [r["model_id"] for r in store.models()]
    assert len(ids) == len(set(ids))


def test_no_shared_file_system_gives_the_in_process_rows(cluster, in_process_rows):
    out = cluster.hidden / "no-shared-fs"
    out.mkdir()
    (out / "marker").write_text("driver's disk")
    seen = cluster.python("import os\n@ray.remote(num_cpus=0, resources={'worker1': 0.01})\ndef sees(p):\n"
                          f"    return os.path.exists(p)\nresult(ray.get(sees.remote({str(out / 'marker')!r})))")
    assert seen == "False", "the worker node must not see the driver's folder"
    (out / "marker").unlink()
    text = _run(cluster, out)
    assert f"{N_MODELS} models trained, 0 reused" in text
    assert "units ran on 2 node(s)" in text, text
    _assert_same(out, in_process_rows)
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        for rec in store.models():
            assert (out / rec["checkpoint"]).is_file()  # every checkpoint reached the driver's disk
    again = _run(cluster, out)
    assert f"0 models trained, {N_MODELS} reused, 0 result rows written" in again


def test_storage_folder_holds_the_checkpoints(cluster, in_process_rows, tmp_path):
    """With ``storage`` (a folder every node reaches, standing in for a bucket) the tasks write the checkpoints
    there and the driver's folder only gets the database and the report."""
    out, storage = cluster.hidden / "with-storage", tmp_path / "bucket"
    _run(cluster, out, {**SPEC, "storage": str(storage)})
    _assert_same(out, in_process_rows)
    assert not list(out.glob("checkpoints/*.safetensors"))
    assert len(list((storage / "checkpoints").glob("*.safetensors"))) == N_MODELS


def _kill_when(pred, stop: threading.Event, timeout: float = 120) -> list[int]:
    """SIGKILL the processes ``pred()`` returns, once, as soon as there are any."""
    end = time.time() + timeout
    while time.time() < end and not stop.is_set():
        pids = pred()
        if pids:
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return pids
        time.sleep(0.02)
    return []


def _killed_mid_study(cluster: Cluster, out: Path, pred) -> list[int]:
    """Run the study's driver, SIGKILL what ``pred()`` returns once it returns anything, let the study finish."""
    proc = subprocess.Popen(_study_cmd(cluster, out), env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    done = threading.Event()
    killed: list[int] = []
    t = threading.Thread(target=lambda: killed.extend(_kill_when(pred, done)))
    t.start()
    try:
        text, _ = proc.communicate(timeout=300)
    finally:
        done.set()
        t.join()
    assert proc.returncode == 0, text[-3000:]
    return killed


def test_a_worker_killed_mid_task_is_retried_and_every_row_stored_once(cluster, in_process_rows):
    out = cluster.hidden / "worker-killed"
    killed = _killed_mid_study(cluster, out, lambda: _pids("ray::_task")[:1])
    assert killed, "no task process was seen to kill"
    _assert_same(out, in_process_rows)


def test_a_node_removed_mid_study_has_its_tasks_rerun_elsewhere(cluster, in_process_rows):
    ns = cluster.add_worker("worker2")
    cluster.wait_nodes(3)
    out = cluster.hidden / "node-removed"
    # the whole node (its raylet, object store and workers) dies once it runs a task
    killed = _killed_mid_study(cluster, out, lambda: _pids(ns=ns) if _pids("ray::_task", ns=ns) else [])
    assert killed, "the node to remove never ran a task"
    _assert_same(out, in_process_rows)
    cluster.wait_nodes(2)


def test_a_killed_driver_resumes_on_rerun_with_every_committed_cell_reused(cluster, in_process_rows):
    out = cluster.hidden / "driver-killed"
    cmd = _study_cmd(cluster, out)
    proc = subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "results.sqlite"
    committed: list[str] = []
    end = time.time() + 180
    try:
        while time.time() < end and proc.poll() is None:
            if db.exists():
                try:
                    with ResultsStore(db, readonly=True) as store:
                        committed = [m["model_id"] for m in store.models()]
                except Exception:  # noqa: BLE001 - the file is being created
                    committed = []
                if 2 <= len(committed) < N_MODELS:
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    assert 2 <= len(committed) < N_MODELS, f"the driver was to be killed mid-study ({len(committed)} models)"
    with ResultsStore(db, readonly=True) as store:
        before = {m["model_id"]: m["created_at"] for m in store.models()}
    text = _run(cluster, out)
    assert f"{N_MODELS - len(before)} models trained, {len(before)} reused" in text
    with ResultsStore(db, readonly=True) as store:
        after = {m["model_id"]: m["created_at"] for m in store.models()}
    assert all(after[k] == v for k, v in before.items())  # committed cells were reused, not redone
    _assert_same(out, in_process_rows)
