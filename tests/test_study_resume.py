"""Resume after a crash: a study subprocess killed with SIGKILL mid-run, then the same command again, finishes
only the missing cells, with exactly the expected rows (no duplicate, no lost row) and the finished models reused."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from robustprune.study import ResultsStore

pytestmark = pytest.mark.usefixtures("fmnist_available")

TINY = {
    "name": "tiny-resume", "architectures": ["lenet-mnist-w"], "width": 4, "train_limit": 1500, "val_size": 300,
    "eval_n": 100, "base_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 5e-3,
                                  "weight_decay": 0, "progress": False, "val_size": 200},
    "method_settings": {m: {"finetune": {"batch_size": 100, "optimizer": "adam", "lr": 1e-3}}
                        for m in ("magnitude-unstructured-global", "random-filter-local")},
    "method_rates": {},
    "finetune_limit": 500, "methods": ["magnitude-unstructured-global", "random-filter-local"],
    "compression": [1, 2, 4], "attacks": [{"name": "pgd", "eps": [0.05, 0.1], "steps": 5}],
}
N_MODELS = 1 + 2 * 2          # base + 2 methods x 2 rates
N_ROWS = N_MODELS * (1 + 2) + (N_MODELS - 1) * 2   # clean + 2 budgets per model; 2 transfer rows per pruned one


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("ROBUSTPRUNE_DEVICE", "cpu")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _count(db: Path, table: str) -> int:
    """Rows of ``table``, read through a read-only connection (0 while the table does not exist yet)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _cmd(spec_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "robustprune", "study", str(spec_file), "--out", str(out), "-q"]


def test_sigkill_mid_study_then_rerun_finishes_exactly(tmp_path):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "study"
    db = out / "results.sqlite"

    proc = subprocess.Popen(_cmd(spec_file, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed_at = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            n = _count(db, "results")
            if 3 < n < N_ROWS:   # the base model and at least one pruned model are in, some cells are not
                proc.send_signal(signal.SIGKILL)
                killed_at = n
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=60)
    first_out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert killed_at is not None, f"the study ended before it could be killed mid-run:\n{first_out}"
    assert proc.returncode == -signal.SIGKILL

    rows_before = _count(db, "results")
    assert 0 < rows_before < N_ROWS
    with ResultsStore(db) as store:
        models_before = {m["model_id"] for m in store.models() if (out / m["checkpoint"]).exists()}
    assert 0 < len(models_before) < N_MODELS

    # The same command again finishes only the missing cells.
    done = subprocess.run(_cmd(spec_file, out), env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    m = re.search(r"(\d+) models trained, (\d+) reused, (\d+) result rows written", done.stdout)
    assert m, done.stdout
    trained, reused, written = map(int, m.groups())
    assert reused == len(models_before), done.stdout
    assert trained == N_MODELS - len(models_before), done.stdout
    assert written == N_ROWS - rows_before, done.stdout

    with ResultsStore(db) as store:
        rows = store.results()
        models = store.models()
    print(f"resume: killed with {rows_before}/{N_ROWS} rows and {len(models_before)}/{N_MODELS} models stored; "
          f"the rerun trained {trained}, reused {reused}, wrote {written} rows; now {len(rows)} rows")
    assert len(rows) == N_ROWS
    keys = [(r["model_id"], r["attack_hash"], r["eps_str"]) for r in rows]
    assert len(set(keys)) == N_ROWS
    cells = {(r["method"], r["rate"], r["attack"], r["eps_str"]) for r in rows}
    assert len(cells) == N_ROWS
    assert {(r["method"], r["rate"]) for r in rows} == {
        ("unpruned", 1.0), *((mm, c) for mm in TINY["methods"] for c in (2.0, 4.0))}
    # every model has its row, its checkpoint and exactly its result rows (3, + 2 transfer rows when pruned)
    assert len(models) == N_MODELS and len({m["model_id"] for m in models}) == N_MODELS
    for mod in models:
        assert (out / mod["checkpoint"]).exists() and (out / mod["checkpoint"]).with_suffix(".json").exists()
        assert sum(r["model_id"] == mod["model_id"] for r in rows) == (3 if mod["kind"] == "base" else 5)
    # finished models were reused, not retrained: their checkpoints' rows are untouched
    assert models_before <= {m["model_id"] for m in models}

    # A third run does nothing.
    again = subprocess.run(_cmd(spec_file, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"0 models trained, {N_MODELS} reused, 0 result rows written" in again.stdout


def test_models_row_without_checkpoint_and_checkpoint_without_row_are_redone(tmp_path):
    """The two crash leftovers the runner must handle: a models row whose checkpoint file is missing, and a
    checkpoint on disk whose models row never landed. Both cells are redone; rows stay exact."""
    from robustprune.study import load_study_spec, run_study

    spec = load_study_spec(None, {**TINY, "methods": ["magnitude-unstructured-global"], "compression": [1, 2]})
    out = tmp_path / "study"
    first = run_study(spec, out, log=lambda m: None)
    assert first.models_trained == 2 and first.rows_written == 6 + 2
    with ResultsStore(out / "results.sqlite") as store:
        base, pruned = sorted(store.models(), key=lambda m: m["kind"])
        (out / base["checkpoint"]).unlink()                          # row, no checkpoint
        store._db.execute("DELETE FROM models WHERE model_id = ?", (pruned["model_id"],))  # checkpoint, no row
    second = run_study(spec, out, log=lambda m: None)
    assert second.models_trained == 2 and second.rows_written == 0
    with ResultsStore(out / "results.sqlite") as store:
        assert len(store.results()) == 8 and len(store.models()) == 2
        assert all((out / m["checkpoint"]).exists() for m in store.models())
    # a corrupt checkpoint is treated like a missing one
    (out / base["checkpoint"]).write_bytes(b"not a safetensors file")
    third = run_study(spec, out, log=lambda m: None)
    assert third.models_trained >= 1 and third.rows_written == 0
