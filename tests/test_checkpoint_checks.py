"""Loading refuses what would give wrong numbers  and round-trips custom and slim models
."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustprune.checkpoint import checkpoint_sha256, load_checkpoint, save_checkpoint, verify_checkpoint
from robustprune.errors import CheckpointError
from robustprune.models import create_model
from robustprune.sparsity import MaskSet, compute_masks, slim_model

META = {"architecture": "lenet5-caffe", "dataset": "fashion-mnist", "num_classes": 10, "input_shape": [1, 28, 28],
        "width": 1.0, "mean": [0.286], "std": [0.353]}


def _model() -> nn.Module:
    torch.manual_seed(3)
    return create_model("lenet5-caffe", num_classes=10, in_channels=1, input_size=28, mean=(0.286,), std=(0.353,))


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _edit_sidecar(path, **changes):
    side = json.loads(path.with_suffix(".json").read_text())
    for k, v in changes.items():
        if v is None:
            side.pop(k, None)
        else:
            side[k] = v
    path.with_suffix(".json").write_text(json.dumps(side))


def test_sidecar_schema_names_the_bad_field(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model(), meta=META)
    _edit_sidecar(path, input_shape=None)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "'input_shape'" in _one_line(exc) and "missing" in str(exc.value)
    _edit_sidecar(path, input_shape=[1, 28, 28], num_classes="ten")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "'num_classes'" in _one_line(exc) and "ten" in str(exc.value)


def test_content_hash_is_stored_and_a_changed_payload_is_refused(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta=META)
    digest = json.loads((tmp_path / "m.json").read_text())["sha256"]
    assert digest == checkpoint_sha256(path) == verify_checkpoint(path)
    # overwrite the payload in place: same size, valid header, other weights
    with torch.no_grad():
        model.get_submodule("features.0").weight.mul_(2.0)
    other = save_checkpoint(tmp_path / "other.safetensors", model, meta=META)
    assert other.stat().st_size == path.stat().st_size
    path.write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="changed after it was saved") as exc:
        load_checkpoint(path)
    _one_line(exc)
    with pytest.raises(CheckpointError, match="changed after it was saved"):
        verify_checkpoint(path)
    load_checkpoint(path, verify=False)  # explicitly skipped


def test_non_finite_weights_are_refused(tmp_path):
    model = _model()
    with torch.no_grad():
        model.get_submodule("classifier.0").weight[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta=META)
    with pytest.raises(CheckpointError, match="non-finite") as exc:
        load_checkpoint(path)
    assert "classifier.0.weight" in _one_line(exc)


def test_mask_of_the_wrong_shape_is_refused(tmp_path):
    model = _model()
    bad = MaskSet({"features.0": torch.ones(20, 1, 5, 5, dtype=torch.bool)})
    bad.masks["features.0"] = torch.ones(10, 1, 5, 5, dtype=torch.bool)  # not the weight's shape
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta=META, masks=bad)
    with pytest.raises(CheckpointError, match="shape") as exc:
        load_checkpoint(path)
    assert "features.0" in _one_line(exc)


def test_weights_alive_under_their_mask_are_refused(tmp_path):
    model = _model()
    masks = compute_masks(model, group="unstructured", score="magnitude", scope="local", keep=0.5)
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta=META, masks=masks)  # masks never applied
    with pytest.raises(CheckpointError, match="non-zero where its mask prunes them") as exc:
        load_checkpoint(path)
    _one_line(exc)


def test_loading_reapplies_masks_and_removes_half_pruned_units(tmp_path):
    model = _model()
    with torch.no_grad():
        model.get_submodule("features.0").bias.fill_(0.3)
    masks = compute_masks(model, group="filter", score="magnitude", scope="local", keep=0.5)
    with torch.no_grad():  # as checkpoints were written before the fix: weights zeroed, biases alive
        for name, m in masks.masks.items():
            model.get_submodule(name).weight.mul_(m)
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta=META, masks=MaskSet(masks.masks, units=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, meta, lmasks = load_checkpoint(path)
    assert any("fully pruned units" in str(w.message) for w in caught)
    dead = ~lmasks["features.0"].flatten(1).any(1)
    assert int(dead.sum()) == 10 and bool((loaded.get_submodule("features.0").bias[dead] == 0).all())
    assert meta["units_zeroed_on_load"] == 10 + 25  # conv1 (biases set) and conv2 (default biases)


class MyNet(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 5)
        self.fc = nn.Linear(width * 12 * 12, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(torch.relu(self.conv(x)), 2), 1))


def test_load_into_the_users_own_model(tmp_path):
    torch.manual_seed(0)
    net = MyNet().eval()
    meta = {"architecture": "custom:MyNet", "num_classes": 10, "input_shape": [1, 28, 28]}
    path = save_checkpoint(tmp_path / "my.safetensors", net, meta=meta)
    loaded, _, _ = load_checkpoint(path, model=MyNet())
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), net(x))
    with pytest.raises(CheckpointError, match="shape") as exc:
        load_checkpoint(path, model=MyNet(width=4))
    assert "'conv.weight'" in _one_line(exc)
    with pytest.raises(CheckpointError, match="model=") as exc:
        load_checkpoint(path)  # not a registry architecture: say how to pass the model
    _one_line(exc)


def test_slim_checkpoint_rebuilds_its_architecture(tmp_path):
    model = _model().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(0.1, 0.3)
    masks = compute_masks(model, group="filter", score="magnitude", scope="local", keep=0.25)
    masks.apply(model)
    slim = slim_model(model, masks=masks).model
    # and a Linear that keeps only some of its flattened inputs (SelectLinear)
    x = torch.rand(8, 1, 28, 28)
    path = save_checkpoint(tmp_path / "slim.safetensors", slim, meta=META)
    side = json.loads((tmp_path / "slim.json").read_text())
    assert side["slim"] is True and side["layer_shapes"]["features.0"]["weight"] == [5, 1, 5, 5]
    loaded, _, _ = load_checkpoint(path)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
    loaded2, _, _ = load_checkpoint(path, model=_model())  # the user's full-size instance is resized too
    assert torch.allclose(loaded2(x), model(x), atol=1e-5)


def test_slim_checkpoint_with_select_linear(tmp_path):
    model = _model().eval()
    sel = torch.ones(800)
    sel[::3] = 0
    res = slim_model(model, {}, {"classifier.0": sel})
    path = save_checkpoint(tmp_path / "sel.safetensors", res.model, meta=META)
    loaded, _, _ = load_checkpoint(path)
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(loaded(x), res.model.eval()(x), atol=1e-6)
    assert type(loaded.get_submodule("classifier.0")).__name__ == "SelectLinear"
