"""Divergence is detected: a non-finite loss or non-finite weights stop ``fit`` with one line, and the last good
state (the best epoch so far, or the last finite epoch) is what the model holds afterwards."""

from __future__ import annotations

import pytest
import torch

from conftest import TinyConvNet, blobs
from robustprune.data import Split
from robustprune.errors import ConfigError, DivergenceError, RobustPruneError
from robustprune.objectives import Natural
from robustprune.train import Hook, TrainConfig, fit, validated


def _splits(n=600):
    x, y = blobs(n)
    return Split(x=x[:500], y=y[:500]), Split(x=x[500:], y=y[500:])


class Record(Hook):
    def __init__(self):
        self.snapshots = {}

    def on_epoch_end(self, model, epoch, metrics):
        self.snapshots[epoch + 1] = {k: v.clone() for k, v in model.state_dict().items()}


class PoisonWeights(Hook):
    """At step ``at`` one weight becomes infinite (as a blown-up SGD step would make it)."""

    def __init__(self, at: int, value: float = float("inf")):
        self.at = at
        self.value = value

    def on_step_end(self, model, step):
        if step == self.at:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = self.value


class NaNLossAfter(Natural):
    """The natural loss, but NaN from the ``after``-th call on."""

    def __init__(self, after: int):
        self.calls = 0
        self.after = after

    def __call__(self, model, x, y, *, generator=None):
        out = super().__call__(model, x, y, generator=generator)
        self.calls += 1
        if self.calls > self.after:
            out.loss = out.loss * float("nan")
        return out


def _cfg(**kw):
    base = dict(epochs=4, batch_size=50, optimizer="adam", lr=3e-3, weight_decay=0, progress=False,
                select="val_clean", val_size=100)
    return TrainConfig(**{**base, **kw})


def test_nonfinite_weights_stop_training_and_restore_the_best_epoch():
    train, val = _splits()
    torch.manual_seed(0)
    model = TinyConvNet()
    rec = Record()
    # 10 steps per epoch: a weight turns infinite at the last step of epoch 3, after the last loss was computed;
    # the weight check at the epoch's end stops training
    with pytest.raises(DivergenceError) as exc:
        fit(model, Natural(), train, val, _cfg(), hooks=[PoisonWeights(at=30), rec])
    err = exc.value
    msg = str(err)
    assert isinstance(err, RobustPruneError) and "\n" not in msg
    assert "diverged in epoch 3/4" in msg and "learning rate" in msg
    assert "the weights became NaN or infinite (1.weight)" in msg
    assert err.restored_epoch in (1, 2) and f"restored to epoch {err.restored_epoch}" in msg
    assert len(err.result.history) == 2  # the diverged epoch is not recorded as a result
    for k, v in model.state_dict().items():
        assert torch.isfinite(v.float()).all(), k
        assert torch.equal(v, rec.snapshots[err.restored_epoch][k]), k
    assert not model.training


def test_nan_loss_stops_training_with_select_last_restoring_the_last_finite_epoch():
    train, val = _splits()
    torch.manual_seed(0)
    model = TinyConvNet()
    rec = Record()
    with pytest.raises(DivergenceError) as exc:
        fit(model, NaNLossAfter(after=23), train, None, _cfg(select="last", epochs=3), hooks=[rec])
    err = exc.value
    assert "diverged in epoch 3/3" in str(err) and "the loss became NaN or infinite" in str(err)
    assert err.restored_epoch == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, rec.snapshots[2][k]), k


def test_exploded_but_finite_weights_count_as_divergence():
    # the reported run had weights up to 6e17 and a loss up to 1.7e25: finite in float32, yet diverged
    train, val = _splits()
    torch.manual_seed(0)
    with pytest.raises(DivergenceError, match=r"the weights exploded \(1.weight: \|w\| up to 6e\+17"):
        fit(TinyConvNet(), Natural(), train, val, _cfg(epochs=2), hooks=[PoisonWeights(at=10, value=6e17)])


def test_divergence_in_the_first_epoch_says_there_is_no_good_state():
    train, val = _splits()
    torch.manual_seed(0)
    with pytest.raises(DivergenceError, match="no good state to keep") as exc:
        fit(TinyConvNet(), NaNLossAfter(after=0), train, val, _cfg(epochs=2))
    assert exc.value.restored_epoch is None
    assert "epoch 1/2" in str(exc.value) and "(nan)" in str(exc.value)


def test_huge_sgd_learning_rate_diverges_instead_of_finishing():
    """The reported case: SGD at lr 10 (loss up to 1e25) used to finish and be saved."""
    train, val = _splits()
    torch.manual_seed(0)
    cfg = _cfg(optimizer="sgd", lr=10, momentum=0.9, epochs=5, schedule="constant")
    with pytest.raises(DivergenceError, match="lr=10 with sgd") as exc:
        fit(TinyConvNet(), Natural(), train, val, cfg)
    assert "exploded" in str(exc.value) or "NaN" in str(exc.value)


def test_finite_training_is_unaffected():
    train, val = _splits()
    torch.manual_seed(0)
    res = fit(TinyConvNet(), Natural(), train, val, _cfg(epochs=2))
    assert len(res.history) == 2 and res.best_epoch in (1, 2)


@pytest.mark.parametrize("field", ["lr", "momentum", "weight_decay", "gamma"])
def test_nan_setting_is_rejected_as_not_a_number(field):
    with pytest.raises(ConfigError) as exc:
        validated(TrainConfig, {field: float("nan")}, "training settings")
    msg = str(exc.value)
    assert f"{field}: is not a number" in msg and "less than" not in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="finite"):
        validated(TrainConfig, {"lr": float("inf")}, "training settings")


def test_epochs_zero_stays_legal_in_train_config_for_skipped_phases():
    # methods use epochs=0 to mean "skip this phase"; the CLI's `train` refuses it (tests/test_cli_bad_input.py)
    assert TrainConfig(epochs=0).epochs == 0
