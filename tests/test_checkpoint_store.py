"""Checkpoints round-trip bit-exactly without pickle; the results store is atomic and keyed."""

from __future__ import annotations

import json

import pytest
import torch

from robustprune.checkpoint import load_checkpoint, save_checkpoint
from robustprune.errors import CheckpointError
from robustprune.models import create_model
from robustprune.sparsity import compute_masks
from robustprune.study.store import ResultsStore

META = {"architecture": "lenet5-caffe", "dataset": "fashion-mnist", "num_classes": 10, "input_shape": [1, 28, 28],
        "width": 1.0, "mean": [0.286], "std": [0.353], "config": {"note": "test"}}


def _model():
    torch.manual_seed(3)
    return create_model("lenet5-caffe", num_classes=10, in_channels=1, input_size=28, mean=(0.286,), std=(0.353,))


def test_checkpoint_round_trip_is_bit_exact_with_masks(tmp_path):
    model = _model()
    masks = compute_masks(model, group="kernel", score="magnitude", scope="local", keep=0.5)
    masks.apply(model)
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta=META, masks=masks)
    loaded, meta, lmasks = load_checkpoint(path)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2) and v.dtype == v2.dtype
    assert set(lmasks.masks) == set(masks.masks)
    for k in masks.masks:
        assert torch.equal(masks.masks[k].bool(), lmasks.masks[k].bool())
    assert meta["config"] == {"note": "test"}
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model.eval()(x), loaded(x))
    assert json.loads((tmp_path / "m.json").read_text())["masks"]


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    path = save_checkpoint(tmp_path / "m.safetensors", _model(), meta=META)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt") as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(path)


def test_checkpoint_for_the_wrong_architecture_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model(), meta=META)
    side = json.loads((tmp_path / "m.json").read_text())
    side["architecture"] = "cnn5"
    (tmp_path / "m.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)


def _row(model_id="m1", eps=0.1, acc=0.5):
    return {"model_id": model_id, "dataset": "d", "architecture": "a", "method": "unpruned", "rate": 1.0, "rate_kind": "none",
            "attack": "pgd", "eps": eps, "eps_str": str(eps), "attack_hash": "h", "robust_acc": acc, "n_eval": 100}


def test_store_replaces_same_key_and_rolls_back_bad_batches(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put_results([_row(eps=0.1), _row(eps=0.2)])
        store.put_results([_row(eps=0.1, acc=0.7)])
        rows = store.results()
        assert len(rows) == 2
        assert {r["eps"]: r["robust_acc"] for r in rows} == {0.1: 0.7, 0.2: 0.5}
        assert store.has_result("m1", "h", "0.2") and not store.has_result("m1", "h", "0.3")
        bad = [_row(eps=0.3), {**_row(eps=0.4), "model_id": None}]  # second violates NOT NULL
        with pytest.raises(Exception):
            store.put_results(bad)
        assert len(store.results()) == 2  # nothing of the failed batch landed
        store.put_model({"model_id": "m1", "kind": "base", "metrics": {"a": 1}, "config": {"b": 2}})
        assert store.get_model("m1")["metrics"] == {"a": 1}
        assert store.get_model("nope") is None


def test_corrupt_database_gives_a_clear_error(tmp_path):
    from robustprune.errors import RobustPruneError

    db = tmp_path / "r.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RobustPruneError, match="cannot be opened"):
        ResultsStore(db)
