"""The study files shipped in studies/: each validates, its attacks' settings are accepted, and default.yaml is
exactly the main job (the StudySpec defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustprune.study import load_study_spec, write_report

STUDIES = Path(__file__).resolve().parents[1] / "studies"
FILES = sorted(STUDIES.glob("*.yaml"))


def test_the_shipped_files_are_there():
    names = {p.name for p in FILES}
    assert {"default.yaml", "seed003-pruning-face-of-adversaries.yaml", "seed001-advprune.yaml",
            "seed004-pwoa.yaml", "seed000-anp-mnist.yaml", "seed000-anp-cifar.yaml"} <= names


def test_default_yaml_is_the_main_job():
    assert load_study_spec(STUDIES / "default.yaml") == load_study_spec(None)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_study_file_validates(path):
    from robustprune.evaluation import AttackConfig

    spec = load_study_spec(path)
    assert spec.methods and spec.attacks and spec.datasets and spec.architectures
    for a in spec.attacks:  # the runner's attack settings are accepted by the attack itself
        AttackConfig.build(a.name, a.eps, **{k: v for k, v in a.settings().items() if k != "name"})


def test_paper_scale_files_have_the_seeds_settings():
    s3 = load_study_spec(STUDIES / "seed003-pruning-face-of-adversaries.yaml")
    assert set(s3.architectures) == {"vgg11", "preact-resnet8"} and s3.datasets == ("cifar10",)
    assert len(s3.methods) == 9 and s3.compression == (1, 2, 4, 8, 16, 32, 64)
    assert len(s3.attacks[0].eps) == 4 and len(s3.seeds) > 1
    s3m = load_study_spec(STUDIES / "seed003-pruning-face-of-adversaries-mnist.yaml")
    assert s3m.datasets == ("mnist",) and s3m.architectures == ("cnn5",) and len(s3m.methods) == 9
    assert all(m.startswith("admm-") for m in load_study_spec(STUDIES / "seed001-advprune.yaml").methods)
    assert all(m.startswith("pwoa-") for m in load_study_spec(STUDIES / "seed004-pwoa.yaml").methods)
    s0 = load_study_spec(STUDIES / "seed000-anp-mnist.yaml")
    assert set(s0.methods) == {"bp-bbd", "anp-bbd", "anp-vs-bbd", "pat-bbd"} and s0.base_objective.name == "natural"
    assert s0.recipe.bayes_train.epochs == 200 and s0.recipe.bayes_train.batch_size == 64  # seed 000 App. C
    assert s0.attacks[0].steps == 40 and 0.3 in s0.attacks[0].eps


def test_report_of_a_folder_without_database_is_a_one_line_error(tmp_path):
    from robustprune.errors import RobustPruneError

    with pytest.raises(RobustPruneError, match="no results database"):
        write_report(tmp_path)


def test_grid_expansion_counts_of_the_shipped_files():
    """Shared work: one base model per dataset/architecture/seed, one pruned model per method and rate (one per
    Bayesian recipe), every model evaluated under every attack budget (+ transfer rows for pruned models)."""
    from robustprune.study.runner import StudyRunner

    spec = load_study_spec(STUDIES / "seed003-pruning-face-of-adversaries.yaml")
    n_base = len(spec.datasets) * len(spec.architectures) * len(spec.seeds)
    rates = len([r for r in spec.compression if r > 1])
    budgets = sum(len(a.eps) for a in spec.attacks)
    plan = StudyRunner(spec, "/nonexistent").plan()
    assert plan["base_models"] == n_base == 2 * 5
    assert plan["pruned_models"] == n_base * 9 * rates == 10 * 9 * 6
    per_pruned = 1 + budgets * (2 if spec.transfer else 1)
    assert plan["rows"] == n_base * (1 + budgets) + plan["pruned_models"] * per_pruned

    # Bayesian recipes learn their rate: one model each per base model, whatever the compression list says
    s0 = load_study_spec(STUDIES / "seed000-anp-cifar.yaml")
    plan0 = StudyRunner(s0, "/nonexistent").plan()
    n0 = 2 * 1 * 3
    assert plan0["base_models"] == n0 and plan0["pruned_models"] == n0 * 4
    assert plan0["rows"] == n0 * (1 + 4) + n0 * 4 * (1 + 4 * 2)

    main = StudyRunner(load_study_spec(STUDIES / "default.yaml"), "/nonexistent").plan()
    assert main == StudyRunner(load_study_spec(None), "/nonexistent").plan()
