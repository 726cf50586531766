"""Work units and their commit (robustprune.study.unit): a unit's journal replays to the same database rows, lands
in one transaction or not at all, artifacts are checked against their hashes, and the memory layout is decided
once per study and reused by every rerun."""

from __future__ import annotations

import pytest

from robustprune.study import ResultsStore, load_study_spec, run_study
from robustprune.study.storage import StorageLocation
from robustprune.study.unit import JournalStore, commit, publish

MODEL = {"model_id": "m1", "kind": "base", "dataset": "fashion-mnist", "architecture": "lenet5-caffe",
         "method": "unpruned", "rate": 1.0, "rate_kind": "none", "group": "none", "seed": 0,
         "checkpoint": "checkpoints/m1.safetensors"}
ROW = {"model_id": "m1", "dataset": "fashion-mnist", "architecture": "lenet5-caffe", "method": "unpruned",
       "group": "none", "rate": 1.0, "rate_kind": "none", "seed": 0, "attack": "clean", "eps": 0.0, "eps_str": "0",
       "robust_acc": 0.5, "clean_acc": 0.5, "n_eval": 10, "attack_hash": "h", "config_hash": "c"}


def _dump(store: ResultsStore) -> dict:
    rows = store.rows_for([m["model_id"] for m in store.models()] + [f["cell_id"] for f in store.failures()])
    for table in rows.values():
        for r in table:
            r.pop("created_at", None)
    return rows


def test_a_replayed_journal_gives_the_rows_the_unit_wrote(tmp_path):
    unit = JournalStore(tmp_path / "unit.sqlite")
    unit.put_model(MODEL)
    unit.put_results([ROW])
    unit.put_checks("m1", [{"name": "monotone", "passed": True}], evaluation_id="study")
    unit.put_failure({"cell_id": "m2", "step": "pruning", "error": "ValueError", "message": "boom"})
    unit.set_model_status("m1", "failed")
    ops = unit.take()
    assert [op[0] for op in ops] == ["put_model", "put_results", "put_checks", "put_failure", "set_model_status"]
    assert unit.take() == []
    with ResultsStore(tmp_path / "results.sqlite") as driver:
        commit(driver, ops, [], StorageLocation(tmp_path))
        assert _dump(driver) == _dump(unit)
        assert driver.get_model("m1")["status"] == "failed" and len(driver.results()) == 1
        commit(driver, ops, [], StorageLocation(tmp_path))  # committed twice (a retried task): stored once
        assert len(driver.results()) == 1 and len(driver.models()) == 1 and len(driver.checks()) == 1


def test_a_unit_lands_whole_or_not_at_all(tmp_path):
    unit = JournalStore(tmp_path / "unit.sqlite")
    unit.put_model(MODEL)
    unit.put_results([ROW])
    ops = unit.take() + [("put_results", ([{**ROW, "not_a_column": 1}],), {})]
    with ResultsStore(tmp_path / "results.sqlite") as driver:
        with pytest.raises(ValueError, match="not_a_column"):
            commit(driver, ops, [], StorageLocation(tmp_path))
        assert driver.models() == [] and driver.results() == []
        with pytest.raises(ValueError, match="not a unit's store operation"):
            commit(driver, [("set_meta", ("k", 1), {})], [], StorageLocation(tmp_path))


