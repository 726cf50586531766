"""Your own model, all the way: a functional-style CNN defined here (not in the registry) is pruned from the CLI with
a gate method (``--model package.module:factory``), slimmed, saved, loaded and evaluated from the CLI."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.usefixtures("fmnist_available")

MODULE = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class FunctionalNet(nn.Module):
        """Written the common functional way: torch.relu, F.max_pool2d, x.view in forward."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 5)
            self.conv2 = nn.Conv2d(8, 12, 5)
            self.fc1 = nn.Linear(12 * 4 * 4, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = F.max_pool2d(torch.relu(self.conv1((x - 0.286) / 0.353)), 2)
            x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = x.view(x.size(0), -1)
            return self.fc2(torch.relu(self.fc1(x)))


    def make():
        return FunctionalNet()
''')


def test_functional_cnn_pruned_slimmed_saved_loaded_and_evaluated_from_the_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from robustprune.checkpoint import load_checkpoint, save_checkpoint
    from robustprune.cli.main import app
    from robustprune.data import get_spec
    from robustprune.sparsity import slim_model

    (tmp_path / "usernets").mkdir()
    (tmp_path / "usernets" / "__init__.py").write_text("")
    (tmp_path / "usernets" / "functional.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernets", None)
    from usernets.functional import make

    spec = get_spec("fashion-mnist")
    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    save_checkpoint(base, make(), meta={"architecture": "usernets.functional:make", "dataset": spec.name,
                                        "num_classes": 10, "input_shape": list(spec.shape), "mean": [0.0],
                                        "std": [1.0]})
    runner = CliRunner()
    out = tmp_path / "pruned"
    proc = runner.invoke(app, ["prune", str(base), "--model", "usernets.functional:make", "--method", "bp-bbd",
                               "--epochs", "1", "--train-limit", "600", "--set", "gamma=8",
                               "--set", "gate_init=-12", "--set", "mask_lr_factor=1", "--out", str(out), "-q"])
    assert proc.exit_code == 0, proc.output
    (pruned,) = out.glob("*.safetensors")
    model, meta, masks = load_checkpoint(pruned, model=make())
    assert meta["config"]["rate_kind"] == "learned" and meta["achieved_compression"] > 1

    x = torch.rand(16, *spec.shape)
    slim = slim_model(model, masks=masks, example=x[:2]).model
    n_full = sum(p.numel() for p in model.parameters())
    n_slim = sum(p.numel() for p in slim.parameters())
    assert n_slim < n_full
    with torch.no_grad():
        assert torch.allclose(slim(x), model(x), atol=1e-5)  # the slim model is the pruned model
    slim_path = tmp_path / "slim.safetensors"
    save_checkpoint(slim_path, slim, meta={k: v for k, v in meta.items() if k in (
        "architecture", "dataset", "num_classes", "input_shape", "mean", "std")})
    again, _, _ = load_checkpoint(slim_path, model=make())  # rebuilt to the stored slim shapes
    with torch.no_grad():
        assert torch.allclose(again(x), slim(x), atol=1e-6)

    proc = runner.invoke(app, ["evaluate", str(slim_path), "--model", "usernets.functional:make", "--attack",
                               "pgd:eps=0.1,steps=3", "--n", "100", "--no-checks", "-q",
                               "--json", str(tmp_path / "e.json")])
    assert proc.exit_code == 0, proc.output
    import json

    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["n_points"] == 100 and 0 <= doc["robust"][0]["robust_acc"] <= doc["clean_acc"]
