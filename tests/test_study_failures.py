"""A failure in one cell never stops a study: the failed cell is stored (``failures`` table, a model's ``status``),
shown in the report, the cells that do not depend on it finish, the command exits 1 with a one-line summary, and a
rerun retries only the failed cells. A user error found before any work still stops at once (exit 2). Also: the
schema 2 -> 3 migration, and the precision fields of a study (identity and records).

Data: a tiny synthetic MNIST (IDX files in a temporary folder); methods registered for the test only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from robustprune.errors import RobustPruneError
from robustprune.methods import METHODS, PruneResult, PruneTask, PruningMethod, register_method
from robustprune.methods.interface import PAPERS, MethodSettings, setting
from robustprune.sparsity import compute_masks
from robustprune.study import ResultsStore, load_study_spec, run_study
from robustprune.study.runner import StudyRunner, _train_cfg_dict
from robustprune.study.store import SCHEMA_KEY, SCHEMA_VERSION
from conftest import cli, write_learnable_mnist

FAIL = {"rate": 4.0}
"""The rate at which the test methods raise (None: they never do): the 'fix' between two runs."""


class FlakySettings(MethodSettings):
    chain: bool = setting(False, "test", "True: each rate continues from the model of the rate below (incremental)")


class FlakyMethod(PruningMethod):
    """Magnitude pruning without fine-tuning that raises at ``FAIL['rate']`` (a failed check in one cell, as on the
    GPU: a RobustPruneError raised inside a method)."""

    name = "flaky-test"
    paper = PAPERS["Merkle2022"]
    Settings = FlakySettings
    description = "test-only method that fails at one rate"

    def incremental(self, settings: FlakySettings) -> bool:
        return settings.chain

    def rate_path(self, rates, settings: FlakySettings) -> list[float]:
        return list(rates) if settings.chain else [rates[-1]]

    def run(self, model, task: PruneTask, rate, settings) -> PruneResult:
        if FAIL["rate"] is not None and rate == FAIL["rate"]:
            raise RobustPruneError(f"sanity check failed at c={rate:g}: the flaky test method says so")
        masks = compute_masks(model, group="unstructured", score="magnitude", scope="global", keep=1.0 / rate,
                              previous=task.masks)
        return self.result(model, masks, rate, settings, wall_time=0.01)

    def prune_many(self, model, task: PruneTask, rates, settings=None):
        s = self.settings(settings)
        if not s.chain:
            yield from super().prune_many(model, task, rates, s)
            return
        masks = task.masks
        for rate in rates:  # in place: a rate continues from the one below
            chained = PruneTask(train=task.train, val=task.val, eps=task.eps, masks=masks, start_rate=task.start_rate)
            res = self.prune(model, chained, rate, s)
            masks = res.masks
            yield res


@pytest.fixture
def flaky():
    """``flaky-test`` registered for one test, failing at c=4 until the test sets ``FAIL['rate'] = None``."""
    FAIL["rate"] = 4.0
    register_method(FlakyMethod())
    yield FAIL
    METHODS._items.pop("flaky-test", None)
    METHODS._help.pop("flaky-test", None)
    FAIL["rate"] = 4.0


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """400 training and 60 test images, 28x28, learnable (class k brightens columns 2k..2k+2)."""
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"), n_test=60)


def tiny(mnist_dir: Path, **kw) -> dict:
    spec = {
        "name": "tiny-failures", "datasets": ["mnist"], "data_dir": str(mnist_dir), "architectures": ["lenet-mnist-w"],
        "width": 1, "train_limit": 200, "val_size": 100, "eval_n": 40, "seeds": [0],
        "base_objective": {"name": "natural"}, "finetune_objective": {"name": "natural"},
        "base_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 5e-3, "weight_decay": 0,
                       "progress": False, "val_size": 100},
        "methods": ["flaky-test", "magnitude-unstructured-global"],
        "method_settings": {"magnitude-unstructured-global": {"schedule": "one-shot", "finetune": {
            "batch_size": 50, "optimizer": "adam", "lr": 1e-3}}},
        "compression": [1, 2, 4, 8], "prune_epochs": 1, "finetune_limit": 50,
        "attacks": [{"name": "pgd", "eps": [0.1], "steps": 2}],
    }
    spec.update(kw)
    return spec


def _stored(out: Path):
    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        return store.models(), store.results(), store.failures()


def test_a_failing_cell_is_stored_reported_and_retried_while_the_rest_finishes(monkeypatch, capsys, tmp_path,
                                                                               mnist_dir, flaky, one_thread):
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(tiny(mnist_dir)))
    out = tmp_path / "study"
    code, stdout, err = cli(monkeypatch, capsys, "study", str(spec_file), "--out", str(out), "-q")

    # exit 1 (not 2: no user error), one summary line naming the model, the step and the message
    assert code == 1, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, err
    line = errors[0]
    assert line.startswith("error: 1 of 7 models failed: mnist/lenet-mnist-w/seed 0/flaky-test c=4 (pruning): "
                           "RobustPruneError: sanity check failed at c=4"), line
    assert "rerun" in line
    assert "failed in pruning" in stdout and "report: " in stdout

    # every other cell finished: base + flaky c=2, c=8 (the rate after the failed one too) + magnitude 2, 4, 8
    models, rows, failures = _stored(out)
    done = {(m["method"], m["rate"]) for m in models}
    assert done == {("unpruned", 1.0), ("flaky-test", 2.0), ("flaky-test", 8.0),
                    ("magnitude-unstructured-global", 2.0), ("magnitude-unstructured-global", 4.0),
                    ("magnitude-unstructured-global", 8.0)}
    assert all(m["status"] == "done" for m in models)
    assert {(r["method"], r["rate"]) for r in rows} == done  # each finished model has its rows
    assert all(r["train_precision"] == "fp32" and r["eval_precision"] == "fp32" for r in rows)
    assert all(m["train_precision"] == "fp32" and m["eval_precision"] == "fp32" for m in models)

    # the failure is in the database: the cell id it would have had, the step, the error and its message
    assert len(failures) == 1
    f = failures[0]
    runner = StudyRunner(load_study_spec(spec_file), out)
    base_id = next(m["model_id"] for m in models if m["method"] == "unpruned")
    assert f["cell_id"] == runner._method_cells(runner._splits("mnist", 0).spec, "lenet-mnist-w", 0, "flaky-test",
                                                base_id).keys(4.0)[0]
    assert (f["method"], f["rate"], f["step"], f["error"], f["attempts"]) == (
        "flaky-test", 4.0, "pruning", "RobustPruneError", 1)
    assert f["message"] == "sanity check failed at c=4: the flaky test method says so"
    assert "Traceback" in f["traceback"] and "FlakyMethod" not in f["message"]

    # the report was written and says which model failed, where and why, near its top
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "## Failed models" in md and md.index("## Failed models") < md.index("## Headline")
    assert "mnist / lenet-mnist-w / seed 0 / flaky-test c=4" in md and "sanity check failed at c=4" in md
    assert "| pruning |" in md and "1 model failed" in md
    assert "Failed models" in html and "flaky-test c=4" in html and "sanity check failed at c=4" in html
    assert "Precision: training fp32 (IEEE float32, TF32 off), evaluation fp32" in md

    # rerun with the method fixed: only the failed cell is made; the rest is reused; the failure row is gone
    flaky["rate"] = None
    code, stdout, err = cli(monkeypatch, capsys, "study", str(spec_file), "--out", str(out), "-q")
    assert code == 0, err
    assert "1 failed cell(s) of an earlier run to retry" in stdout
    assert "done in" in stdout and "1 models trained, 6 reused" in stdout
    models, rows, failures = _stored(out)
    assert failures == [] and len(models) == 7
    assert ("flaky-test", 4.0) in {(r["method"], r["rate"]) for r in rows}
    md = (out / "report.md").read_text()
    assert "Failed models" not in md


def test_a_failed_base_model_leaves_its_methods_not_run_and_the_report_says_so(tmp_path, mnist_dir, flaky,
                                                                               monkeypatch, one_thread):
    import robustprune.study.runner as runner_mod

    real_fit = runner_mod.fit

    def broken_fit(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(runner_mod, "fit", broken_fit)
    spec = load_study_spec(None, tiny(mnist_dir, compression=[1, 2, 4]))
    out = tmp_path / "study"
    outcome = run_study(spec, out, log=lambda m: None)
    assert not outcome.ok and outcome.models_trained == 0
    summary = outcome.summary()
    assert summary.startswith("5 of 5 models failed: mnist/lenet-mnist-w/seed 0/unpruned (base training): "
                              "RuntimeError: CUDA out of memory (simulated)"), summary
    assert "(4 of them not run: a model they depend on failed)" in summary
    models, rows, failures = _stored(out)
    assert models == [] and rows == []
    steps = sorted((f["method"], f["rate"], f["step"], f["error"], f["attempts"]) for f in failures)
    assert steps == [("flaky-test", 2.0, "not run: its base model failed", None, 0),
                     ("flaky-test", 4.0, "not run: its base model failed", None, 0),
                     ("magnitude-unstructured-global", 2.0, "not run: its base model failed", None, 0),
                     ("magnitude-unstructured-global", 4.0, "not run: its base model failed", None, 0),
                     ("unpruned", 1.0, "base training", "RuntimeError", 1)]
    md = (out / "report.md").read_text()
    assert "1 model failed and 4 were not run because a model they depend on failed" in md
    assert "| base training |" in md and "not run: its base model failed" in md
    assert outcome.report_files and (out / "report.html").exists()

    # the base trains on the rerun: every cell is made (flaky fixed), every failure row is gone
    monkeypatch.setattr(runner_mod, "fit", real_fit)
    flaky["rate"] = None
    again = run_study(spec, out, log=lambda m: None)
    assert again.ok and again.models_trained == 5 and again.models_reused == 0
    assert _stored(out)[2] == []


def test_an_incremental_chain_skips_the_rates_after_its_failed_one(tmp_path, mnist_dir, flaky, one_thread):
    spec = load_study_spec(None, tiny(mnist_dir, methods=["flaky-test"], method_settings={"flaky-test": {
        "chain": True}}))
    out = tmp_path / "study"
    outcome = run_study(spec, out, log=lambda m: None)
    models, _, failures = _stored(out)
    assert {(m["method"], m["rate"]) for m in models} == {("unpruned", 1.0), ("flaky-test", 2.0)}
    by_rate = {f["rate"]: f for f in failures}
    assert by_rate[4.0]["step"] == "pruning" and by_rate[4.0]["error"] == "RobustPruneError"
    assert by_rate[8.0]["step"] == "not run: c=4 of its chain failed" and by_rate[8.0]["error"] is None
    assert "continues from c=4, which failed" in by_rate[8.0]["message"]
    assert outcome.summary().startswith("2 of 4 models failed: ")

    flaky["rate"] = None
    again = run_study(spec, out, log=lambda m: None)
    # the chain resumes from its stored c=2 (reused with the base), and makes c=4 and c=8
    assert again.ok and again.models_trained == 2 and again.models_reused == 2
    assert _stored(out)[2] == []


def test_a_failed_evaluation_keeps_the_model_and_a_rerun_retries_only_the_evaluation(tmp_path, mnist_dir, flaky,
                                                                                    monkeypatch, one_thread):
    from robustprune.study.model_eval import ModelEvaluator

    flaky["rate"] = None
    real = ModelEvaluator._evaluate

    def broken(self, store, model_id, model, splits, base, *a, **k):
        if base["method"] == "flaky-test" and base["rate"] == 8.0:
            raise ValueError("attack produced NaN logits (simulated)")
        return real(self, store, model_id, model, splits, base, *a, **k)

    monkeypatch.setattr(ModelEvaluator, "_evaluate", broken)
    spec = load_study_spec(None, tiny(mnist_dir, methods=["flaky-test"]))
    out = tmp_path / "study"
    outcome = run_study(spec, out, log=lambda m: None)
    assert outcome.models_trained == 4
    models, rows, failures = _stored(out)
    failed = [m for m in models if m["status"] == "failed"]
    assert [(m["method"], m["rate"]) for m in failed] == [("flaky-test", 8.0)]
    assert [(f["cell_id"], f["step"], f["error"]) for f in failures] == [
        (failed[0]["model_id"], "evaluation", "ValueError")]
    assert not [r for r in rows if r["model_id"] == failed[0]["model_id"]]
    assert "evaluation failed" in (out / "report.md").read_text()

    monkeypatch.setattr(ModelEvaluator, "_evaluate", real)
    again = run_study(spec, out, log=lambda m: None)
    assert again.ok and again.models_trained == 0 and again.models_reused == 4
    models, rows, failures = _stored(out)
    assert failures == [] and all(m["status"] == "done" for m in models)
    assert [r for r in rows if r["model_id"] == failed[0]["model_id"]]


def test_a_missing_second_dataset_stops_before_any_work(monkeypatch, capsys, tmp_path, mnist_dir):
    import robustprune.study.runner as runner_mod

    def no_training(*a, **k):
        raise AssertionError("training started before the data of every dataset was checked")

    monkeypatch.setattr(runner_mod, "fit", no_training)
    empty = tmp_path / "no-cifar"
    empty.mkdir()
    spec = load_study_spec(None, tiny(mnist_dir, methods=["magnitude-unstructured-global"]))
    spec = spec.model_copy(update={"datasets": ("mnist", "cifar10")})
    out = tmp_path / "study"
    with pytest.raises(RobustPruneError, match="cifar10"):
        run_study(spec, out, log=lambda m: None)
    assert not (out / "results.sqlite").exists()
    # through the CLI: exit 2 and one line (a user error, not a failed cell)
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump({**tiny(mnist_dir, methods=["magnitude-unstructured-global"]),
                                         "datasets": ["mnist", "cifar10"]}))
    code, _, err = cli(monkeypatch, capsys, "study", str(spec_file), "--out", str(out), "-q")
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cifar10" in lines[0]


def test_a_schema_2_database_is_read_as_it_is_and_migrated_when_a_study_writes(tmp_path):
    from report_db import add_model

    out = tmp_path / "old"
    db = out / "results.sqlite"
    with ResultsStore(db) as store:
        add_model(store, out, method="unpruned", seed=0, accs={("pgd", 0.1, 20, False): 0.5}, clean=0.9)
    # make it what robustprune wrote before schema 3
    con = sqlite3.connect(db)
    con.execute("DROP TABLE failures")
    for table, cols in (("models", ("status", "train_precision", "eval_precision")),
                        ("results", ("train_precision", "eval_precision"))):
        for c in cols:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {c}")
    con.execute("UPDATE meta SET value = '2' WHERE key = ?", (SCHEMA_KEY,))
    con.commit()
    con.close()

    with ResultsStore(db, readonly=True) as store:  # read as it is: the new columns read as None, no failures
        assert store.get_meta(SCHEMA_KEY) == 2
        (model,) = store.models()
        assert model["status"] == "done" and model["train_precision"] is None
        assert all(r["eval_precision"] is None for r in store.results())
        assert store.failures() == []
    from robustprune.study import write_report

    write_report(out)  # the report of an old folder still works
    with ResultsStore(db) as store:  # opened to write (a study): migrated in place, rows kept
        assert store.get_meta(SCHEMA_KEY) == SCHEMA_VERSION == 3
        assert store.models()[0]["status"] == "done" and len(store.results()) == 2
        store.put_failure({"cell_id": "x", "step": "pruning", "error": "E", "message": "m"})
        store.put_failure({"cell_id": "x", "step": "pruning", "error": "E", "message": "again"})
        assert [(f["attempts"], f["message"]) for f in store.failures()] == [(2, "again")]
        store.clear_failure("x")
        assert store.failures() == []
    con = sqlite3.connect(db)
    cols = {r[1] for r in con.execute("PRAGMA table_info(models)")}
    con.close()
    assert {"status", "train_precision", "eval_precision"} <= cols


def test_precision_is_part_of_a_model_id_only_when_not_the_default(tmp_path, mnist_dir):
    from robustprune.train import TrainConfig

    # fp32 (what "auto" resolves to on a CPU) and the other defaults are not hashed: ids of models made before
    # precision existed are unchanged
    assert not {"precision", "compile", "channels_last"} & set(_train_cfg_dict(TrainConfig(precision="fp32")))
    methods = ["magnitude-unstructured-global"]
    auto = StudyRunner(load_study_spec(None, tiny(mnist_dir, methods=methods)), tmp_path / "a", device="cpu")
    tf32 = StudyRunner(load_study_spec(None, tiny(mnist_dir, methods=methods, precision="tf32")), tmp_path / "b",
                       device="cpu")
    bf16 = StudyRunner(load_study_spec(None, tiny(mnist_dir, methods=methods, precision="bf16", compile=True)),
                       tmp_path / "c", device="cpu")
    # the identity holds what the device computes in: auto and tf32 are fp32 on a CPU, so they are the same models
    assert auto.train_precision == tf32.train_precision == "fp32" and bf16.train_precision == "bf16"
    base = {r: r._base_cfg("mnist", "lenet-mnist-w", 0) for r in (auto, tf32, bf16)}
    assert "precision" not in base[auto]["train"] and base[tf32] == base[auto]
    assert base[bf16]["train"]["precision"] == "bf16" and base[bf16]["train"]["compile"] is True
    ds = auto._splits("mnist", 0).spec
    cells = {r: r._method_cells(ds, "lenet-mnist-w", 0, "magnitude-unstructured-global", "b") for r in base}
    assert "precision" not in cells[auto].task_cfg and cells[bf16].task_cfg == {
        **cells[auto].task_cfg, "precision": "bf16", "compile": True}
    assert len({c.keys(2.0)[0] for c in cells.values()}) == 2
