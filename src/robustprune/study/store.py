"""The results database (SQLite): the single source of truth of a study.

Tables (``checks`` and ``vulnerability`` are described beside their columns below):

``models``  one row per finished model cell (a trained base model or a pruned + fine-tuned model), keyed by the
            hash of the config that made it; reused when the same cell comes up again.
``results`` one row per (model, attack, ε): the result row of DESIGN.md. A model's rows for one attack are
            written in one transaction, so a crash never leaves half an evaluation behind.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from robustprune.errors import RobustPruneError

RESULT_COLUMNS: dict[str, str] = {
    "model_id": "TEXT NOT NULL",          # config hash of the model cell
    "study": "TEXT",
    "dataset": "TEXT NOT NULL",
    "architecture": "TEXT NOT NULL",
    "width": "REAL",
    "method": "TEXT NOT NULL",            # 'unpruned' for the base model
    "scheme": "TEXT",                     # unstructured | kernel | filter | column | none
    "scope": "TEXT",                      # local | global | none
    "score": "TEXT",                      # magnitude | random | none
    "schedule": "TEXT",                   # iterative | one-shot | none
    "target_compression": "REAL NOT NULL",  # c: 1/c of prunable weights remain
    "achieved_sparsity": "REAL",          # zeros actually present / prunable weights
    "achieved_compression": "REAL",       # prunable weights / non-zero prunable weights
    "params_total": "INTEGER",
    "params_nonzero": "INTEGER",
    "flops_dense": "INTEGER",             # multiply-accumulates of conv + linear layers, one input
    "flops_effective": "INTEGER",         # MACs with non-zero weights only
    "clean_acc": "REAL",
    "attack": "TEXT NOT NULL",            # 'clean' row has eps 0
    "norm": "TEXT",                       # Linf | L2 | L0
    "eps": "REAL NOT NULL",
    "eps_str": "TEXT NOT NULL",           # RobustBench style, e.g. '8/255' or '0.1'
    "robust_acc": "REAL",
    "n_eval": "INTEGER",
    "attack_config": "TEXT",              # JSON of the attack's settings
    "attack_hash": "TEXT NOT NULL",
    "seed": "INTEGER",
    "config_hash": "TEXT",                # hash of the whole cell config (model + attack)
    "code_version": "TEXT",
    "train_wall_time": "REAL",            # seconds to make the model (training / pruning + fine-tuning)
    "eval_wall_time": "REAL",             # seconds for this attack
    "created_at": "REAL",
}

MODEL_COLUMNS: dict[str, str] = {
    "model_id": "TEXT PRIMARY KEY",
    "study": "TEXT",
    "kind": "TEXT",                       # base | pruned
    "parent_id": "TEXT",
    "dataset": "TEXT",
    "architecture": "TEXT",
    "method": "TEXT",
    "target_compression": "REAL",
    "seed": "INTEGER",
    "checkpoint": "TEXT",
    "metrics": "TEXT",                    # JSON
    "config": "TEXT",                     # JSON
    "wall_time": "REAL",
    "created_at": "REAL",
}


CHECK_COLUMNS: dict[str, str] = {
    "model_id": "TEXT NOT NULL",
    "evaluation_id": "TEXT NOT NULL",     # hash of the evaluation's settings (attacks, n, seed, transfer source)
    "name": "TEXT NOT NULL",              # e.g. eps_monotone:pgd, large_eps, input_gradients
    "passed": "INTEGER",                  # 1 / 0 (NULL: not decided)
    "value": "REAL",                      # the measured quantity the threshold applies to
    "threshold": "REAL",
    "detail": "TEXT",
    "code_version": "TEXT",
    "created_at": "REAL",
}
"""Table ``checks`` (created on first use): the sanity checks of evaluations, one row per (model, evaluation, check)."""

VULNERABILITY_COLUMNS: dict[str, str] = {
    "model_id": "TEXT NOT NULL",
    "threat": "TEXT NOT NULL",            # white | black (transfer from the unpruned base model)
    "attack_hash": "TEXT NOT NULL",       # the result rows' attack whose examples were measured
    "eps_str": "TEXT NOT NULL",
    "network": "REAL",                    # V of the network (seed 000 Eq. 2)
    "layers": "TEXT",                     # JSON {layer: V_l}
    "features": "TEXT",                   # JSON {layer: [V per channel / unit]} (the histograms)
    "n_points": "INTEGER",
    "created_at": "REAL",
}
"""Table ``vulnerability`` (created on first use): latent vulnerability of a model under one attack's examples."""


