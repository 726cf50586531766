"""A tiny study end to end on the real Fashion-MNIST: exact rows, reuse on a second run, a report."""

from __future__ import annotations

import pytest
import torch

from robustprune.study import ResultsStore, load_study_spec, run_study

pytestmark = pytest.mark.usefixtures("fmnist_available")

TINY = {
    "name": "tiny", "architectures": ["lenet-mnist-w"], "width": 4, "train_limit": 1500, "val_size": 300,
    "eval_n": 100, "base_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 5e-3,
                                  "weight_decay": 0, "progress": False, "val_size": 200},
    "method_settings": {m: {"finetune": {"batch_size": 100, "optimizer": "adam", "lr": 1e-3}}
                        for m in ("magnitude-unstructured-global", "random-filter-local")},
    "method_rates": {},
    "finetune_limit": 500, "methods": ["magnitude-unstructured-global", "random-filter-local"],
    "compression": [1, 2, 4], "attacks": [{"name": "pgd", "eps": [0.05, 0.1], "steps": 5}],
}


def test_tiny_study_rows_resume_and_report(tmp_path):
    spec = load_study_spec(None, TINY)
    out = tmp_path / "study"
    first_logs: list[str] = []
    first = run_study(spec, out, log=first_logs.append)
    models = 1 + 2 * 2
    # the remaining-time estimate: once before any work, then after every evaluated model; stored with the wall time
    estimate = [i for i, line in enumerate(first_logs) if line.startswith("time estimate: ")]
    training = next(i for i, line in enumerate(first_logs) if "training base model" in line)
    assert len(estimate) == 1 and estimate[0] < training
    assert "about" in first_logs[estimate[0]] and "min left on this machine" in first_logs[estimate[0]]
    assert sum(line.startswith("time: ") for line in first_logs) == models
    assert any(line.startswith("study work took ") for line in first_logs)
    # every model: clean + 2 white-box budgets; every pruned model also 2 transfer rows (from the base model)
    n_rows = models * 3 + (models - 1) * 2
    from robustprune.study.runner import StudyRunner

    # grid expansion: the plan printed before anything runs counts exactly what the run writes
    assert StudyRunner(spec, out).plan() == {"base_models": 1, "pruned_models": 4, "models": models, "rows": n_rows}
    assert first.models_trained == models
    assert first.rows_written == n_rows
    with ResultsStore(out / "results.sqlite") as store:
        rows = store.results()
        vulns = store.vulnerabilities()
        checks = store.checks()
    assert len(rows) == n_rows
    by = {(r["method"], r["rate"], r["attack"], r["eps_str"]): r for r in rows}
    for r in rows:  # one vocabulary in the stored rows
        assert r["group"] in ("unstructured", "filter", "none") and isinstance(r["settings"], dict)
        assert r["rate_kind"] == ("none" if r["method"] == "unpruned" else "set")
        assert r["model_key"] and r["train_epochs"] is not None and r["train_steps"] is not None
    assert not any(r["attack"].startswith("transfer-") for r in rows if r["method"] == "unpruned")
    # vulnerability at the dataset's eps (0.1): white-box for every model, black-box for the pruned ones
    assert sorted(v["threat"] for v in vulns) == ["black"] * (models - 1) + ["white"] * models
    assert {v["eps_str"] for v in vulns} == {"0.1"}
    for v in vulns:
        assert v["network"] == pytest.approx(sum(v["layers"].values()) / len(v["layers"]))
        for layer, feats in v["features"].items():
            assert v["layers"][layer] == pytest.approx(sum(feats) / len(feats))
    # row-based sanity checks for every model: monotone in eps, input gradients, and (pruned) white <= transfer
    assert {c["model_id"] for c in checks} == {r["model_id"] for r in rows}
    assert sum(c["name"].startswith("whitebox_vs_transfer") for c in checks) == (models - 1) * 2
    for method in TINY["methods"]:
        for c in (2.0, 4.0):
            clean = by[(method, c, "clean", "0")]
            assert abs(clean["achieved_compression"] - c) / c < 0.1 or method.startswith("random-filter")
            assert by[(method, c, "pgd", "0.1")]["robust_acc"] <= by[(method, c, "pgd", "0.05")]["robust_acc"]
            assert by[(method, c, "pgd", "0.05")]["robust_acc"] <= clean["robust_acc"]
    assert by[("unpruned", 1.0, "clean", "0")]["robust_acc"] > 0.5  # the base model learned something
    assert by[("magnitude-unstructured-global", 4.0, "clean", "0")]["achieved_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert (out / "report.md").exists() and (out / "robust_vs_compression.png").stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "magnitude-unstructured-global" in md
    # the study's own fine-tuning settings are stated beside the results, against the method's defaults
    deviations = md.split("## Settings that differ from the methods' defaults", 1)[1].split("## Models", 1)[0]
    row = next(line for line in deviations.splitlines() if line.startswith("| magnitude-unstructured-global |"))
    assert "finetune.batch_size = 100 (default 128)" in row and "finetune.lr = 0.001 (default 0.0005)" in row
    assert "optimizer" not in row  # adam is the default: not a deviation

    with ResultsStore(out / "results.sqlite") as store:
        assert store.get_meta("study_time_estimate") > 0
    logs: list[str] = []
    second = run_study(spec, out, log=logs.append)
    assert second.models_trained == 0 and second.rows_written == 0 and second.models_reused == models
    assert not any(line.startswith("time") for line in logs)  # nothing left to do: nothing to estimate
    assert not any("transfer examples crafted" in line for line in logs)  # nothing missing: no source attack

    # A study that adds a budget reuses every model and evaluates only the new budget.
    more = load_study_spec(None, {**TINY, "attacks": [{"name": "pgd", "eps": [0.05, 0.1, 0.2], "steps": 5}]})
    third = run_study(more, out, log=lambda m: None)
    assert third.models_trained == 0 and third.rows_written == models + (models - 1)


def test_study_runs_hydra_anp_vs_pwoa_and_magnitude_through_one_loop(tmp_path):
    """Four families in one study, each reached through the PruningMethod interface; every row carries group, the
    rate (set or learned) and the method's settings; ADMM cells record their convergence signal."""
    phase = {"batch_size": 100, "optimizer": "adam", "lr": 1e-3, "epochs": 1}
    spec = load_study_spec(None, {
        **TINY, "methods": ["hydra", "anp-vs-bbd", "pwoa-filter", "magnitude-unstructured-global"],
        "compression": [1, 4], "attacks": [{"name": "pgd", "eps": [0.1], "steps": 2}], "transfer": False,
        "vulnerability": False, "method_settings": {
            "hydra": {"pgd_steps": 1, "prune": phase, "finetune": phase},
            "anp-vs-bbd": {"pgd_steps": 1, "train": {**phase, "epochs": 0.4}},
            "pwoa-filter": {"update_every": 2, "admm": {**phase, "select": "last"}, "retrain": phase},
            "magnitude-unstructured-global": {"finetune": phase}},
    })
    out = tmp_path / "study"
    first = run_study(spec, out, log=lambda m: None)
    assert first.models_trained == 5 and first.rows_written == 5 * 2
    with ResultsStore(out / "results.sqlite") as store:
        rows = {(r["method"], r["attack"]): r for r in store.results()}
        models = {m["method"]: m for m in store.models()}
    expect = {"hydra": ("unstructured", 4.0, "set"), "anp-vs-bbd": ("filter", None, "learned"),
              "pwoa-filter": ("filter", 4.0, "set"), "magnitude-unstructured-global": ("unstructured", 4.0, "set")}
    for name, (group, rate, kind) in expect.items():
        r = rows[(name, "clean")]
        assert (r["group"], r["rate"], r["rate_kind"]) == (group, rate, kind), name
        assert r["settings"] == load_settings(name, spec.method_settings[name])
    assert rows[("hydra", "clean")]["achieved_compression"] == pytest.approx(4, rel=0.01)
    assert "primal_rel" in models["pwoa-filter"]["convergence"]
    assert models["pwoa-filter"]["converged"] in (0, 1, False, True)
    assert "churn_per_epoch" in models["hydra"]["convergence"]
    again = run_study(spec, out, log=lambda m: None)
    assert again.models_trained == 0 and again.rows_written == 0


def load_settings(name, values):
    from robustprune.methods import get_method

    return get_method(name).settings(values).model_dump(mode="json")


def test_study_runs_admm_methods_to_the_exact_rate(tmp_path):
    admm = {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 1e-3, "select": "last"}
    spec = load_study_spec(None, {
        **TINY, "methods": ["admm-irregular", "pwoa-filter"], "compression": [1, 4],
        "attacks": [{"name": "pgd", "eps": [0.1], "steps": 3}],
        "method_settings": {"admm-irregular": {"admm": admm, "update_every": 2, "pgd_steps": 2},
                            "pwoa-filter": {"admm": admm, "update_every": 2}},
    })
    out = tmp_path / "study"
    first = run_study(spec, out, log=lambda m: None)
    assert first.models_trained == 3 and first.rows_written == 3 * 2 + 2  # + a transfer row per pruned model
    with ResultsStore(out / "results.sqlite") as store:
        rows = {(r["method"], r["attack"]): r for r in store.results()}
        assert rows[("admm-irregular", "clean")]["achieved_sparsity"] == pytest.approx(0.75, abs=0.01)
        assert rows[("pwoa-filter", "clean")]["group"] == "filter"
        # filter pruning empties whole conv filters: a quarter of them remain in every conv layer
        ckpt = store.get_model(rows[("pwoa-filter", "clean")]["model_id"])["checkpoint"]
    from robustprune.checkpoint import load_checkpoint

    model, _, masks = load_checkpoint(out / ckpt)
    for name, m in masks.masks.items():
        alive = m.flatten(1).any(1).float().mean().item()
        assert alive == pytest.approx(0.25, abs=0.13), name
    again = run_study(spec, out, log=lambda m: None)
    assert again.models_trained == 0 and again.rows_written == 0


def test_study_runs_a_bayesian_recipe_to_a_learned_rate_and_reports_it(tmp_path):
    """ANP in a study: gates trained on the base model, then folded into a plain checkpoint of the same
    architecture whose pruned units are exactly zero; stored with rate NULL and rate_kind "learned" and shown with its
    achieved rate."""
    from robustprune.checkpoint import load_checkpoint
    from robustprune.models import model_for_dataset
    from robustprune.data import get_spec

    spec = load_study_spec(None, {
        **TINY, "methods": ["anp-bbd"], "compression": [1],
        "attacks": [{"name": "pgd", "eps": [0.1], "steps": 3}],
        # a very low initial keep probability: most units are pruned after a few steps (a deterministic check)
        "method_settings": {"anp-bbd": {"train": {"epochs": 0.6, "batch_size": 100, "optimizer": "adam",
                                                  "lr": 1e-3}, "pgd_steps": 2, "gate_init": -12.0}},
    })
    out = tmp_path / "study"
    first = run_study(spec, out, log=lambda m: None)
    assert first.models_trained == 2 and first.rows_written == 2 + 2 + 1
    with ResultsStore(out / "results.sqlite") as store:
        rows = store.results()
        vulns = store.vulnerabilities()
        anp = next(m for m in store.models() if m["method"] == "anp-bbd")
    assert anp["rate"] is None and anp["rate_kind"] == "learned" and anp["convergence"]["unit_sparsity"] > 0.5
    model, meta, masks = load_checkpoint(out / anp["checkpoint"])
    plain = model_for_dataset("lenet-mnist-w", get_spec("fashion-mnist"), width=4)
    assert set(model.state_dict()) == set(plain.state_dict())  # a plain checkpoint of the architecture
    kept = total = 0
    for name, mask in masks.masks.items():
        w = model.get_submodule(name).weight
        assert bool((w[~mask] == 0).all())
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            kept += int((mod.weight != 0).sum())
            total += mod.weight.numel()
    clean = next(r for r in rows if r["method"] == "anp-bbd" and r["attack"] == "clean")
    assert clean["achieved_sparsity"] == pytest.approx(1 - kept / total, abs=1e-6)
    assert clean["achieved_sparsity"] > 0.5

    assert "learned (×" in (out / "report.md").read_text()


def test_one_study_compares_widths_of_one_architecture(tmp_path):
    """``NAME*W`` entries (Ye2019 Table 2's width-scaled networks): one base model per width, rows carrying the width,
    checkpoints that rebuild at their width, and ``NAME*W`` the same cell as ``NAME`` at study width W."""
    from robustprune.checkpoint import load_checkpoint
    from robustprune.models import create_model
    from robustprune.study.runner import StudyRunner

    spec = load_study_spec(None, {**TINY, "architectures": ["lenet-mnist-w*2", "lenet-mnist-w*1"],
                                  "methods": ["magnitude-unstructured-global"], "compression": [1, 2],
                                  "attacks": [{"name": "pgd", "eps": [0.1], "steps": 2}], "transfer": False})
    out = tmp_path / "study"
    first = run_study(spec, out, log=lambda m: None)
    assert first.models_trained == 4
    with ResultsStore(out / "results.sqlite") as store:
        clean = {(r["width"], r["method"]): r for r in store.results() if r["attack"] == "clean"}
    assert sorted(clean) == [(1.0, "magnitude-unstructured-global"), (1.0, "unpruned"),
                             (2.0, "magnitude-unstructured-global"), (2.0, "unpruned")]
    assert {r["architecture"] for r in clean.values()} == {"lenet-mnist-w"}
    # LeNet-MNIST's weights grow with w^2 (FC(196w, 64w) dominates): width 2 has about 4x the weights of width 1
    ratio = clean[(2.0, "unpruned")]["params_total"] / clean[(1.0, "unpruned")]["params_total"]
    assert 3.5 < ratio < 4.1
    for w in (1.0, 2.0):
        rec_id = clean[(w, "magnitude-unstructured-global")]["model_id"]
        with ResultsStore(out / "results.sqlite") as store:
            ckpt = store.get_model(rec_id)["checkpoint"]
        model, meta, _ = load_checkpoint(out / ckpt)
        assert meta["width"] == w and meta["architecture"] == "lenet-mnist-w"
        fresh = create_model("lenet-mnist-w", num_classes=10, width=w)
        assert [p.shape for p in model.parameters()] == [p.shape for p in fresh.parameters()]
    # the same network named without '*W' at study width 2 is the same base cell (reused, not retrained)
    plain = load_study_spec(None, {**TINY, "architectures": ["lenet-mnist-w"], "width": 2, "methods": [],
                                   "compression": [1], "attacks": [{"name": "pgd", "eps": [0.1], "steps": 2}],
                                   "transfer": False})
    again = run_study(plain, out, log=lambda m: None)
    assert again.models_trained == 0 and again.models_reused == 1
    assert StudyRunner(spec, out).plan()["base_models"] == 2


@pytest.mark.parametrize("entry", ["lenet-mnist-w*0", "lenet-mnist-w*wide", "lenet-mnist-w*100"])
def test_a_bad_width_suffix_is_a_one_line_config_error(entry):
    from robustprune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"width after '\*' must be a number in \(0, 64\]"):
        load_study_spec(None, {**TINY, "architectures": [entry]})


