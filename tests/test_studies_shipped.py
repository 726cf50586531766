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
    assert {"default.yaml", "merkle2022-pruning-face-of-adversaries.yaml",
            "merkle2022-pruning-face-of-adversaries-mnist.yaml", "ye2019-advprune.yaml", "jian2022-pwoa.yaml",
            "madaan2020-anp-mnist.yaml", "madaan2020-anp-cifar.yaml"} <= names
    assert not any(n.startswith("seed0") for n in names)


def test_default_yaml_is_the_main_job():
    assert load_study_spec(STUDIES / "default.yaml") == load_study_spec(None)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_study_file_validates(path):
    from robustprune.evaluation import AttackConfig

    spec = load_study_spec(path)
    assert spec.methods and spec.attacks and spec.datasets and spec.architectures
    for a in spec.attacks:  # the runner's attack settings are accepted by the attack itself
        AttackConfig.build(a.name, a.eps, **{k: v for k, v in a.settings().items() if k != "name"})


def _settings(spec, method):
    """The method's validated settings under this study (its defaults where the study gives none)."""
    from robustprune.methods import get_method

    return get_method(method).settings(spec.method_settings.get(method, {}))


def test_paper_scale_files_have_the_papers_settings():
    m22 = load_study_spec(STUDIES / "merkle2022-pruning-face-of-adversaries.yaml")
    assert set(m22.architectures) == {"vgg11", "preact-resnet8"} and m22.datasets == ("cifar10",)
    assert len(m22.methods) == 9 and m22.compression == (1, 2, 4, 8, 16, 32, 64)
    assert len(m22.attacks[0].eps) == 4 and len(m22.seeds) > 1
    for m in m22.methods:  # iterative halving, 10 fine-tuning epochs per step, every method alike
        s = _settings(m22, m)
        assert s.schedule == "iterative" and s.finetune.epochs == 10 and s.finetune.select == "val_clean"
    m22m = load_study_spec(STUDIES / "merkle2022-pruning-face-of-adversaries-mnist.yaml")
    assert m22m.datasets == ("mnist",) and m22m.architectures == ("cnn5",) and len(m22m.methods) == 9
    assert all(_settings(m22m, m).finetune.epochs == 5 for m in m22m.methods)

    y19 = load_study_spec(STUDIES / "ye2019-advprune.yaml")
    assert all(m.startswith("admm-") for m in y19.methods) and len(y19.methods) == 3
    for m in y19.methods:  # Ye2019: SGD, ADMM phase then masked PGD-10 adversarial retraining
        s = _settings(y19, m)
        assert s.admm.epochs == 50 and s.admm.optimizer == "sgd" and s.retrain.epochs == 50
        assert s.rho == 0.001 and s.update_every == 1 and s.update_unit == "epoch" and s.pgd_steps == 10

    j22 = load_study_spec(STUDIES / "jian2022-pwoa.yaml")
    assert all(m.startswith("pwoa-") for m in j22.methods) and len(j22.methods) == 3
    for m in j22.methods:  # Jian2022: ADMM 50 epochs, fine-tuning 100, temperature 30, no adversarial examples
        s = _settings(j22, m)
        assert s.admm.epochs == 50 and s.retrain.epochs == 100 and s.tau == 30 and s.mix_ratio == 0
        assert s.use_hbar

    a20 = load_study_spec(STUDIES / "madaan2020-anp-mnist.yaml")
    assert set(a20.methods) == {"bp-bbd", "anp-bbd", "anp-vs-bbd", "pat-bbd"}
    assert a20.base_objective.name == "natural"
    for m in a20.methods:  # Madaan2020 App. C: 200 epochs, batch 64, Adam, masks at 10x, gamma 4 on LeNet-5
        s = _settings(a20, m)
        assert s.train.epochs == 200 and s.train.batch_size == 64 and s.train.optimizer == "adam"
        assert s.gamma == 4.0 and s.mask_lr_factor == 10.0 and s.pgd_steps == 40
    assert _settings(a20, "anp-vs-bbd").vs_lambda is None  # the ANP-VS README value for the dataset
    assert _settings(a20, "pat-bbd").at == _settings(a20, "pat-bbd").train
    assert a20.attacks[0].steps == 40 and 0.3 in a20.attacks[0].eps
    a20c = load_study_spec(STUDIES / "madaan2020-anp-cifar.yaml")
    assert all(_settings(a20c, m).gamma == 2.0 and _settings(a20c, m).train.epochs == 200 for m in a20c.methods)