class ResultsStore:
    """SQLite store. Safe to open from several processes (WAL journal, retries on a busy database)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._create()
        except sqlite3.DatabaseError as exc:
            raise RobustPruneError(
                f"results database {self.path} cannot be opened ({exc}); move it away or choose another --out"
            ) from None

    def _create(self) -> None:
        cols = ", ".join(f"{k} {v}" for k, v in RESULT_COLUMNS.items())
        self._db.execute(f"CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}, "
                         "UNIQUE(model_id, attack_hash, eps_str))")
        mcols = ", ".join(f"{k} {v}" for k, v in MODEL_COLUMNS.items())
        self._db.execute(f"CREATE TABLE IF NOT EXISTS models ({mcols})")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- models ---------------------------------------------------------------------------------------------
    def get_model(self, model_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM models WHERE model_id = ?", (model_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        for k in ("metrics", "config"):
            out[k] = json.loads(out[k]) if out[k] else {}
        return out

    def put_model(self, record: dict[str, Any]) -> None:
        rec = {k: record.get(k) for k in MODEL_COLUMNS}
        rec["created_at"] = rec["created_at"] or time.time()
        for k in ("metrics", "config"):
            rec[k] = json.dumps(rec[k] or {}, sort_keys=True, default=str)
        names = ", ".join(rec)
        marks = ", ".join("?" for _ in rec)
        self._db.execute(f"INSERT OR REPLACE INTO models ({names}) VALUES ({marks})", tuple(rec.values()))

    def models(self) -> list[dict[str, Any]]:
        rows = [dict(r) for r in self._db.execute("SELECT * FROM models ORDER BY created_at")]
        for r in rows:
            for k in ("metrics", "config"):
                r[k] = json.loads(r[k]) if r[k] else {}
        return rows

    # ---- results --------------------------------------------------------------------------------------------
    def has_result(self, model_id: str, attack_hash: str, eps_str: str) -> bool:
        row = self._db.execute("SELECT 1 FROM results WHERE model_id = ? AND attack_hash = ? AND eps_str = ? LIMIT 1",
                               (model_id, attack_hash, eps_str)).fetchone()
        return row is not None

    def put_results(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert (or replace) rows in one transaction: all of them land, or none."""
        if not rows:
            return
        unknown = set().union(*(r.keys() for r in rows)) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}")
        names = list(RESULT_COLUMNS)
        sql = f"INSERT OR REPLACE INTO results ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
        now = time.time()
        values = []
        for r in rows:
            r = dict(r)
            r.setdefault("created_at", now)
            if isinstance(r.get("attack_config"), (dict, list)):
                r["attack_config"] = json.dumps(r["attack_config"], sort_keys=True)
            values.append(tuple(r.get(k) for k in names))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, values)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def results(self, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        sql = "SELECT * FROM results" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        return [dict(r) for r in self._db.execute(sql, tuple(params))]

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    # ---- sanity checks ------------------------------------------------------------------------------------
    def _create_checks(self) -> None:
        cols = ", ".join(f"{k} {v}" for k, v in CHECK_COLUMNS.items())
        self._db.execute(f"CREATE TABLE IF NOT EXISTS checks (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}, "
                         "UNIQUE(model_id, evaluation_id, name))")

    def put_checks(self, model_id: str, checks: Sequence[dict[str, Any]], *, evaluation_id: str = "",
                   code_version: str | None = None) -> None:
        """Insert (or replace) an evaluation's sanity checks ``[{name, passed, detail, value, threshold}]`` in
        one transaction."""
        self._create_checks()
        if not checks:
            return
        names = list(CHECK_COLUMNS)
        sql = f"INSERT OR REPLACE INTO checks ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
        now = time.time()
        values = []
        for c in checks:
            passed = c.get("passed")
            rec = {"model_id": model_id, "evaluation_id": evaluation_id, "name": c["name"],
                   "passed": None if passed is None else int(bool(passed)), "value": c.get("value"),
                   "threshold": c.get("threshold"), "detail": c.get("detail"), "code_version": code_version,
                   "created_at": now}
            values.append(tuple(rec[k] for k in names))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, values)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # ---- latent vulnerability -----------------------------------------------------------------------------
    def _create_vulnerability(self) -> None:
        cols = ", ".join(f"{k} {v}" for k, v in VULNERABILITY_COLUMNS.items())
        self._db.execute(f"CREATE TABLE IF NOT EXISTS vulnerability (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}, "
                         "UNIQUE(model_id, threat, attack_hash, eps_str))")

    def has_vulnerability(self, model_id: str, threat: str, attack_hash: str | None = None,
                          eps_str: str | None = None) -> bool:
        """A measurement of ``model_id`` under ``threat`` is stored (of that attack and ε when given)."""
        self._create_vulnerability()
        sql, args = "SELECT 1 FROM vulnerability WHERE model_id = ? AND threat = ?", [model_id, threat]
        if attack_hash is not None:
            sql, args = sql + " AND attack_hash = ?", args + [attack_hash]
        if eps_str is not None:
            sql, args = sql + " AND eps_str = ?", args + [eps_str]
        return self._db.execute(sql + " LIMIT 1", tuple(args)).fetchone() is not None

    def put_vulnerability(self, model_id: str, threat: str, attack_hash: str, eps_str: str, *, network: float,
                          layers: dict[str, float], features: dict[str, list[float]], n_points: int) -> None:
        """Insert (or replace) one measurement (a single statement: atomic)."""
        self._create_vulnerability()
        self._db.execute(
            "INSERT OR REPLACE INTO vulnerability (model_id, threat, attack_hash, eps_str, network, layers, features, "
            "n_points, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (model_id, threat, attack_hash, eps_str, float(network), json.dumps(layers), json.dumps(features),
             int(n_points), time.time()))

    def vulnerabilities(self) -> list[dict[str, Any]]:
        """Every stored measurement, oldest first, with ``layers`` / ``features`` decoded."""
        self._create_vulnerability()
        rows = [dict(r) for r in self._db.execute("SELECT * FROM vulnerability ORDER BY id")]
        for r in rows:
            r["layers"] = json.loads(r["layers"]) if r["layers"] else {}
            r["features"] = json.loads(r["features"]) if r["features"] else {}
        return rows

    def checks(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Stored sanity checks (of one model, or all), oldest first; ``passed`` as bool (None: undecided)."""
        self._create_checks()
        sql = "SELECT * FROM checks" + (" WHERE model_id = ?" if model_id is not None else "") + " ORDER BY id"
        rows = [dict(r) for r in self._db.execute(sql, (model_id,) if model_id is not None else ())]
        for r in rows:
            r["passed"] = None if r["passed"] is None else bool(r["passed"])
        return rows
