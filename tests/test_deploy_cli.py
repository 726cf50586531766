"""`robustprune export` and exports from a study (`export:` key, `report --export`): the README's functional-style
model exports; a pruned checkpoint finds its unpruned base through its provenance; one model's failed export never
costs the others, is reported, and is retried; bad input gets one line.

Data: a tiny learnable MNIST (IDX files in a temporary folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import README_NET, cli, write_learnable_mnist

pytest.importorskip("onnxruntime", reason="the export extra (pip install -e '.[export]') is not installed")



@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"), n_train=5300, n_test=40)  # prune carves 5,000 for validation


def _save(path: Path, model, arch: str, **extra) -> Path:
    from robustprune.checkpoint import save_checkpoint
    from robustprune.data import get_spec

    s = get_spec("mnist")
    return save_checkpoint(path, model, meta={"architecture": arch, "dataset": "mnist", "num_classes": 10,
                                              "input_shape": list(s.shape), "mean": list(s.mean),
                                              "std": list(s.std), **extra})


def test_the_readmes_functional_model_exports_from_the_cli(tmp_path, monkeypatch, capsys, mnist_dir, one_thread):
    (tmp_path / "usernets").mkdir()
    (tmp_path / "usernets" / "__init__.py").write_text("")
    (tmp_path / "usernets" / "readme.py").write_text(README_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernets", None)
    from usernets.readme import MyNet

    torch.manual_seed(0)
    ckpt = _save(tmp_path / "mynet.safetensors", MyNet(), "usernets.readme:MyNet")
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt"), ("exported-program", ".pt2")):
        code, out, err = cli(monkeypatch, capsys, "export", str(ckpt), "--format", fmt, "--model",
                             "usernets.readme:MyNet", "--data-dir", str(mnist_dir), "--n", "40", "--attack-steps",
                             "3", "--no-latency", "-q")
        assert code == 0, err
        target = ckpt.with_suffix(suffix)
        report = json.loads(Path(str(target) + ".json").read_text())
        assert report["verification"]["passed"] and report["verification"]["n"] == 40
        assert report["provenance"]["method"] == "unpruned" and report["provenance"]["architecture"] == \
            "usernets.readme:MyNet"
        assert "verified by" in out


def test_a_pruned_checkpoint_is_exported_beside_its_base_with_its_provenance(tmp_path, monkeypatch, capsys,
                                                                             mnist_dir, one_thread):
    from robustprune.models import create_model
    from robustprune.provenance import file_sha256

    torch.manual_seed(0)
    base = _save(tmp_path / "base.safetensors", create_model("lenet5-caffe", num_classes=10, in_channels=1,
                                                              input_size=28), "lenet5-caffe")
    code, _out, err = cli(monkeypatch, capsys, "prune", str(base), "--method", "magnitude-filter-local", "--rate",
                          "4", "--train-limit", "100", "--epochs", "1", "--data-dir", str(mnist_dir), "--out",
                          str(tmp_path / "pruned"), "-q")
    assert code == 0, err
    pruned = tmp_path / "pruned" / "base-magnitude-filter-local-c4.safetensors"
    out_file = tmp_path / "deploy" / "small.onnx"
    code, out, err = cli(monkeypatch, capsys, "export", str(pruned), "--out", str(out_file), "--data-dir",
                         str(mnist_dir), "--n", "40", "--attack-steps", "3", "--no-latency")
    assert code == 0, err
    report = json.loads(Path(str(out_file) + ".json").read_text())
    prov = report["provenance"]
    assert prov["method"] == "magnitude-filter-local" and prov["rate"] == 4 and prov["paper"].startswith("Merkle2022")
    assert prov["parent_sha256"] == file_sha256(base) and prov["checkpoint_sha256"] == file_sha256(pruned)
    # the base was found through the provenance chain and exported beside it: filters cut out, fewer MACs, smaller
    assert report["slim"]["applied"] and report["sizes"]["base"]["macs_dense"] > report["sizes"]["deployed"]["macs_dense"]
    assert report["sizes"]["deployed"]["file_bytes"] < report["sizes"]["base"]["file_bytes"]
    assert "removed" in out and "units physically" in out
    assert (tmp_path / "deploy" / "small.onnx.md").is_file()


def test_export_bad_input_is_one_line(tmp_path, monkeypatch, capsys, mnist_dir):
    torch.manual_seed(0)
    from robustprune.models import create_model

    ckpt = _save(tmp_path / "m.safetensors", create_model("lenet-mnist-w", num_classes=10, in_channels=1,
                                                          input_size=28), "lenet-mnist-w")
    cases = [
        (["--format", "tflite"], "unknown export format 'tflite'"),
        (["--format", "torchscript", "--sparse"], "--sparse is only for --format onnx"),
        (["--n", "0"], "--n must be at least 1"),
    ]
    for extra, want in cases:
        code, _out, err = cli(monkeypatch, capsys, "export", str(ckpt), *extra, "--data-dir", str(mnist_dir))
        assert code == 2 and err.startswith("error: ") and want in err and err.count("\n") == 1, err
    code, _out, err = cli(monkeypatch, capsys, "export", str(tmp_path / "none.safetensors"))
    assert code == 2 and "not found" in err and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, _out, err = cli(monkeypatch, capsys, "export", str(ckpt), "--data-dir", str(mnist_dir))
    assert code == 2 and '.[export]' in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def tiny_study(mnist_dir: Path, **kw) -> dict:
    spec = {
        "name": "tiny-export", "datasets": ["mnist"], "data_dir": str(mnist_dir), "architectures": ["lenet5-caffe"],
        "width": 1, "train_limit": 200, "val_size": 100, "eval_n": 30, "seeds": [0],
        "base_objective": {"name": "natural"}, "finetune_objective": {"name": "natural"},
        "base_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 5e-3, "weight_decay": 0,
                       "progress": False},
        "methods": ["magnitude-filter-local"],
        "method_settings": {"magnitude-filter-local": {"schedule": "one-shot", "finetune": {
            "batch_size": 50, "optimizer": "adam", "lr": 1e-3}}},
        "compression": [1, 4], "prune_epochs": 1, "finetune_limit": 50, "transfer": False, "vulnerability": False,
        "attacks": [{"name": "pgd", "eps": [0.1], "steps": 2}],
    }
    spec.update(kw)
    return spec


def test_a_study_exports_every_model_and_one_failed_export_costs_nothing_else(tmp_path, monkeypatch, capsys,
                                                                             mnist_dir, one_thread):
    import dataclasses

    from robustprune.deploy import formats
    from robustprune.study import ResultsStore

    real = formats.FORMATS["torchscript"]

    def broken(model, example, path, sparse):
        raise RuntimeError("tracer exploded")

    monkeypatch.setitem(formats.FORMATS, "torchscript", dataclasses.replace(real, write=broken))
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_study(mnist_dir, export=["onnx", "torchscript"])))
    out = tmp_path / "study"
    code, stdout, err = cli(monkeypatch, capsys, "study", str(spec_file), "--out", str(out), "-q")
    # the grid and the onnx exports finished; the torchscript exports failed, each with its reason; exit 1
    assert code == 1, err
    assert "2 of 4 exports failed" in err and "tracer exploded" in err, err
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        rows = store.exports()
        models = store.models()
    assert len(models) == 2
    assert {(r["format"], r["status"]) for r in rows} == {("onnx", "done"), ("torchscript", "failed")}
    done = [r for r in rows if r["status"] == "done"]
    assert all((out / r["file"]).is_file() for r in done)
    assert all(abs(r["robust_acc_model"] - r["robust_acc_export"]) <= 0.002 and r["n_verify"] == 30 for r in done)
    pruned = next(r for r in done if r["model_id"] != next(m for m in models if m["kind"] == "base")["model_id"])
    assert pruned["units_removed"] > 0 and pruned["speedup_b64"] is not None
    md = (out / "report.md").read_text()
    assert "## Deployment" in md and "FAILED" in md and "tracer exploded" in md
    # the fix, then `report --export`: only the failed exports are redone, the others reused
    monkeypatch.setitem(formats.FORMATS, "torchscript", real)
    code, stdout, err = cli(monkeypatch, capsys, "report", str(out), "--export", "onnx", "--export", "torchscript")
    assert code == 0, err
    assert "exports: 2 written, 2 reused, 0 failed" in stdout
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        assert {(r["format"], r["status"]) for r in store.exports()} == {("onnx", "done"), ("torchscript", "done")}
    assert "FAILED" not in (out / "report.md").read_text().split("## Deployment")[1].split("##")[0]


def test_an_unknown_export_format_in_a_study_file_stops_before_any_work(tmp_path, monkeypatch, capsys, mnist_dir):
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_study(mnist_dir, export=["tflite"])))
    code, _out, err = cli(monkeypatch, capsys, "study", str(spec_file), "--out", str(tmp_path / "s"), "-q")
    assert code == 2 and "unknown export format 'tflite'" in err and err.count("\n") == 1, err
    assert not (tmp_path / "s" / "results.sqlite").exists()
