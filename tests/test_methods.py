"""Magnitude / random pruning: the schedule of Merkle2022 and exact sparsity at every target."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyConvNet, blobs
from robustprune.data import Split
from robustprune.errors import ConfigError, UnknownNameError
from robustprune.methods import METHODS, get_method, halving_schedule, iterative_prune
from robustprune.objectives import FastAT
from robustprune.sparsity import prunable_layers
from robustprune.train import TrainConfig


def test_nine_methods_of_merkle2022_are_registered():
    mag = [n for n in METHODS.names() if n.startswith(("magnitude-", "random-"))]
    assert len(mag) == 9
    assert "random-unstructured-global" not in METHODS  # omitted, as in Merkle2022
    spec = get_method("magnitude-kernel-global")
    assert (spec.score, spec.group, spec.scope) == ("magnitude", "kernel", "global")
    with pytest.raises(UnknownNameError, match="choose one of"):
        get_method("magnitude-banana-local")


def test_halving_schedule():
    assert halving_schedule([1, 2, 4, 8, 16]) == [2, 4, 8, 16]
    assert halving_schedule([16]) == [2, 4, 8, 16]
    assert halving_schedule([3, 4]) == [2, 3, 4]
    assert halving_schedule([8, 16], start=4) == [8, 16]
    with pytest.raises(ConfigError):
        halving_schedule([0.5])


@pytest.mark.parametrize("method", ["magnitude-unstructured-global", "magnitude-filter-local", "random-kernel-local"])
def test_iterative_pruning_hits_every_target_and_never_revives(method):
    x, y = blobs(300)
    train = Split(x=x, y=y)
    torch.manual_seed(0)
    model = TinyConvNet()
    spec = get_method(method)
    cfg = TrainConfig(epochs=1, batch_size=100, optimizer="adam", lr=1e-3, weight_decay=0, progress=False,
                      select="last")
    layers = prunable_layers(model, spec.group)
    previous = None
    steps = list(iterative_prune(model, spec, [2, 4, 8], objective=FastAT(eps=0.05), train=train, val=None, cfg=cfg))
    assert [s.rate for s in steps] == [2, 4, 8] and all(s.is_target for s in steps)
    for s in steps:
        weights = sum(layers[n].weight.numel() for n in layers)
        kept = sum(int(s.masks.masks[n].sum()) for n in layers)
        # within one group per layer of the target
        group_size = max(layers[n].weight[0].numel() if spec.group == "filter" else
                         (layers[n].weight[0, 0].numel() if spec.group == "kernel" else 1) for n in layers)
        assert abs(kept - weights / s.rate) <= group_size * len(layers)
        if previous is not None:
            for n in layers:
                assert not torch.any(s.masks.masks[n] & ~previous.masks[n])
        previous = s.masks
    for n, m in layers.items():
        assert torch.all(m.weight[~previous.masks[n]] == 0)
