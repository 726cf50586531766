"""An attack's settings are typed, range-checked and checked against the model before it runs, so a setting that
would make an attack do nothing (or something else than its label says) is an error, and what is stored is what ran.

The cases are the silent wrong results a new user met: ``apgd-t`` with ``n_target_classes=0`` reported the clean
accuracy as robustness; ``apgd`` with it silently dropped APGD-T; ``n_target_classes=20`` on 10 classes was stored as
20; ``early_exit=maybe`` and ``pgd-l2`` with eps 50 were accepted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import cli, run_main, write_learnable_mnist
from robustprune.attacks.config import AttackConfig, check_against_model
from robustprune.errors import ConfigError
from robustprune.evaluation.run import run_attacks


@pytest.mark.parametrize("name,options,match", [
    ("apgd-t", {"n_target_classes": 0}, "n_target_classes=0 does nothing"),
    ("apgd", {"n_target_classes": "0"}, "n_target_classes=0 does nothing"),
    ("apgd", {"n_target_classes": -3}, "must be >= 1"),
    ("apgd", {"n_target_classes": 2.5}, "is not a whole number"),
    ("apgd", {"early_exit": "maybe"}, "is not true or false"),
    ("pgd", {"early_exit": "sometimes"}, "is not true or false"),
    ("apgd", {"rho": 1.5}, r"rho=1.5 is outside \(0, 1\)"),
    ("apgd", {"rho": float("nan")}, "finite"),
    ("min-norm-linf", {"search_steps": 0}, "does nothing"),
    ("cw-l2", {"lr": 0.0}, r"lr=0 is outside \(0, ∞\)"),
    ("bb-l0", {"momentum": 1.0}, r"momentum=1 is outside \[0, 1\)"),
])
def test_a_setting_that_makes_the_attack_do_nothing_or_is_not_its_type_is_one_line(name, options, match):
    with pytest.raises(ConfigError, match=match) as exc:
        AttackConfig.build(name, eps=0.1, **options)
    assert "\n" not in str(exc.value) and name in str(exc.value)


def test_text_values_are_converted_to_the_functions_types_and_stored_as_run():
    cfg = AttackConfig.build("apgd", eps=0.1, early_exit="false", n_target_classes="3", rho="0.5")
    assert cfg.options["early_exit"] is False and cfg.options["n_target_classes"] == 3
    assert isinstance(cfg.options["rho"], float) and cfg.options["rho"] == 0.5
    # the same through a study file's dict
    spec = AttackConfig.model_validate({"name": "apgd-t", "eps": [0.1], "n_target_classes": "2"})
    assert spec.options["n_target_classes"] == 2


def test_targets_beyond_the_models_classes_are_refused_with_the_allowed_range():
    cfg = AttackConfig.build("apgd", eps=0.1, n_target_classes=20)
    with pytest.raises(ConfigError, match=r"model has 10 classes.*n_target_classes=1\.\.9"):
        check_against_model(cfg, 10, (1, 28, 28))
    check_against_model(AttackConfig.build("apgd", eps=0.1, n_target_classes=9), 10, (1, 28, 28))
    with pytest.raises(ConfigError, match="apgd_targets=12"):
        check_against_model({"name": "autoattack", "eps": [0.1], "apgd_targets": 12}, 10, (3, 32, 32))


def test_budgets_outside_the_norms_meaningful_range_are_refused():
    # the largest L2 distance between two 1x28x28 images in [0, 1] is sqrt(784) = 28
    with pytest.raises(ConfigError, match=r"L2 budget 50 exceeds .* \(28\)"):
        check_against_model(AttackConfig.build("pgd-l2", eps=50), 10, (1, 28, 28))
    check_against_model(AttackConfig.build("pgd-l2", eps=27.9), 10, (1, 28, 28))
    assert math.isclose(math.sqrt(3 * 32 * 32), 55.43, abs_tol=0.01)
    check_against_model(AttackConfig.build("pgd-l2", eps=50), 10, (3, 32, 32))  # fine for CIFAR-sized inputs
    # L0 counts pixels by default: 28 x 28 = 784 of them
    with pytest.raises(ConfigError, match="784 pixels"):
        check_against_model(AttackConfig.build("l0", eps=800), 10, (1, 28, 28))


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_run_attacks_checks_the_model_before_any_work(monkeypatch):
    model = _Linear()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
    calls = []
    import robustprune.evaluation.run as run_mod

    monkeypatch.setattr(run_mod, "_correct", lambda *a, **k: calls.append(1))
    with pytest.raises(ConfigError, match="model has 4 classes"):
        run_attacks(model, x, y, [AttackConfig.build("apgd-t", eps=0.1, n_target_classes=5)], default_eps=0.1)
    assert calls == []  # not even the clean pass ran


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    data = write_learnable_mnist(tmp_path_factory.mktemp("mnist"), n_test=40)
    out = tmp_path_factory.mktemp("ckpt") / "base.safetensors"
    run_main("train", "--dataset", "mnist", "--data-dir", str(data), "--val-size", "100", "--objective", "natural",
             "--epochs", "1", "--out", str(out), "-q")
    return out, data


@pytest.mark.parametrize("attack,match", [
    ("apgd-t:eps=0.1,n_target_classes=0", "n_target_classes=0 does nothing"),
    ("apgd:eps=0.1,n_target_classes=20", "model has 10 classes"),
    ("apgd:eps=0.1,early_exit=maybe", "is not true or false"),
    ("pgd-l2:eps=50", "exceeds the largest distance"),
])
def test_evaluate_refuses_them_in_one_line_and_writes_nothing(monkeypatch, capsys, checkpoint, tmp_path, attack,
                                                               match):
    ckpt, data = checkpoint
    js = tmp_path / "eval.json"
    code, _out, err = cli(monkeypatch, capsys, "evaluate", str(ckpt), "--data-dir", str(data), "--n", "20",
                          "--attack", attack, "--json", str(js), "--no-checks")
    assert code == 2 and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and match in errors[0], err
    assert not js.exists()


def test_evaluate_stores_the_converted_settings(monkeypatch, capsys, checkpoint, tmp_path):
    ckpt, data = checkpoint
    js = tmp_path / "eval.json"
    code, _out, err = cli(monkeypatch, capsys, "evaluate", str(ckpt), "--data-dir", str(data), "--n", "20",
                          "--attack", "apgd-t:eps=0.1,n_target_classes=2,steps=5,early_exit=false", "--json", str(js),
                          "--no-checks", "-q")
    assert code == 0, err
    text = js.read_text()
    assert '"n_target_classes": 2' in text and '"early_exit": false' in text
    json.loads(text)


def test_evaluate_plan_states_steps_restarts_targets_and_the_checks_cost(monkeypatch, capsys, checkpoint):
    ckpt, data = checkpoint
    code, out, err = cli(monkeypatch, capsys, "evaluate", str(ckpt), "--data-dir", str(data), "--n", "20",
                         "--attack", "apgd:eps=0.1,steps=2,n_target_classes=3", "--attack", "pgd:eps=0.05;0.1,steps=3",
                         "--check-n", "10")
    assert code == 0, err
    assert "2 steps x 1 restart(s) x 4 run(s) (APGD-CE + 3 targets) = 8 gradient steps per point (160 in all)" in out
    assert "3 steps x 1 restart(s) x 1 run(s) = 3 gradient steps per point and budget, x 2 budgets (120 in all)" in out
    assert "about 5x each attack's cost on those points" in out