def test_artifacts_are_checked_against_the_hash_their_row_holds(tmp_path):
    from robustprune.checkpoint import sha256_bytes

    scratch, target = tmp_path / "scratch", tmp_path / "study"
    (scratch / "checkpoints").mkdir(parents=True)
    (scratch / "checkpoints" / "m1.safetensors").write_bytes(b"weights")
    (scratch / "checkpoints" / "m1.json").write_text("{}")
    ops = [("put_model", ({**MODEL, "checkpoint_sha256": sha256_bytes(b"weights")},), {})]
    items = publish(ops, scratch, how="data", storage=None)
    assert items[0]["data"] == b"weights"
    bad = [{**items[0], "data": b"corrupted"}]
    with ResultsStore(tmp_path / "results.sqlite") as driver:
        with pytest.raises(RuntimeError, match="content hash"):
            commit(driver, ops, bad, StorageLocation(target))
        assert driver.models() == [] and not (target / "checkpoints" / "m1.safetensors").exists()
        commit(driver, ops, items, StorageLocation(target))
        assert (target / "checkpoints" / "m1.safetensors").read_bytes() == b"weights"
        assert (target / "checkpoints" / "m1.json").read_text() == "{}"
        assert driver.get_model("m1")["checkpoint_sha256"] == sha256_bytes(b"weights")


TINY = {"name": "layouts", "architectures": ["lenet-mnist-w"], "width": 2, "train_limit": 600, "val_size": 100,
        "eval_n": 50, "base_train": {"epochs": 1, "batch_size": 100, "progress": False, "val_size": 50},
        "methods": ["magnitude-unstructured-global"], "compression": [1, 2],
        "method_settings": {"magnitude-unstructured-global": {"finetune": {"batch_size": 100}}},
        "finetune_limit": 200, "prune_epochs": 1, "attacks": [{"name": "pgd", "eps": [0.1], "steps": 2}]}


@pytest.mark.usefixtures("fmnist_available", "one_thread")
def test_the_layout_is_decided_once_per_study_and_reused_by_every_rerun(tmp_path, monkeypatch):
    import robustprune.precision as precision

    calls = []

    def fake(answer):
        def faster_layout(model, x, **kw):
            calls.append(answer)
            return answer, 2.0 if answer else 0.5
        return faster_layout

    monkeypatch.setattr(precision, "faster_layout", fake(True))
    out = tmp_path / "study"
    first = run_study(load_study_spec(None, TINY), out, log=lambda m: None)
    assert first.ok and calls == [True]
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        assert store.get_meta("layouts") == {"cpu|fashion-mnist|lenet-mnist-w*2": True}
        rows = {(r["model_id"], r["attack"]): r["robust_acc"] for r in store.results()}
    # the machine now "measures" the other layout: a rerun (here with one more budget) keeps the stored choice
    monkeypatch.setattr(precision, "faster_layout", fake(False))
    more = {**TINY, "attacks": [{"name": "pgd", "eps": [0.1, 0.2], "steps": 2}]}
    again = run_study(load_study_spec(None, more), out, log=lambda m: None)
    assert again.ok and again.models_trained == 0 and calls == [True]
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        assert store.get_meta("layouts") == {"cpu|fashion-mnist|lenet-mnist-w*2": True}
        kept = {(r["model_id"], r["attack"]): r["robust_acc"] for r in store.results() if r["eps_str"] != "0.2"}
    assert kept == rows
    assert "Memory layout" in (out / "report.md").read_text()


@pytest.mark.usefixtures("fmnist_available", "one_thread")
def test_a_study_with_storage_keeps_its_checkpoints_there_and_still_exports(tmp_path):
    """``storage``: the checkpoints are written there, not into the study folder; a rerun reuses them from there;
    exporting fetches them first."""
    from robustprune.study.exports import export_study

    spec = load_study_spec(None, {**TINY, "storage": str(tmp_path / "bucket"), "channels_last": False})
    out = tmp_path / "study"
    first = run_study(spec, out, log=lambda m: None)
    assert first.ok and first.models_trained == 2
    assert len(list((tmp_path / "bucket" / "checkpoints").glob("*.safetensors"))) == 2
    assert not list(out.glob("checkpoints/*.safetensors"))
    again = run_study(spec, out, log=lambda m: None)
    assert again.models_trained == 0 and again.models_reused == 2
    counts = export_study(out, ["torchscript"], n=20, log=lambda m: None)
    assert counts == {"exported": 2, "reused": 0, "failed": 0}
