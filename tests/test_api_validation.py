"""The Python API validates its data like the CLI: float NCHW in [0, 1], finite, integer labels within the model's
classes, a known dataset name; anything else is a one-line ConfigError before any training (a Split of 0..255
pixels, NaN inputs, labels out of range and a misspelled ``dataset=`` used to train silently or end in raw torch
errors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustprune
from robustprune.data import Split, check_split
from robustprune.errors import ConfigError, UnknownNameError


class Tiny(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _data(n: int = 64, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.fixture
def no_work(work_tripwire):
    """The suite's work tripwire (conftest): the training loop, every attack's input gradient, every mini-batch and
    every checkpoint write raise, and are listed. ``PruningMethod.run`` is not the place: every method overrides it."""
    yield work_tripwire
    assert not work_tripwire, f"work started before the bad input was refused: {work_tripwire}"


def test_the_tripwire_fires_on_a_valid_call(work_tripwire):
    """The control: a valid prune call does work, and the tripwire sees it."""
    from conftest import WorkStarted

    x, y = _data()
    with pytest.raises(WorkStarted):
        robustprune.prune(Tiny(), "magnitude-unstructured-global", rate=2, data=(x, y), eps=0.1)
    assert work_tripwire


@pytest.mark.parametrize("case,match", [
    ("uint8", r"got torch.uint8 \(divide by 255"),
    ("0..255 float", r"0\.\.255 pixels: divide by 255"),
    ("nan", "1 image.* NaN or infinite"),
    ("3-d", "must be a float NCHW tensor"),
    ("negative label", "labels must be >= 0"),
    ("float labels", "integer class labels"),
])
def test_bad_data_is_one_line_before_any_training(no_work, case, match):
    x, y = _data()
    if case == "uint8":
        x = (x * 255).to(torch.uint8)
    elif case == "0..255 float":
        x = x * 255
    elif case == "nan":
        x = x.clone()
        x[5, 0, 2, 2] = float("nan")
    elif case == "3-d":
        x = x[:, 0]
    elif case == "negative label":
        y = y.clone()
        y[0] = -1
    elif case == "float labels":
        y = y.float() + 0.5
    for data in ((x, y), Split(x=x, y=y) if x.dim() == 4 else (x, y)):
        with pytest.raises(ConfigError, match=match) as exc:
            robustprune.prune(Tiny(), "magnitude-unstructured-global", rate=2, data=data, eps=0.1)
        assert "\n" not in str(exc.value)


def test_labels_beyond_the_models_outputs_are_refused_in_train_and_val(no_work):
    x, y = _data(classes=3)
    with pytest.raises(ConfigError, match=r"data: labels must lie in 0\.\.1 \(the model has 2 outputs\), got 0\.\.2"):
        robustprune.prune(Tiny(classes=2), "magnitude-unstructured-global", rate=2, data=(x, y), eps=0.1)
    vx, vy = _data(16, classes=5)
    with pytest.raises(ConfigError, match=r"val: labels must lie in 0\.\.2"):
        robustprune.prune(Tiny(classes=3), "magnitude-unstructured-global", rate=2, data=(x, y), val=(vx, vy),
                          eps=0.1)


def test_a_misspelled_dataset_name_is_refused_with_the_choices(no_work):
    x, y = _data()
    with pytest.raises(UnknownNameError, match="unknown dataset .fashion-mnst..*fashion-mnist"):
        robustprune.prune(Tiny(), "anp-vs-bbd", data=(x, y), eps=0.1, dataset="fashion-mnst")


def test_check_split_accepts_what_every_method_trains_on():
    x, y = _data()
    check_split(x, y, "data", num_classes=3)
    check_split(x, y.float(), "data", num_classes=3)  # whole-number float labels
    check_split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    check_split(torch.ones(2, 3, 4, 4), torch.ones(2, dtype=torch.long), num_classes=2)
    with pytest.raises(ConfigError, match="labels must lie in 0..0"):
        check_split(torch.ones(2, 3, 4, 4), torch.ones(2, dtype=torch.long), num_classes=1)


def test_an_objective_a_method_would_ignore_is_refused(monkeypatch):
    """AdvPrune trains with its own objective (its ``pgd_steps`` / ``loss`` settings): an objective given to it used
    to be silently ignored; now it is one line naming what the method uses instead. Magnitude pruning fine-tunes with
    any objective and takes it."""
    from robustprune.objectives import PGDAT

    x, y = _data()
    from conftest import install_work_tripwire

    with monkeypatch.context() as mp:
        tripped = install_work_tripwire(mp)
        with pytest.raises(ConfigError, match=r"admm-irregular trains with its own objective.*pgd_steps"):
            robustprune.prune(Tiny(), "admm-irregular", rate=2, data=(x, y), eps=0.1, objective=PGDAT(eps=0.1))
        assert not tripped
    res = robustprune.prune(Tiny(), "magnitude-unstructured-global", rate=2, data=(x, y), eps=0.1, epochs=1,
                            objective=PGDAT(eps=0.1, steps=1), schedule="one-shot")
    assert res.achieved_compression == pytest.approx(2, rel=0.01)
