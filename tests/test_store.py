"""The results database: schema 2 vocabulary, the schema marker, and read-only opening that never writes into a file
robustprune did not create."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys

import pytest

from report_db import add_model
from robustprune.errors import RobustPruneError
from robustprune.study import ResultsStore, write_report
from robustprune.study.store import SCHEMA_KEY, SCHEMA_VERSION


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _row(**kw):
    row = {"model_id": "m", "model_key": "k", "dataset": "fashion-mnist", "architecture": "lenet5-caffe",
           "method": "anp-bbd", "group": "filter", "rate": None, "rate_kind": "learned", "settings": {"gamma": 1e-4},
           "converged": 1, "flags": ["nothing-pruned"], "achieved_compression": 5.1, "attack": "clean", "eps": 0.0,
           "eps_str": "0", "attack_hash": "clean", "robust_acc": 0.8, "n_eval": 100, "seed": 0,
           "train_epochs": 1.5, "train_steps": 90}
    row.update(kw)
    return row


def test_new_database_carries_the_schema_marker_and_round_trips_the_vocabulary(tmp_path):
    db = tmp_path / "out" / "results.sqlite"
    with ResultsStore(db) as store:
        assert store.get_meta(SCHEMA_KEY) == SCHEMA_VERSION
        store.put_results([_row(), _row(attack="pgd", eps=0.1, eps_str="0.1", attack_hash="h", robust_acc=0.5,
                                attack_config={"steps": 20})])
        store.put_model({"model_id": "m", "model_key": "k", "kind": "pruned", "method": "anp-bbd", "group": "filter",
                         "rate": None, "rate_kind": "learned", "settings": {"gamma": 1e-4}, "converged": 0,
                         "convergence": {"gate_mean": 0.68, "loss": [2.3, 0.9]}, "flags": ["not-converged"],
                         "checkpoint_sha256": "ab" * 32, "train_epochs": 1.5, "train_steps": 90})
    with ResultsStore(db, readonly=True) as store:  # reopened read-only: the marker is accepted
        rows = store.results('"group" = ? AND rate IS NULL', ("filter",))
        model = store.get_model("m")
    assert len(rows) == 2 and rows[0]["settings"] == {"gamma": 1e-4} and rows[0]["flags"] == ["nothing-pruned"]
    assert rows[1]["attack_config"] == '{"steps": 20}' and rows[0]["train_steps"] == 90
    assert rows[0]["rate_kind"] == "learned" and rows[0]["converged"] == 1
    assert model["convergence"] == {"gate_mean": 0.68, "loss": [2.3, 0.9]} and model["flags"] == ["not-converged"]
    assert model["converged"] == 0 and model["checkpoint_sha256"] == "ab" * 32 and model["rate"] is None


def test_rows_that_break_the_vocabulary_are_refused(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        with pytest.raises(ValueError, match="'scheme' is now 'group'"):
            store.put_results([_row(scheme="irregular")])
        with pytest.raises(ValueError, match="target_compression"):
            store.put_results([_row(target_compression=0.0)])
        with pytest.raises(ValueError, match="learned rate is stored as rate NULL"):
            store.put_results([_row(rate=0.0)])
        with pytest.raises(ValueError, match="group must be one of"):
            store.put_results([_row(group="irregular")])
        with pytest.raises(ValueError, match="rate_kind"):
            store.put_results([_row(rate_kind=None)])
        with pytest.raises(ValueError, match="flags must be a list of strings"):
            store.put_results([_row(flags="chance")])
        with pytest.raises(ValueError, match="set rate"):
            store.put_results([_row(rate=0.5, rate_kind="set")])
        assert store.results() == []  # nothing half-written


def test_rows_on_other_points_are_other_rows(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.put_results([_row(n_eval=1000, robust_acc=0.8), _row(n_eval=200, robust_acc=0.7)])
        assert len(store.results()) == 2
        assert store.has_result("m", "clean", "0") and store.has_result("m", "clean", "0", n_eval=200)
        assert not store.has_result("m", "clean", "0", n_eval=500)


def test_checks_record_whether_they_ran(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.put_checks("m", [{"name": "large_eps", "passed": True, "value": 0.0, "threshold": 0.05},
                               {"name": "more_iterations:pgd", "ran": False, "passed": True,
                                "detail": "skipped in a study"}])
        ran, skipped = store.checks()
    assert ran["ran"] is True and ran["passed"] is True
    assert skipped["ran"] is False and skipped["passed"] is None and skipped["detail"] == "skipped in a study"


def test_read_only_opening_never_writes_into_an_empty_file(tmp_path):
    db = tmp_path / "results.sqlite"
    db.write_bytes(b"")
    with pytest.raises(RobustPruneError, match="empty file.*new folder"):
        ResultsStore(db, readonly=True)
    with pytest.raises(RobustPruneError, match="empty file"):
        write_report(tmp_path)
    assert db.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


def test_an_unrelated_sqlite_file_is_refused_and_left_as_it_was(tmp_path):
    db = tmp_path / "results.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE songs (title TEXT)")
    con.execute("INSERT INTO songs VALUES ('x')")
    con.commit()
    con.close()
    before = _digest(db)
    for readonly in (True, False):  # the study (writing) refuses it too, before anything is written
        with pytest.raises(RobustPruneError, match=r"not a robustprune results database \(tables songs\)"):
            ResultsStore(db, readonly=readonly)
    with pytest.raises(RobustPruneError, match="not a robustprune results database"):
        write_report(tmp_path)
    assert _digest(db) == before
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["songs"]
    con.close()


def test_an_old_or_other_schema_says_to_rerun_into_a_new_folder(tmp_path):
    old = tmp_path / "old" / "results.sqlite"
    old.parent.mkdir()
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE results (model_id TEXT, scheme TEXT, target_compression REAL)")
    con.execute("CREATE TABLE models (model_id TEXT)")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    con.commit()
    con.close()
    with pytest.raises(RobustPruneError, match="older robustprune.*rerun the study into a new folder"):
        ResultsStore(old, readonly=True)
    with pytest.raises(RobustPruneError, match="older robustprune"):
        ResultsStore(old)
    newer = tmp_path / "newer" / "results.sqlite"
    with ResultsStore(newer) as store:
        store._db.execute("UPDATE meta SET value = '99' WHERE key = ?", (SCHEMA_KEY,))
    with pytest.raises(RobustPruneError, match=f"schema 99, this robustprune reads schema {SCHEMA_VERSION}; rerun"):
        ResultsStore(newer, readonly=True)


def test_read_only_store_refuses_writes_and_a_missing_file(tmp_path):
    with pytest.raises(RobustPruneError, match="no results database"):
        ResultsStore(tmp_path / "nothing.sqlite", readonly=True)
    assert not (tmp_path / "nothing.sqlite").exists()
    with ResultsStore(tmp_path / "results.sqlite"):
        pass
    with ResultsStore(tmp_path / "results.sqlite", readonly=True) as store:
        with pytest.raises(RobustPruneError, match="read-only"):
            store.set_meta("x", 1)


def test_report_command_on_an_empty_database_is_one_error_line(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"")
    res = subprocess.run([sys.executable, "-c", "from robustprune.cli.main import main; main()", "report",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
    assert (tmp_path / "results.sqlite").stat().st_size == 0 and not (tmp_path / "report.html").exists()


def test_a_report_never_modifies_its_database(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        add_model(store, tmp_path, method="unpruned", seed=0, clean=0.8, accs={("pgd", 0.1, 20, False): 0.6})
    before = _digest(tmp_path / "results.sqlite")
    write_report(tmp_path)
    assert _digest(tmp_path / "results.sqlite") == before
