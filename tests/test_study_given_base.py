"""A study that starts from a given checkpoint (study key ``base_models``) trains no base model, says where the
base came from, and takes the file's hash as the base's identity."""

from __future__ import annotations

import pytest
import torch

from robustprune.errors import ConfigError
from robustprune.study import ResultsStore, load_study_spec, run_study

pytestmark = pytest.mark.usefixtures("fmnist_available", "one_thread")

SPEC = {"name": "given", "architectures": ["lenet-mnist-w"], "width": 2, "train_limit": 600, "val_size": 100,
        "eval_n": 50, "methods": ["magnitude-unstructured-global"], "compression": [1, 2], "prune_epochs": 1,
        "method_settings": {"magnitude-unstructured-global": {"finetune": {"batch_size": 100}}},
        "finetune_limit": 200, "attacks": [{"name": "pgd", "eps": [0.1], "steps": 2}], "channels_last": False}


def _checkpoint(path, arch="lenet-mnist-w", width=2.0, seed=0):
    from robustprune.checkpoint import save_checkpoint
    from robustprune.data import get_spec
    from robustprune.models import model_for_dataset

    ds = get_spec("fashion-mnist")
    torch.manual_seed(seed)
    model = model_for_dataset(arch, ds, width=width)
    save_checkpoint(path, model, meta={"architecture": arch, "dataset": ds.name, "num_classes": ds.num_classes,
                                       "input_shape": list(ds.shape), "width": width, "mean": list(ds.mean),
                                       "std": list(ds.std)})
    return model


def test_a_given_base_is_not_trained_and_the_report_says_where_it_came_from(tmp_path, monkeypatch):
    import robustprune.study.runner as runner_mod

    given = _checkpoint(tmp_path / "robust.safetensors")
    base_fits = []
    real_fit = runner_mod.fit
    monkeypatch.setattr(runner_mod, "fit", lambda *a, **k: base_fits.append(1) or real_fit(*a, **k))
    spec = load_study_spec(None, {**SPEC, "base_models": {"fashion-mnist/lenet-mnist-w": str(tmp_path /
                                                                                            "robust.safetensors")}})
    out = tmp_path / "study"
    res = run_study(spec, out, log=lambda m: None)
    assert res.ok, res.summary()
    assert base_fits == [] and res.models_trained == 1  # the pruned model only
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        base = next(m for m in store.models() if m["kind"] == "base")
        assert base["metrics"]["given"]["file"] == "robust.safetensors" and base["train_steps"] == 0
        from robustprune.checkpoint import load_checkpoint

        stored, _, _ = load_checkpoint(out / base["checkpoint"])
        for k, v in given.state_dict().items():
            assert torch.equal(stored.state_dict()[k], v), k
        first_id = base["model_id"]
    assert "given: robust.safetensors" in (out / "report.md").read_text()
    # a changed file is a new base model (its hash is the base's identity)
    _checkpoint(tmp_path / "robust.safetensors", seed=1)
    again = run_study(spec, out, log=lambda m: None)
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        ids = {m["model_id"] for m in store.models() if m["kind"] == "base"}
    assert again.models_trained == 1 and first_id in ids and len(ids) == 2


def test_a_given_base_that_does_not_fit_is_an_error_before_any_work(tmp_path, monkeypatch):
    import robustprune.study.runner as runner_mod

    _checkpoint(tmp_path / "lenet5.safetensors", arch="lenet5-caffe", width=1.0)
    monkeypatch.setattr(runner_mod, "fit", lambda *a, **k: pytest.fail("work started"))
    bad = {**SPEC, "base_models": {"fashion-mnist/lenet-mnist-w": str(tmp_path / "lenet5.safetensors")}}
    with pytest.raises(ConfigError, match=r"base_models: .*lenet5\.safetensors.* is a lenet5-caffe"):
        run_study(load_study_spec(None, bad), tmp_path / "s1", log=lambda m: None)
    missing = {**SPEC, "base_models": {"fashion-mnist/lenet-mnist-w": str(tmp_path / "nope.safetensors")}}
    with pytest.raises(ConfigError, match=r"base_models: checkpoint .*nope\.safetensors .* not found"):
        run_study(load_study_spec(None, missing), tmp_path / "s2", log=lambda m: None)
    with pytest.raises(ConfigError, match="base_models key 'fashion-mnist/vgg16' names architecture"):
        load_study_spec(None, {**SPEC, "base_models": {"fashion-mnist/vgg16": "x.safetensors"}})
    with pytest.raises(ConfigError, match="names seed 3"):
        load_study_spec(None, {**SPEC, "base_models": {"fashion-mnist/lenet-mnist-w/3": "x.safetensors"}})


def test_a_task_on_a_node_without_the_driver_s_disk_starts_from_the_shipped_checkpoint(tmp_path):
    """The Ray runner's task function, called directly: the given file is gone from where the driver saw it (a
    worker node cannot see it), its bytes travel with the task's inputs, and the chain task gets the base task's
    result; what they return, committed by the driver, is the in-process study's rows."""
    import shutil

    from robustprune.study.ray_runner import unit_payloads
    from robustprune.study.runner import StudyRunner
    from robustprune.study.storage import StorageLocation
    from robustprune.study.unit import Unit, commit, run_unit_task

    _checkpoint(tmp_path / "given" / "robust.safetensors")
    spec = load_study_spec(None, {**SPEC, "transfer": True,
                                  "base_models": {"fashion-mnist/lenet-mnist-w": str(tmp_path / "given" /
                                                                                     "robust.safetensors")}})
    local = run_study(spec, tmp_path / "in-process", log=lambda m: None)
    out = tmp_path / "driver"
    runner = StudyRunner(spec, out, log=lambda m: None)
    runner._start()
    with ResultsStore(out / "results.sqlite") as store:
        runner.decide_layouts(store)
        payload, chains = unit_payloads(runner, store, Unit("fashion-mnist", "lenet-mnist-w", 0), StorageLocation(out),
                                        device="cpu", threads=1)
        shutil.rmtree(tmp_path / "given")  # the worker node does not have it
        base_out = run_unit_task(payload)
        assert base_out.transfer and base_out.provides
        outs = [base_out] + [run_unit_task(p, base_out) for _, p in chains]
        assert not list(out.glob("checkpoints/*"))  # the tasks wrote nothing into the study folder
        for o in outs:
            commit(store, o.ops, o.artifacts, StorageLocation(out))
    key = ("model_id", "attack", "eps_str", "robust_acc", "clean_acc")
    with ResultsStore(tmp_path / "in-process" / "results.sqlite", readonly=True) as a, \
            ResultsStore(out / "results.sqlite", readonly=True) as b:
        assert sorted(tuple(r[k] for k in key) for r in a.results()) == \
            sorted(tuple(r[k] for k in key) for r in b.results())
        assert len(b.models()) == 2 and local.ok