def test_report_of_a_folder_without_database_is_a_one_line_error(tmp_path):
    from robustprune.errors import RobustPruneError

    with pytest.raises(RobustPruneError, match="no results database"):
        write_report(tmp_path)


def test_grid_expansion_counts_of_the_shipped_files():
    """Shared work: one base model per dataset/architecture/seed, one pruned model per method and rate (one per
    method that learns its rate), every model evaluated under every attack budget (+ transfer rows for pruned models)."""
    from robustprune.study.runner import StudyRunner

    spec = load_study_spec(STUDIES / "merkle2022-pruning-face-of-adversaries.yaml")
    n_base = len(spec.datasets) * len(spec.architectures) * len(spec.seeds)
    rates = len([r for r in spec.compression if r > 1])
    budgets = sum(len(a.eps) for a in spec.attacks)
    plan = StudyRunner(spec, "/nonexistent").plan()
    assert plan["base_models"] == n_base == 2 * 5
    # the three filter methods stop at c = 32 (64 leaves less than one filter per layer: refused when read)
    assert spec.rates_for("magnitude-filter-global") == [2, 4, 8, 16, 32]
    assert plan["pruned_models"] == n_base * (6 * rates + 3 * (rates - 1)) == 10 * (6 * 6 + 3 * 5)
    per_pruned = 1 + budgets * (2 if spec.transfer else 1)
    assert plan["rows"] == n_base * (1 + budgets) + plan["pruned_models"] * per_pruned

    # Madaan2020's methods learn their rate: one model each per base model, whatever the compression list says
    s0 = load_study_spec(STUDIES / "madaan2020-anp-cifar.yaml")
    plan0 = StudyRunner(s0, "/nonexistent").plan()
    n0 = 2 * 1 * 3
    assert plan0["base_models"] == n0 and plan0["pruned_models"] == n0 * 4
    assert plan0["rows"] == n0 * (1 + 4) + n0 * 4 * (1 + 4 * 2)

    # Ye2019 / Jian2022: every method to every rate of compression above 1, each pruned from the base model (the
    # main job's method_rates for admm-irregular / pwoa-irregular must not leak into them)
    for name, n_models in (("ye2019-advprune.yaml", 1 * 2 * 1 * 3 * 4), ("jian2022-pwoa.yaml", 2 * 1 * 1 * 3 * 3)):
        s = load_study_spec(STUDIES / name)
        assert all(s.rates_for(m) == [r for r in s.compression if r > 1] for m in s.methods)
        assert StudyRunner(s, "/nonexistent").plan()["pruned_models"] == n_models

    main = StudyRunner(load_study_spec(STUDIES / "default.yaml"), "/nonexistent").plan()
    assert main == StudyRunner(load_study_spec(None), "/nonexistent").plan()


REPRO = sorted((STUDIES / "reproduce").glob("*.yaml"))


@pytest.mark.parametrize("path", REPRO, ids=[p.name for p in REPRO])
def test_every_reproduction_file_validates_with_three_seeds_and_1000_test_points(path):
    from robustprune.evaluation import AttackConfig

    spec = load_study_spec(path)
    assert spec.name == path.stem and len(spec.seeds) == 3 and spec.eval_n >= 1000
    assert any(a.name == "apgd" for a in spec.attacks)
    for a in spec.attacks:
        AttackConfig.build(a.name, a.eps, **{k: v for k, v in a.settings().items() if k != "name"})


def _base_cells(spec):
    """What decides a study's base models (as the runner hashes them), per architecture entry."""
    from robustprune.study.spec import split_architecture

    return {split_architecture(a, spec.width): (spec.train_limit, spec.val_size, spec.base_objective,
                                                spec.base_train) for a in spec.architectures}


def test_reproduction_files_share_their_base_models():
    """Claims that compare against the same base models train them once: every file's base cell of an
    architecture (and width) equals every other file's, except AT-VS, which differs only in its objective (and its
    vulnerability weight)."""
    cells: dict = {}
    for path in REPRO:
        spec = load_study_spec(path)
        if spec.name in ("chen2022-flyingbird-robust-overfitting", "chen2022-flyingbird-overfitting-budget",
                         "li2023-twin-rep-from-scratch-equal-filters"):
            continue  # its base model is part of the comparison itself (trained with the other side's recipe from
            # scratch: Flying Bird's dense twin; the magnitude side's dense start before Twin-Rep's cut), not shared
        for arch, cell in _base_cells(spec).items():
            if spec.base_objective.name == "at-vs":
                cell = (cell[0], cell[1], cell[2].model_copy(update={"name": "pgd-at", "lam": None}), cell[3])
            cells.setdefault(arch, set()).add(repr(cell))
    assert ("lenet5-caffe", 1.0) in cells and ("lenet-mnist-w", 4.0) in cells
    assert all(len(v) == 1 for v in cells.values()), {k: len(v) for k, v in cells.items()}


