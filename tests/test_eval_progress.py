"""`evaluate` shows progress: a bar over every (attack, ε) run, the transfer attacks and the sanity checks."""

from __future__ import annotations

import torch

from conftest import TinyConvNet, blobs
from robustprune.evaluation import evaluate_model


def test_progress_bars_cover_attacks_transfer_and_checks(capsys):
    x, y = blobs(60)
    torch.manual_seed(0)
    model, source = TinyConvNet().eval(), TinyConvNet().eval()
    attacks = [{"name": "pgd", "eps": [0.05, 0.1], "steps": 2}, {"name": "fgsm", "eps": [0.1]}]
    quiet = evaluate_model(model, x, y, attacks, default_eps=0.1, transfer_from=source, check_subset=20, warn=False)
    assert capsys.readouterr().err == ""
    loud = evaluate_model(model, x, y, attacks, default_eps=0.1, transfer_from=source, check_subset=20, warn=False,
                          progress=True)
    err = capsys.readouterr().err
    assert "white-box attacks (60 points)" in err and "3/3" in err
    assert "transfer attacks on the source" in err and "sanity checks (20 points)" in err
    assert [r["robust_acc"] for r in loud.rows] == [r["robust_acc"] for r in quiet.rows]  # same numbers