def test_the_vulnerability_weight_reaches_at_vs_and_old_model_keys_stay_valid():
    """``lam`` of a study's objective reaches AT-VS (Madaan2020 Eq. 4); specs without it store exactly the record of
    earlier versions (the five fields below), so the keys of models trained before ``lam`` existed still match."""
    from robustprune.objectives import ATVS, build_objective
    from robustprune.study import ObjectiveSpec

    spec = load_study_spec(None, {**TINY, "base_objective": {"name": "at-vs", "steps": 3, "lam": 0.05}})
    o = spec.base_objective
    built = build_objective(o.name, **o.kwargs(0.1))
    assert isinstance(built, ATVS) and built.lam == 0.05 and built.eps == 0.1 and built.steps == 3
    assert o.record()["lam"] == 0.05
    assert build_objective("at-vs", **ObjectiveSpec(name="at-vs").kwargs(0.1)).lam == 1e-3  # ANP-VS README, MNIST
    assert ObjectiveSpec(name="pgd-at", steps=10).record() == {"name": "pgd-at", "eps": None, "alpha": None,
                                                                "steps": 10, "beta": None}


def test_an_objective_setting_the_objective_does_not_take_fails_at_load_time():
    from robustprune.errors import ConfigError

    with pytest.raises(ConfigError, match="'pgd-at' does not take lam"):
        load_study_spec(None, {**TINY, "base_objective": {"name": "pgd-at", "lam": 0.1}})
    with pytest.raises(ConfigError, match="lam"):
        load_study_spec(None, {**TINY, "finetune_objective": {"name": "at-vs", "lam": -1}})


