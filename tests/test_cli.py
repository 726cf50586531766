"""The command line: helpful one-line errors with a non-zero exit status, and the commands run."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustprune", *args], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "ROBUSTPRUNE_DEVICE": "cpu",
                                                "HOME": "/tmp", "PYTHONPATH": ":".join(sys.path)})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_missing_dataset_gives_one_line_error(tmp_path):
    err = one_line_error(run("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1"))
    assert "train-images-idx3-ubyte" in err


def test_unknown_model_gives_one_line_error(tmp_path):
    err = one_line_error(run("train", "--arch", "resnet9000", "--epochs", "1"))
    assert "resnet9000" in err and "lenet5-caffe" in err
    # names are checked before any data is looked for: a missing dataset must not hide the unknown name
    nowhere = ("--data-dir", str(tmp_path / "nowhere"))
    err = one_line_error(run("train", "--arch", "resnet9000", "--epochs", "1", *nowhere))
    assert "resnet9000" in err and "lenet5-caffe" in err
    err = one_line_error(run("train", "--objective", "pgd-att", "--epochs", "1", *nowhere))
    assert "pgd-att" in err
    err = one_line_error(run("train", "--precision", "fp16", "--epochs", "1", *nowhere))
    assert "--precision" in err and "bf16" in err


def test_out_of_range_value_and_unknown_method(tmp_path):
    err = one_line_error(run("train", "--lr", "-3", "--epochs", "1"))
    assert "lr" in err
    bad = tmp_path / "study.yaml"
    bad.write_text("methods: [magnitude-unstructured-global, pruning-by-vibes]\n")
    err = one_line_error(run("study", str(bad), "--out", str(tmp_path / "o")))
    assert "pruning-by-vibes" in err
    bad.write_text("compression: [0.5, 2]\n")
    assert "compression" in one_line_error(run("study", str(bad), "--out", str(tmp_path / "o")))
    assert "not found" in one_line_error(run("study", str(tmp_path / "nope.yaml")))
    assert "not found" in one_line_error(run("evaluate", str(tmp_path / "nope.safetensors")))


def test_list_commands():
    for what, expect in (("models", "lenet5-caffe"), ("datasets", "fashion-mnist"),
                         ("methods", "magnitude-filter-global"), ("attacks", "pgd"), ("objectives", "trades")):
        proc = run("list", what)
        assert proc.returncode == 0 and expect in proc.stdout


@pytest.mark.usefixtures("fmnist_available")
def test_train_prune_evaluate_end_to_end(tmp_path):
    ckpt = tmp_path / "base.safetensors"
    proc = run("train", "--arch", "lenet-mnist-w", "--width", "2", "--objective", "fast-at:eps=0.1", "--epochs", "1",
               "--train-limit", "2000", "--val-size", "500", "--out", str(ckpt), "-q")
    assert proc.returncode == 0, proc.stderr
    proc = run("prune", str(ckpt), "--method", "magnitude-unstructured-global", "--rate", "2", "--rate", "4",
               "--objective", "natural", "--train-limit", "1000", "--out", str(tmp_path / "p"), "-q")
    assert proc.returncode == 0, proc.stderr
    pruned = tmp_path / "p" / "base-magnitude-unstructured-global-c4.safetensors"
    assert pruned.exists()
    proc = run("evaluate", str(pruned), "--attack", "pgd:eps=0.05;0.1,steps=5", "--n", "100",
               "--json", str(tmp_path / "e.json"), "--db", str(tmp_path / "r.sqlite"))
    assert proc.returncode == 0, proc.stderr
    import json

    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["n_points"] == 100 and len(doc["robust"]) == 2
    assert abs(doc["achieved_sparsity"] - 0.75) < 0.01
    assert doc["robust"][0]["robust_acc"] >= doc["robust"][1]["robust_acc"]
