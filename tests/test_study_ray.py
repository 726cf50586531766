"""The Ray runner gives the same rows as the in-process runner on a tiny grid (Ray started locally here)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from robustprune.study import ResultsStore, load_study_spec, run_study

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='ray not installed (pip install -e ".[ray]")')

TINY = {
    "name": "tiny-ray", "architectures": ["lenet-mnist-w"], "width": 4, "train_limit": 1000, "val_size": 200,
    "eval_n": 100, "base_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 5e-3,
                                  "weight_decay": 0, "progress": False, "val_size": 100},
    "method_settings": {m: {"finetune": {"batch_size": 100, "optimizer": "adam", "lr": 1e-3}}
                        for m in ("magnitude-unstructured-global", "random-filter-local")},
    "method_rates": {},
    "finetune_limit": 300, "methods": ["magnitude-unstructured-global", "random-filter-local"],
    "compression": [1, 2], "attacks": [{"name": "pgd", "eps": [0.1], "steps": 3}],
    "channels_last": True,  # one layout for both runs (each study folder would decide its own by timing)
}
KEY = ("model_id", "method", "rate", "attack", "eps_str", "seed")
VALUES = ("robust_acc", "clean_acc", "achieved_sparsity", "params_nonzero", "flops_effective", "n_eval")


def _rows(out):
    with ResultsStore(out / "results.sqlite") as store:
        return {tuple(r[k] for k in KEY): {k: r[k] for k in VALUES} for r in store.results()}


@needs_ray
@pytest.mark.cluster  # starts Ray: with the real-cluster tests, as their own step
@pytest.mark.usefixtures("fmnist_available")
def test_ray_runner_gives_the_in_process_rows(tmp_path, monkeypatch):
    import ray

    from robustprune.study.ray_runner import run_study_ray

    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = load_study_spec(None, TINY)
    local = run_study(spec, tmp_path / "local", log=lambda m: None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"ROBUSTPRUNE_DEVICE": os.environ.get("ROBUSTPRUNE_DEVICE", "cpu"),
                                       "OMP_NUM_THREADS": "1"}})
    try:
        # torch's thread count changes CPU float reductions: the tasks use the in-process run's (--cpus-per-task)
        threads = torch.get_num_threads()
        remote = run_study_ray(spec, tmp_path / "ray", log=lambda m: None, threads=threads)
        again = run_study_ray(spec, tmp_path / "ray", log=lambda m: None, threads=threads)
    finally:
        ray.shutdown()
    n_models = 1 + 2
    assert local.models_trained == remote.models_trained == n_models
    n_rows = n_models * 2 + (n_models - 1)  # clean + 1 budget each, + 1 transfer row per pruned model
    assert remote.rows_written == local.rows_written == n_rows
    assert again.models_trained == 0 and again.rows_written == 0 and again.models_reused == n_models
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == n_rows
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
    assert (tmp_path / "ray" / "report.html").exists()


def test_ray_missing_is_a_one_line_error(monkeypatch):
    import builtins

    from robustprune.errors import ConfigError
    from robustprune.study import ray_runner

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"\[ray\]"):
        ray_runner._import_ray()


@needs_ray
@pytest.mark.cluster
@pytest.mark.usefixtures("fmnist_available")
def test_a_python_error_in_a_cell_is_stored_once_not_retried_and_the_study_goes_on(tmp_path, monkeypatch):
    """A cell that fails deterministically (a Python error in one method's pruning, put into every Ray worker by a
    setup hook) is stored once as that cell's failure with one attempt, on Ray as in-process; the other method's
    cells finish."""
    from pathlib import Path

    import ray

    import ray_failing_cell
    from robustprune.methods import get_method
    from robustprune.study.ray_runner import run_study_ray

    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    cls = type(get_method(ray_failing_cell.FAILING))
    monkeypatch.setattr(cls, "prune_many", cls.prune_many)  # both restored after the test
    monkeypatch.setattr(cls, "_rp_failing", False, raising=False)
    ray_failing_cell.install()
    spec = load_study_spec(None, {**TINY, "channels_last": None})  # the layout decided by a probe task, stored
    local = run_study(spec, tmp_path / "local", log=lambda m: None)
    tests = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"ROBUSTPRUNE_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": tests},
                          "worker_process_setup_hook": "ray_failing_cell.install"})
    try:
        remote = run_study_ray(spec, tmp_path / "ray", log=lambda m: None)
    finally:
        ray.shutdown()
    for out, res in ((tmp_path / "local", local), (tmp_path / "ray", remote)):
        assert [(f["method"], f["step"]) for f in res.failures] == [("random-filter-local", "pruning")]
        with ResultsStore(out / "results.sqlite") as store:
            (f,) = store.failures()
            assert f["attempts"] == 1 and f["error"] == "ValueError" and "on purpose" in f["message"]
            assert {m["method"] for m in store.models()} == {"unpruned", "magnitude-unstructured-global"}
            assert list(store.get_meta("layouts")) == ["cpu|fashion-mnist|lenet-mnist-w*4"]


def test_a_cluster_that_cannot_run_one_task_is_a_one_line_error():
    from robustprune.errors import ConfigError
    from robustprune.study.ray_runner import check_resources

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    assert check_resources(nodes, cpus_per_task=4, gpus_per_task=0.25) == "2 node(s), 6 CPUs, 1 GPUs"
    with pytest.raises(ConfigError, match=r"no node of the Ray cluster can run a task of 1 CPU\(s\) and 2 GPU\(s\) "
                                          r"\(the cluster has 2 node\(s\), 6 CPUs and 1 GPUs.*--gpus-per-task"):
        check_resources(nodes, cpus_per_task=1, gpus_per_task=2)
    with pytest.raises(ConfigError, match=r"task of 8 CPU\(s\).*largest node 4 CPUs.*lower --cpus-per-task"):
        check_resources(nodes, cpus_per_task=8, gpus_per_task=0)
