"""The training loop: it learns, it keeps pruned weights at zero, it selects on validation only."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TinyConvNet, blobs
from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.objectives import Natural, PGDAT
from robustprune.sparsity import compute_masks
from robustprune.train import Hook, TrainConfig, fit, lr_factor, validated


def _splits(n=600):
    x, y = blobs(n)
    return Split(x=x[:500], y=y[:500]), Split(x=x[500:], y=y[500:])


def test_natural_training_learns_separable_data():
    train, val = _splits()
    torch.manual_seed(0)
    model = TinyConvNet()
    cfg = TrainConfig(epochs=3, batch_size=50, optimizer="adam", lr=3e-3, weight_decay=0, progress=False,
                      select="val_clean", val_size=100)
    res = fit(model, Natural(), train, val, cfg)
    assert res.history[-1]["val_clean"] >= 0.95
    assert res.history[0]["train_loss"] > res.history[-1]["train_loss"]
    assert not model.training


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_through_adversarial_finetuning(optimizer):
    train, val = _splits()
    torch.manual_seed(1)
    model = TinyConvNet()
    fit(model, Natural(), train, None, TrainConfig(epochs=1, batch_size=50, progress=False, select="last"))
    masks = compute_masks(model, group="unstructured", score="magnitude", scope="global", keep=0.25)
    masks.apply(model)
    # Momentum filled *before* pruning would revive pruned weights if the loop did not re-mask after each step.
    cfg = TrainConfig(epochs=2, batch_size=50, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-2,
                      momentum=0.9, weight_decay=5e-4, progress=False, select="last")
    fit(model, PGDAT(eps=0.1, steps=3), train, val, cfg, masks=masks)
    modules = dict(model.named_modules())
    for name, m in masks.masks.items():
        w = modules[name].weight
        assert torch.all(w[~m] == 0), name
        assert (w[m] != 0).float().mean() > 0.9  # the kept weights did train
    kept = sum(int(m.sum()) for m in masks.masks.values())
    total = sum(m.numel() for m in masks.masks.values())
    assert abs(kept / total - 0.25) < 0.01


def test_best_validation_epoch_is_restored():
    train, val = _splits()
    torch.manual_seed(0)
    model = TinyConvNet()
    snapshots = {}

    class Record(Hook):
        def on_epoch_end(self, model, epoch, metrics):
            snapshots[epoch + 1] = {k: v.clone() for k, v in model.state_dict().items()}

    class Wreck(Hook):
        def on_step_end(self, model, step):
            if step > 20:  # from the third epoch on, every step scrambles the weights
                with torch.no_grad():
                    for p in model.parameters():
                        p.copy_(torch.randn_like(p))

    cfg = TrainConfig(epochs=4, batch_size=50, optimizer="adam", lr=3e-3, weight_decay=0, progress=False,
                      select="val_clean", val_size=100)
    res = fit(model, Natural(), train, val, cfg, hooks=[Wreck(), Record()])
    assert res.best_epoch in (1, 2)
    best = max(res.history, key=lambda h: h["val_clean"])
    assert best["epoch"] == res.best_epoch
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[res.best_epoch][k]), k


def test_lr_schedules_closed_form():
    cos = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(cos, 0, 100) == pytest.approx(1.0)
    assert lr_factor(cos, 50, 100) == pytest.approx(0.5)
    assert lr_factor(cos, 100, 100) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(epochs=10, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(step, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = TrainConfig(epochs=10, schedule="constant", warmup_epochs=1)
    assert lr_factor(warm, 0, 100) == pytest.approx(0.1) and lr_factor(warm, 10, 100) == 1.0
    assert math.isclose(lr_factor(cos, 25, 100), 0.5 * (1 + math.cos(math.pi / 4)))


def test_train_config_rejects_out_of_range_values_in_one_line():
    with pytest.raises(ConfigError) as exc:
        validated(TrainConfig, {"lr": -1, "epochs": 3}, "training settings")
    msg = str(exc.value)
    assert "lr" in msg and "\n" not in msg