def test_prune_epochs_is_warned_about_only_when_the_study_sets_it():
    """`prune_epochs` means nothing to a method whose every phase has its own epochs (HARP here): a study file that
    sets it hears so; one that leaves the default does not (the reproduction files printed a warning about a value
    they never wrote)."""
    from robustprune.study.runner import StudyRunner

    base = {"methods": ["harp", "magnitude-unstructured-global"], "compression": [1, 4],
            "method_settings": {"harp": {"prune": {"epochs": 2}, "finetune": {"epochs": 1}}}}
    assert StudyRunner(load_study_spec(None, base), "/nonexistent").unused_option_warnings() == []
    said = StudyRunner(load_study_spec(None, {**base, "prune_epochs": 3}), "/nonexistent").unused_option_warnings()
    assert len(said) == 1 and said[0].startswith("prune_epochs: epochs 3 is not used by harp")
    assert "(method_settings: prune.epochs=N)" in said[0]


def test_plan_says_the_unused_prune_epochs_too(tmp_path, monkeypatch, capsys):
    """`--plan` is the look before any work: it says what the run would warn about (prune_epochs unused by a method
    whose every phase has its own epochs), and nothing when the file does not set it."""
    from conftest import cli

    f = tmp_path / "s.yaml"
    harp = "methods: [harp]\nmethod_settings: {harp: {prune: {epochs: 1}, finetune: {epochs: 1}}}\n"
    f.write_text("prune_epochs: 3\n" + harp)
    code, out, err = cli(monkeypatch, capsys, "study", str(f), "--plan")
    assert code == 0 and "plan of study" in out
    assert "warning: prune_epochs: epochs 3 is not used by harp" in err
    f.write_text(harp)
    code, out, err = cli(monkeypatch, capsys, "study", str(f), "--plan")
    assert code == 0 and "prune_epochs" not in err
