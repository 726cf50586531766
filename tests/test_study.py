"""A tiny study end to end on the real Fashion-MNIST: exact rows, reuse on a second run, a report."""

from __future__ import annotations

import pytest

from robustprune.study import ResultsStore, load_study_spec, run_study

pytestmark = pytest.mark.usefixtures("fmnist_available")

TINY = {
    "name": "tiny", "architectures": ["lenet-mnist-w"], "width": 4, "train_limit": 1500, "val_size": 300,
    "eval_n": 100, "base_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 5e-3,
                                  "weight_decay": 0, "progress": False, "val_size": 200},
    "finetune_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0,
                       "progress": False, "val_size": 200},
    "finetune_limit": 500, "methods": ["magnitude-unstructured-global", "random-filter-local"],
    "compression": [1, 2, 4], "attacks": [{"name": "pgd", "eps": [0.05, 0.1], "steps": 5}],
}


def test_tiny_study_rows_resume_and_report(tmp_path):
    spec = load_study_spec(None, TINY)
    out = tmp_path / "study"
    first = run_study(spec, out, log=lambda m: None)
    models = 1 + 2 * 2
    assert first.models_trained == models
    assert first.rows_written == models * (1 + 2)
    with ResultsStore(out / "results.sqlite") as store:
        rows = store.results()
    assert len(rows) == models * 3
    by = {(r["method"], r["target_compression"], r["attack"], r["eps_str"]): r for r in rows}
    for method in TINY["methods"]:
        for c in (2.0, 4.0):
            clean = by[(method, c, "clean", "0")]
            assert abs(clean["achieved_compression"] - c) / c < 0.1 or method.startswith("random-filter")
            assert by[(method, c, "pgd", "0.1")]["robust_acc"] <= by[(method, c, "pgd", "0.05")]["robust_acc"]
            assert by[(method, c, "pgd", "0.05")]["robust_acc"] <= clean["robust_acc"]
    assert by[("unpruned", 1.0, "clean", "0")]["robust_acc"] > 0.5  # the base model learned something
    assert by[("magnitude-unstructured-global", 4.0, "clean", "0")]["achieved_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert (out / "report.md").exists() and (out / "robust_vs_compression.png").stat().st_size > 10_000
    assert "magnitude-unstructured-global" in (out / "report.md").read_text()

    second = run_study(spec, out, log=lambda m: None)
    assert second.models_trained == 0 and second.rows_written == 0 and second.models_reused == models

    # A study that adds a budget reuses every model and evaluates only the new budget.
    more = load_study_spec(None, {**TINY, "attacks": [{"name": "pgd", "eps": [0.05, 0.1, 0.2], "steps": 5}]})
    third = run_study(more, out, log=lambda m: None)
    assert third.models_trained == 0 and third.rows_written == models


def test_study_runs_admm_recipes_to_the_exact_rate(tmp_path):
    spec = load_study_spec(None, {
        **TINY, "methods": ["admm-irregular", "pwoa-filter"], "compression": [1, 4],
        "attacks": [{"name": "pgd", "eps": [0.1], "steps": 3}],
        "recipe": {"admm_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 1e-3,
                                  "weight_decay": 0, "progress": False, "select": "last", "max_steps_per_epoch": 4},
                   "update_every": 2, "pgd_steps": 2},
    })
    out = tmp_path / "study"
    first = run_study(spec, out, log=lambda m: None)
    assert first.models_trained == 3 and first.rows_written == 3 * 2
    with ResultsStore(out / "results.sqlite") as store:
        rows = {(r["method"], r["attack"]): r for r in store.results()}
        assert rows[("admm-irregular", "clean")]["achieved_sparsity"] == pytest.approx(0.75, abs=0.01)
        assert rows[("pwoa-filter", "clean")]["scheme"] == "filter"
        # filter pruning empties whole conv filters: a quarter of them remain in every conv layer
        ckpt = store.get_model(rows[("pwoa-filter", "clean")]["model_id"])["checkpoint"]
    from robustprune.checkpoint import load_checkpoint

    model, _, masks = load_checkpoint(out / ckpt)
    for name, m in masks.masks.items():
        alive = m.flatten(1).any(1).float().mean().item()
        assert alive == pytest.approx(0.25, abs=0.13), name
    again = run_study(spec, out, log=lambda m: None)
    assert again.models_trained == 0 and again.rows_written == 0