def test_precision_study_is_the_main_job_on_three_seeds():
    """studies/precision/main-job-3-seeds.yaml (bf16 vs fp32 training) differs from the main job only in its name and
    seeds; the precision comes from the command line, so one file serves both runs."""
    spec = load_study_spec(STUDIES / "precision" / "main-job-3-seeds.yaml")
    main = load_study_spec(None)
    assert spec.seeds == (0, 1, 2) and spec.precision == "auto"
    assert spec.model_copy(update={"name": main.name, "seeds": main.seeds}) == main


def test_precision_is_one_top_level_key_of_a_study(tmp_path):
    """The study's ``precision`` applies to every training phase; a precision hidden in ``base_train`` would be
    overridden silently, so it is refused with a one-line hint."""
    from robustprune.errors import ConfigError

    f = tmp_path / "s.yaml"
    f.write_text("base_train: {epochs: 2, precision: bf16}\n")
    with pytest.raises(ConfigError, match="move base_train.precision to the top level"):
        load_study_spec(f)
    f.write_text("precision: bf16\neval_precision: tf32\n")
    spec = load_study_spec(f)
    assert spec.precision == "bf16" and spec.eval_precision == "tf32"
    f.write_text("eval_precision: bf16\n")
    with pytest.raises(ConfigError, match="eval_precision"):
        load_study_spec(f)


def test_default_yaml_gives_the_main_jobs_model_ids(tmp_path):
    """Equal specs must give equal model ids: `prune_epochs: 1` read from a file (1.0) once hashed unlike the main
    job's default (1), so running studies/default.yaml into the main job's folder redid every pruned model."""
    from robustprune.data import get_spec
    from robustprune.study.runner import StudyRunner
    from robustprune.utils import config_hash

    ds = get_spec("fashion-mnist")
    ids = []
    for spec in (load_study_spec(None), load_study_spec(STUDIES / "default.yaml"),
                 load_study_spec(STUDIES / "precision" / "main-job-3-seeds.yaml", {"precision": "fp32"})):
        r = StudyRunner(spec, tmp_path / "out", device="cpu")
        base = config_hash(r._base_cfg(ds.name, "lenet5-caffe", 0))
        ids.append([base] + [r._method_cells(ds, "lenet5-caffe", 0, m, base).keys(4.0)[0] for m in spec.methods])
    assert ids[0] == ids[1] == ids[2]


@pytest.mark.parametrize("text,words", [
    ("methods: [magnitude-unstructured-global@fast]\nmethod_settings:\n  magnitude-unstructured-global@fsat: "
     "{schedule: one-shot}\n", ["'magnitude-unstructured-global@fsat'", "it lists magnitude-unstructured-global@fast"]),
    ("methods: [hydra, hydra]\n", ["hydra more than once"]),
    ("methods: [hydra@]\n", ["empty label"]),
    ("methods: [hydra]\nmethod_rates:\n  hydra@x: [4]\n", ["method_rates names 'hydra@x'"]),
])
def test_a_variant_label_that_matches_no_listed_method_is_an_error(tmp_path, text, words):
    from robustprune.errors import ConfigError

    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_study_spec(f)
    assert all(w in str(exc.value) for w in words) and "\n" not in str(exc.value)


def test_a_partial_base_train_keeps_the_study_defaults(tmp_path):
    """``base_train: {epochs: 1}`` changes the epochs only: the optimiser stays the study's (= the train command's)
    Adam lr 1e-3 without weight decay, cosine, batch 128; it used to switch to SGD lr 0.01 with weight decay 5e-4."""
    f = tmp_path / "s.yaml"
    f.write_text("base_train: {epochs: 1}\n")
    spec = load_study_spec(f)
    default = load_study_spec(None).base_train
    assert spec.base_train.epochs == 1
    assert spec.base_train.model_copy(update={"epochs": default.epochs}) == default
    assert (default.optimizer, default.lr, default.weight_decay, default.schedule, default.batch_size) == (
        "adam", 1e-3, 0.0, "cosine", 128)
