"""Deployment facts are checked, not copied (issue 30, item 2): the base of a comparison must be the checkpoint's
ancestor or at least the same architecture and input; the card's method, rate and achieved compression are checked
against the weights; a mask the sidecar names but the file lacks is an error wherever a checkpoint is read;
`report --export` re-hashes each checkpoint file before reusing its export; `--sparse` with nothing sparse and an
`--out` suffix of another format are said; an interrupted export's temporary files are removed by the next export.

Data: a tiny learnable MNIST; models are untrained (what is checked is what the files say, not accuracy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import cli, write_learnable_mnist

pytest.importorskip("onnxruntime", reason="the export extra (pip install -e '.[export]') is not installed")


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"), n_train=200, n_test=30)


def _model(arch: str = "lenet5-caffe", seed: int = 0) -> nn.Module:
    from robustprune.models import create_model

    torch.manual_seed(seed)
    return create_model(arch, num_classes=10, in_channels=1, input_size=28)


def _save(path: Path, model: nn.Module, arch: str, masks=None, **extra) -> Path:
    from robustprune.checkpoint import save_checkpoint
    from robustprune.data import get_spec

    s = get_spec("mnist")
    return save_checkpoint(path, model, masks=masks,
                           meta={"architecture": arch, "dataset": "mnist", "num_classes": 10,
                                 "input_shape": list(s.shape), "mean": list(s.mean), "std": list(s.std), **extra})


def _pruned(tmp: Path, base: Path, *, rate: float = 4.0, method: str = "magnitude-unstructured-global",
            group: str = "unstructured") -> Path:
    """A checkpoint pruned from ``base`` to ``rate`` by magnitude, with the sidecar `robustprune prune` writes."""
    from robustprune.checkpoint import load_checkpoint
    from robustprune.methods.interface import achieved_compression
    from robustprune.provenance import file_sha256
    from robustprune.sparsity import compute_masks

    model, _meta, _ = load_checkpoint(base)
    masks = compute_masks(model, group=group, score="magnitude", scope="global", keep=1 / rate)
    masks.apply(model)
    c = achieved_compression(model)
    return _save(tmp / f"pruned-c{rate:g}.safetensors", model, "lenet5-caffe", masks=masks,
                 achieved_compression=c, achieved_sparsity=1 - 1 / c,
                 config={"parent": str(base), "parent_sha256": file_sha256(base), "method": method, "rate": rate,
                         "rate_kind": "set", "group": group, "settings": {}})


def _export(monkeypatch, capsys, ckpt: Path, mnist_dir: Path, *extra: str) -> tuple[int, str, str]:
    return cli(monkeypatch, capsys, "export", str(ckpt), "--data-dir", str(mnist_dir), "--n", "20",
               "--attack-steps", "2", "--no-latency", "-q", *extra)


def _edit_sidecar(ckpt: Path, **changes) -> None:
    side = ckpt.with_suffix(".json")
    meta = json.loads(side.read_text())
    for key, value in changes.items():
        if key.startswith("config."):
            meta["config"][key.split(".", 1)[1]] = value
        else:
            meta[key] = value
    side.write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------------ the base
def test_an_unrelated_base_is_a_one_line_error_and_nothing_is_written(tmp_path, monkeypatch, capsys, mnist_dir):
    base = _save(tmp_path / "base.safetensors", _model(), "lenet5-caffe")
    pruned = _pruned(tmp_path, base)
    other = _save(tmp_path / "cnn5.safetensors", _model("cnn5"), "cnn5")
    target = tmp_path / "out" / "p.onnx"
    target.parent.mkdir()
    code, _out, err = _export(monkeypatch, capsys, pruned, mnist_dir, "--base", str(other), "--out", str(target))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --base ") and "cnn5" in err, err
    assert "lenet5-caffe" in err and "not its base" in err
    assert list(target.parent.iterdir()) == []
    # the checkpoint itself as its own base: said, not silently dropped
    code, _out, err = _export(monkeypatch, capsys, pruned, mnist_dir, "--base", str(pruned), "--out", str(target))
    assert code == 2 and "is the checkpoint itself" in err and err.count("\n") == 1, err
    # a model of the same architecture that is not its ancestor: exported, with a warning that says so
    stranger = _save(tmp_path / "stranger.safetensors", _model(seed=1), "lenet5-caffe")
    code, _out, err = _export(monkeypatch, capsys, pruned, mnist_dir, "--base", str(stranger), "--out", str(target))
    assert code == 0, err
    assert "warning: --base" in err and "not an ancestor" in err
    # its true ancestor: no warning, and the comparison is in the report
    code, _out, err = _export(monkeypatch, capsys, pruned, mnist_dir, "--base", str(base), "--out", str(target))
    assert code == 0 and "warning" not in err, err
    assert json.loads(Path(str(target) + ".json").read_text())["sizes"]["base"]


def test_an_edited_parent_of_another_architecture_is_refused(tmp_path, monkeypatch, capsys, mnist_dir):
    from robustprune.provenance import file_sha256

    base = _save(tmp_path / "base.safetensors", _model(), "lenet5-caffe")
    pruned = _pruned(tmp_path, base)
    other = _save(tmp_path / "cnn5.safetensors", _model("cnn5"), "cnn5")
    _edit_sidecar(pruned, **{"config.parent": str(other), "config.parent_sha256": file_sha256(other)})
    code, _out, err = _export(monkeypatch, capsys, pruned, mnist_dir)
    assert code == 2 and "parent" in err and "cnn5" in err and err.count("\n") == 1, err
    assert not pruned.with_suffix(".onnx").exists()


def test_the_python_api_refuses_a_base_of_another_architecture(tmp_path):
    import robustprune
    from robustprune.errors import ConfigError

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(ConfigError, match=r"base is not this model's unpruned architecture \(it has 'fc\.(bias|weight)'"):
        robustprune.export(_model(), tmp_path / "m.onnx", input_shape=(1, 28, 28), base=Other(), latency=False)
    wider = _model("lenet5-caffe")
    with pytest.raises(ConfigError, match="base is not this model's"):
        robustprune.export(_model("cnn5"), tmp_path / "m.onnx", input_shape=(1, 28, 28), base=wider, latency=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ the claims
@pytest.mark.parametrize("edit,match", [
    ({"config.method": "hydra", "config.rate": 1000}, r"claims hydra at compression rate 1000, but no unstructured "
                                                      r"layer of its weights is pruned beyond"),
    ({"achieved_compression": 50.0}, r"claims an achieved compression of 50, its weights show 4"),
    ({"config.method": "no-such-method"}, r"names method 'no-such-method', which is not a registered method"),
    ({"config.group": "filter"}, r"says group 'filter', but magnitude-unstructured-global prunes 'unstructured'"),
])
def test_a_sidecar_claim_the_weights_contradict_is_an_error(tmp_path, monkeypatch, capsys, mnist_dir, edit, match):
    import re

    base = _save(tmp_path / "base.safetensors", _model(), "lenet5-caffe")
    pruned = _pruned(tmp_path, base)
    _edit_sidecar(pruned, **edit)
    code, _out, err = _export(monkeypatch, capsys, pruned, mnist_dir)
    assert code == 2 and err.count("\n") == 1 and re.search(match, err), err
    assert not pruned.with_suffix(".onnx").exists()


def test_the_card_states_the_sparsity_measured_on_the_weights(tmp_path, monkeypatch, capsys, mnist_dir):
    base = _save(tmp_path / "base.safetensors", _model(), "lenet5-caffe")
    pruned = _pruned(tmp_path, base, rate=4)
    code, _out, err = _export(monkeypatch, capsys, pruned, mnist_dir)
    assert code == 0, err
    prov = json.loads(Path(str(pruned.with_suffix(".onnx")) + ".json").read_text())["provenance"]
    assert prov["achieved_compression"] == pytest.approx(4, rel=0.01)
    assert prov["achieved_sparsity"] == pytest.approx(0.75, abs=0.003)
    card = pruned.with_suffix(".onnx").with_name(pruned.with_suffix(".onnx").name + ".md").read_text()
    assert "magnitude-unstructured-global at c = 4" in card and "achieved_sparsity: 0.75" in card


# ------------------------------------------------------------------------------------------------ the masks
def test_a_mask_the_sidecar_names_but_the_file_lacks_is_an_error_everywhere(tmp_path, monkeypatch, capsys,
                                                                             mnist_dir):
    from robustprune.checkpoint import load_checkpoint
    from robustprune.errors import CheckpointError

    base = _save(tmp_path / "base.safetensors", _model(), "lenet5-caffe")
    pruned = _pruned(tmp_path, base)
    meta = json.loads(pruned.with_suffix(".json").read_text())
    _edit_sidecar(pruned, masks=[*meta["masks"], "conv_ghost"])
    with pytest.raises(CheckpointError, match="names a mask for 'conv_ghost' that the file does not hold"):
        load_checkpoint(pruned)
    for command in (["export", str(pruned), "--n", "5"], ["evaluate", str(pruned), "--n", "5"],
                    ["prune", str(pruned), "--rate", "8", "--out", str(tmp_path / "p")]):
        code, _out, err = cli(monkeypatch, capsys, *command, "--data-dir", str(mnist_dir))
        assert code == 2 and "conv_ghost" in err and err.count("\n") == 1, (command, err)
    # and the other way: a mask in the file the sidecar does not name
    _edit_sidecar(pruned, masks=meta["masks"][1:])
    with pytest.raises(CheckpointError, match=f"holds a mask for '{meta['masks'][0]}' that its sidecar"):
        load_checkpoint(pruned)


# ------------------------------------------------------------------------------------------------ warnings
def test_sparse_without_zeros_and_a_foreign_suffix_are_said(tmp_path, monkeypatch, capsys, mnist_dir):
    base = _save(tmp_path / "base.safetensors", _model(), "lenet5-caffe")
    code, _out, err = _export(monkeypatch, capsys, base, mnist_dir, "--sparse", "--out", str(tmp_path / "b.onnx"))
    assert code == 0, err
    assert "warning: --sparse" in err and "no unstructured zeros" in err
    report = json.loads((tmp_path / "b.onnx.json").read_text())
    assert report["sparse"] is False and report["sparse_requested"] is True
    # a pruned model: the flag is true and no warning
    pruned = _pruned(tmp_path, base, rate=8)
    code, _out, err = _export(monkeypatch, capsys, pruned, mnist_dir, "--sparse", "--out", str(tmp_path / "p.onnx"))
    assert code == 0 and "warning" not in err, err
    assert json.loads((tmp_path / "p.onnx.json").read_text())["sparse"] is True
    code, _out, err = _export(monkeypatch, capsys, base, mnist_dir, "--format", "onnx", "--out",
                              str(tmp_path / "x.pt"))
    assert code == 0 and "warning: --out / out x.pt ends in .pt, the suffix of torchscript files" in err, err


def test_an_interrupted_exports_temporaries_are_removed_by_the_next_export(tmp_path, monkeypatch, capsys, mnist_dir):
    base = _save(tmp_path / "base.safetensors", _model(), "lenet5-caffe")
    folder = tmp_path / "deploy"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # a process that has ended (a SIGKILLed export leaves files like these)
    left = [folder / f".m.onnx.rpx{dead_pid}.abc123.tmp.onnx", folder / f".m.onnx.rpx{dead_pid}.def456.tmp.json"]
    alive = folder / f".other.onnx.rpx{os.getppid()}.ghi789.tmp.onnx"  # an export still running: kept
    for f in [*left, alive]:
        f.write_bytes(b"partial")
    code, _out, err = _export(monkeypatch, capsys, base, mnist_dir, "--out", str(folder / "m.onnx"))
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == sorted([alive.name, "m.onnx", "m.onnx.json", "m.onnx.md"])


# ------------------------------------------------------------------------------------------------ study reuse
def test_report_export_rehashes_the_checkpoint_before_reusing_its_export(tmp_path, monkeypatch, capsys, mnist_dir):
    import yaml
    from test_deploy_cli import tiny_study

    from robustprune.study import ResultsStore

    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_study(mnist_dir, export=["onnx"])))
    out = tmp_path / "study"
    code, _stdout, err = cli(monkeypatch, capsys, "study", str(spec_file), "--out", str(out), "-q")
    assert code == 0, err
    code, stdout, err = cli(monkeypatch, capsys, "report", str(out), "--export", "onnx")
    assert code == 0 and "exports: 0 written, 2 reused, 0 failed" in stdout, stdout + err  # control: unchanged
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        pruned = next(m for m in store.models() if m["kind"] != "base")
    ckpt = out / pruned["checkpoint"]
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated after the study
    code, stdout, err = cli(monkeypatch, capsys, "report", str(out), "--export", "onnx")
    assert "exports: 0 written, 1 reused, 1 failed" in stdout, stdout + err
    assert code == 1 and "1 of 2 exports failed" in err and "corrupt" in err, err
    ckpt.unlink()  # deleted
    code, stdout, err = cli(monkeypatch, capsys, "report", str(out), "--export", "onnx")
    assert code == 1 and "exports: 0 written, 1 reused, 1 failed" in stdout, stdout + err
