"""The results database (SQLite): the single source of truth of a study.

Tables:

``meta``           key -> JSON value. ``robustprune_schema`` (an integer, :data:`SCHEMA_VERSION`) marks a database
                   robustprune created; every other command refuses a file without it (or with another version).
``models``         one row per finished model cell (a trained base model or a pruned + fine-tuned model), keyed by
                   the hash of the config that made it (``model_id``); reused when the same cell comes up again.
``results``        one row per (model, attack, ε, n). A model's rows for one attack are written in one transaction, so
                   a crash never leaves half an evaluation behind.
``checks``         the sanity checks of evaluations, one row per (model, evaluation, check); ``ran`` says whether
                   the check ran (1) or was skipped (0, ``detail`` says why).
``vulnerability``  latent vulnerability of a model under one attack's examples.
``failures``       one row per study cell that failed (keyed by the model_id the cell would have had): the step
                   (``base training``, ``pruning``, ``evaluation``, ... or ``not run: ...`` for a cell that depends
                   on a failed one), the exception's class and one-line message, its traceback and how many runs
                   tried the cell. A cell that later succeeds loses its row. A model whose evaluation failed keeps
                   its ``models`` row with ``status`` 'failed' (else 'done'); a rerun reuses it and retries the
                   evaluation.

Vocabulary (``docs/``'s glossary): the compression rate ``rate`` is c (1/c of the prunable weights remain; 1.0
for the unpruned model; NULL when the method learns its rate, ``rate_kind`` = 'learned', and the achieved value
is ``achieved_compression``); ``group`` is the pruning group (unstructured | kernel | filter | column | none);
``settings`` is the method's settings as JSON; ``model_key`` hashes the model's whole config except the seed, so
rows of different seeds of one configuration share it (the report averages over seeds only within a
``model_key``, attack, ε and n); ``converged`` is 1 / 0 / NULL (not measured); ``flags`` is a JSON list of
strings (see :data:`FLAGS`).

Reading commands open the database read-only (``ResultsStore(path, readonly=True)``, SQLite ``mode=ro``): they
never write into a file, and a file that is not a robustprune database of this schema is refused with one line.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from robustprune.errors import RobustPruneError

SCHEMA_KEY = "robustprune_schema"
SCHEMA_VERSION = 3
"""Version 3: the ``failures`` table, ``models.status``, and ``train_precision`` / ``eval_precision`` on ``models``
and ``results`` (a version-2 database is migrated in place when a study opens it for writing, and read as it is by
the read-only commands: the new columns read as None); later within version 3, ``achieved_sparsity`` on ``models``
and ``filters_removed`` / ``flops_removed`` on both (added wherever missing when a study opens a file for writing;
see :data:`ADDED_IN_3`). Version 2: ``group`` / ``rate`` / ``rate_kind`` /
``settings`` / ``model_key`` / ``converged`` / ``flags`` (version 1, unmarked, had ``scheme`` and
``target_compression``, 0 meaning learned)."""
READABLE_VERSIONS = (2, 3)
"""Schema versions this robustprune opens (older ones are migrated when opened writable)."""

STATUS_DONE, STATUS_FAILED = "done", "failed"

GROUPS = ("unstructured", "kernel", "filter", "column", "none")
RATE_KINDS = ("set", "learned", "none")

FLAG_CHANCE = "chance-accuracy"
FLAG_NOTHING_PRUNED = "nothing-pruned"
FLAG_NOT_CONVERGED = "not-converged"
FLAGS: dict[str, str] = {
    FLAG_CHANCE: "accuracy at chance level (the model collapsed)",
    FLAG_NOTHING_PRUNED: "nothing was pruned (the model equals its parent's sparsity)",
    FLAG_NOT_CONVERGED: "the method did not converge",
}
"""Known flags and what they mean; any other string is allowed and shown as it is."""

JSON_RESULT_COLUMNS = ("settings", "flags")
"""Columns of ``results`` stored as JSON and decoded by :meth:`ResultsStore.results` (``attack_config`` stays the
JSON text it always was)."""

RESULT_COLUMNS: dict[str, str] = {
    "model_id": "TEXT NOT NULL",          # config hash of the model cell (seed included)
    "model_key": "TEXT",                  # hash of the model's config without the seed (shared across seeds)
    "study": "TEXT",
    "dataset": "TEXT NOT NULL",
    "architecture": "TEXT NOT NULL",
    "width": "REAL",
    "method": "TEXT NOT NULL",            # 'unpruned' for the base model
    "group": "TEXT",                      # unstructured | kernel | filter | column | none
    "scope": "TEXT",                      # local | global | learned | none
    "score": "TEXT",                      # magnitude | random | admm | bayesian | none
    "schedule": "TEXT",                   # iterative | one-shot | none
    "rate": "REAL",                       # c: 1/c of prunable weights remain; 1 unpruned; NULL when learned
    "rate_kind": "TEXT NOT NULL",         # set | learned | none (unpruned)
    "settings": "TEXT",                   # JSON of the method's settings
    "converged": "INTEGER",               # 1 | 0 | NULL (not measured)
    "flags": "TEXT",                      # JSON list of strings, e.g. ["chance-accuracy"]
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
    "n_eval": "INTEGER",                  # test points the row was measured on
    "attack_config": "TEXT",              # JSON of the attack's settings
    "attack_hash": "TEXT NOT NULL",
    "seed": "INTEGER",
    "config_hash": "TEXT",                # hash of the whole cell config (model + attack)
    "code_version": "TEXT",
    "train_wall_time": "REAL",            # seconds to make the model (training / pruning + fine-tuning)
    "train_epochs": "REAL",               # training budget of the same, in epochs (over the training split) ...
    "train_steps": "INTEGER",             # ... and in gradient steps
    "eval_wall_time": "REAL",             # seconds for this attack
    "created_at": "REAL",
    "train_precision": "TEXT",            # fp32 | tf32 | bf16: what the model's training computed in (schema 3)
    "eval_precision": "TEXT",             # fp32 | tf32: what this measurement computed in (schema 3)
    "filters_removed": "REAL",            # fraction of the base's Conv2d filters gone (all-zero or cut by slimming)
    "flops_removed": "REAL",              # 1 - dense MACs of the slim model / dense MACs of the unpruned base
}

MODEL_COLUMNS: dict[str, str] = {
    "model_id": "TEXT PRIMARY KEY",
    "model_key": "TEXT",
    "study": "TEXT",
    "kind": "TEXT",                       # base | pruned
    "parent_id": "TEXT",
    "dataset": "TEXT",
    "architecture": "TEXT",
    "method": "TEXT",
    "group": "TEXT",
    "rate": "REAL",
    "rate_kind": "TEXT",
    "settings": "TEXT",                   # JSON
    "seed": "INTEGER",
    "checkpoint": "TEXT",
    "checkpoint_sha256": "TEXT",
    "converged": "INTEGER",
    "convergence": "TEXT",                # JSON: the method's convergence signals (rho, residuals, gates, loss curve)
    "flags": "TEXT",                      # JSON list
    "metrics": "TEXT",                    # JSON
    "config": "TEXT",                     # JSON
    "wall_time": "REAL",
    "train_epochs": "REAL",
    "train_steps": "INTEGER",
    "created_at": "REAL",
    "status": "TEXT DEFAULT 'done'",      # done | failed (the model exists, its evaluation failed) (schema 3)
    "train_precision": "TEXT",            # fp32 | tf32 | bf16 (schema 3)
    "eval_precision": "TEXT",             # fp32 | tf32 (schema 3)
    "achieved_sparsity": "REAL",          # zeros / all Conv2d + Linear weights (= 1 - 1/achieved compression)
    "filters_removed": "REAL",            # fraction of the base's Conv2d filters gone (all-zero or cut by slimming)
    "flops_removed": "REAL",              # 1 - dense MACs of the slim model / dense MACs of the unpruned base
}
JSON_MODEL_COLUMNS = {"settings": dict, "convergence": dict, "flags": list, "metrics": dict, "config": dict}

CHECK_COLUMNS: dict[str, str] = {
    "model_id": "TEXT NOT NULL",
    "evaluation_id": "TEXT NOT NULL",     # hash of the evaluation's settings (attacks, n, seed, transfer source)
    "name": "TEXT NOT NULL",              # e.g. eps_monotone:pgd, large_eps, input_gradients
    "ran": "INTEGER NOT NULL DEFAULT 1",  # 1: the check ran; 0: it was skipped (detail says why)
    "passed": "INTEGER",                  # 1 / 0 (NULL: not decided, or skipped)
    "value": "REAL",                      # the measured quantity the threshold applies to
    "threshold": "REAL",
    "detail": "TEXT",
    "code_version": "TEXT",
    "created_at": "REAL",
}

VULNERABILITY_COLUMNS: dict[str, str] = {
    "model_id": "TEXT NOT NULL",
    "threat": "TEXT NOT NULL",            # white | black (transfer from the unpruned base model)
    "attack_hash": "TEXT NOT NULL",       # the result rows' attack whose examples were measured
    "eps_str": "TEXT NOT NULL",
    "network": "REAL",                    # V of the network (Madaan2020 Eq. 2)
    "layers": "TEXT",                     # JSON {layer: V_l}
    "features": "TEXT",                   # JSON {layer: [V per channel / unit]} (the histograms)
    "n_points": "INTEGER",
    "created_at": "REAL",
}

FAILURE_COLUMNS: dict[str, str] = {
    "cell_id": "TEXT PRIMARY KEY",        # the model_id the cell has (or would have had)
    "study": "TEXT",
    "dataset": "TEXT",
    "architecture": "TEXT",
    "seed": "INTEGER",
    "method": "TEXT",                     # 'unpruned' for a base model
    "rate": "REAL",                       # NULL: a learned rate
    "step": "TEXT",                       # base training | pruning | evaluation | ... | not run: <why>
    "error": "TEXT",                      # the exception's class name (NULL for a cell that was not run)
    "message": "TEXT",                    # one line
    "traceback": "TEXT",
    "attempts": "INTEGER",                # runs that tried the cell and failed
    "created_at": "REAL",
}

EXPORT_COLUMNS: dict[str, str] = {
    "model_id": "TEXT NOT NULL",
    "format": "TEXT NOT NULL",            # onnx | torchscript | exported-program
    "status": "TEXT NOT NULL",            # done | failed
    "file": "TEXT",                       # relative to the study folder
    "file_sha256": "TEXT",
    "checkpoint_sha256": "TEXT",          # the checkpoint the file was exported from (a changed one is re-exported)
    "message": "TEXT",                    # why it failed (one line)
    "file_bytes": "INTEGER",
    "params": "INTEGER",
    "params_nonzero": "INTEGER",
    "macs_dense": "INTEGER",
    "macs_effective": "INTEGER",
    "units_removed": "INTEGER",           # units cut out physically before the export
    "max_abs_logit_diff": "REAL",
    "prediction_agreement": "REAL",
    "robust_acc_model": "REAL",           # on the model's APGD examples, by PyTorch
    "robust_acc_export": "REAL",          # on the same examples, by the export's runtime
    "n_verify": "INTEGER",
    "eps": "REAL",
    "runtime_b1_ms": "REAL",
    "runtime_b64_ms": "REAL",
    "pytorch_b1_ms": "REAL",
    "pytorch_b64_ms": "REAL",
    "speedup_b1": "REAL",                 # against the unpruned base in the same runtime (NULL for the base)
    "speedup_b64": "REAL",
    "report": "TEXT",                     # JSON: the whole FILE.json
    "created_at": "REAL",
}
"""One row per (model, format) exported from a study (``robustprune report --export`` / the study key ``export``);
an additive table: databases without it read as having no exports."""

TABLES = ("meta", "models", "results", "checks", "vulnerability", "failures", "exports")

ADDED_IN_3 = {"models": ("status", "train_precision", "eval_precision", "achieved_sparsity", "filters_removed",
                         "flops_removed"),
              "results": ("train_precision", "eval_precision", "filters_removed", "flops_removed")}
"""Columns schema 3 added to the tables of schema 2. Those after the precision columns (the structure a model
lost: ``achieved_sparsity`` on models, ``filters_removed`` / ``flops_removed`` on both) came later within schema 3:
a schema-3 file written before them gets them, empty, the next time a study opens it for writing (every column of
this list is added wherever it is missing), and reads them as None until then."""


def _q(name: str) -> str:
    """A quoted SQL identifier (``group`` is a keyword)."""
    return '"' + name.replace('"', '""') + '"'


def _cols(columns: Mapping[str, str]) -> str:
    return ", ".join(f"{_q(k)} {v}" for k, v in columns.items())


def _insert_sql(table: str, names: Sequence[str]) -> str:
    return (f"INSERT OR REPLACE INTO {table} ({', '.join(_q(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})")


def _dump(value: Any, empty: Any) -> str:
    if isinstance(value, str):
        json.loads(value)  # already JSON: must parse
        return value
    return json.dumps(empty if value is None else value, sort_keys=True, default=str)


def _load(text: Any, empty: type) -> Any:
    if text is None or text == "":
        return empty()
    return json.loads(text)


def _rerun_hint(path: Path) -> str:
    return f"rerun the study into a new folder (robustprune study SPEC --out NEW_DIR) or move {path} away"


def validate_row(row: Mapping[str, Any], *, table: str = "results") -> None:
    """Refuse a row that breaks the vocabulary (a programming error in the writer: ``ValueError``)."""
    kind = row.get("rate_kind")
    rate = row.get("rate")
    if table == "results" or kind is not None:
        if kind not in RATE_KINDS:
            raise ValueError(f"{table} row: rate_kind must be one of {RATE_KINDS}, got {kind!r}")
        if kind == "learned" and rate is not None:
            raise ValueError(f"{table} row: a learned rate is stored as rate NULL (the achieved value goes in "
                             f"achieved_compression), got rate={rate!r}")
        if kind == "set" and (rate is None or float(rate) < 1.0):
            raise ValueError(f"{table} row: a set rate must be a compression rate c >= 1, got {rate!r}")
        if kind == "none" and rate is not None and float(rate) != 1.0:
            raise ValueError(f"{table} row: rate_kind 'none' (unpruned) has rate 1.0, got {rate!r}")
    group = row.get("group")
    if group is not None and group not in GROUPS:
        raise ValueError(f"{table} row: group must be one of {GROUPS}, got {group!r}")
    conv = row.get("converged")
    if conv is not None and conv not in (0, 1, True, False):
        raise ValueError(f"{table} row: converged must be 1, 0 or None, got {conv!r}")
    flags = row.get("flags")
    if flags is not None:
        try:
            parsed = json.loads(flags) if isinstance(flags, str) else flags
        except ValueError:
            parsed = flags
        if not isinstance(parsed, (list, tuple)) or not all(isinstance(f, str) for f in parsed):
            raise ValueError(f"{table} row: flags must be a list of strings, got {flags!r}")


class ResultsStore:
    """SQLite store. Safe to open from several processes (WAL journal, retries on a busy database).

    ``ResultsStore(path)`` creates the database (and its folder) when absent and marks it with the schema
    version; an existing file must carry the marker of a version this robustprune reads (a version-2 file is
    migrated to this version). ``ResultsStore(path, readonly=True)`` never writes: the file must exist and be a
    robustprune database of a readable schema (a version-2 file is read as it is). Either way, anything else is a
    one-line :class:`RobustPruneError` that says what is wrong and how to fix it.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.is_file():
                    raise RobustPruneError(f"no results database at {self.path}; run `robustprune study --out "
                                           f"{self.path.parent}` first")
                if self.path.stat().st_size == 0:
                    raise RobustPruneError(f"{self.path} is an empty file, not a robustprune results database; "
                                           + _rerun_hint(self.path))
                uri = "file:" + quote(str(self.path.resolve())) + "?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
                self._db.row_factory = sqlite3.Row
                self._check_marker()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                existed = self.path.is_file() and self.path.stat().st_size > 0
                self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
                self._db.row_factory = sqlite3.Row
                if existed:
                    self._check_marker()  # before anything writes: a foreign file stays untouched
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._create()
        except sqlite3.DatabaseError as exc:
            raise RobustPruneError(
                f"results database {self.path} cannot be opened ({exc}); move it away or choose another --out"
            ) from None
        except RobustPruneError:
            db = getattr(self, "_db", None)
            if db is not None:
                db.close()
            raise

    # ---- schema ---------------------------------------------------------------------------------------------
    def _tables(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _check_marker(self) -> int:
        """The schema version of an existing file (one this robustprune reads), else a one-line error."""
        tables = self._tables()
        if not tables:
            raise RobustPruneError(f"{self.path} holds no tables: it is not a robustprune results database; "
                                   + _rerun_hint(self.path))
        version = None
        if "meta" in tables:
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = ?", (SCHEMA_KEY,)).fetchone()
            except sqlite3.DatabaseError:
                row = None
            try:
                version = json.loads(row[0]) if row else None
            except (TypeError, ValueError):
                version = row[0]
        if version is None:
            if {"results", "models"} <= tables:
                raise RobustPruneError(f"{self.path} was written by an older robustprune (no schema marker; this "
                                       f"version reads schema {SCHEMA_VERSION}); " + _rerun_hint(self.path))
            raise RobustPruneError(f"{self.path} is not a robustprune results database (tables "
                                   f"{', '.join(sorted(tables))}); " + _rerun_hint(self.path))
        if version not in READABLE_VERSIONS:
            raise RobustPruneError(f"{self.path} has results schema {version}, this robustprune reads schema "
                                   f"{SCHEMA_VERSION}; " + _rerun_hint(self.path))
        return int(version)

    def _create(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # one creator at a time: a concurrent study waits, then sees the marker
        try:
            if self._tables():
                if self._check_marker() < SCHEMA_VERSION:
                    self._migrate()
                else:
                    self._add_missing_columns()
            else:
                self._db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                self._db.execute(f"CREATE TABLE models ({_cols(MODEL_COLUMNS)})")
                self._db.execute(f"CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                                 f"{_cols(RESULT_COLUMNS)}, UNIQUE(model_id, attack_hash, eps_str, n_eval))")
                self._db.execute(f"CREATE TABLE checks (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                                 f"{_cols(CHECK_COLUMNS)}, UNIQUE(model_id, evaluation_id, name))")
                self._db.execute(f"CREATE TABLE vulnerability (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                                 f"{_cols(VULNERABILITY_COLUMNS)}, UNIQUE(model_id, threat, attack_hash, eps_str))")
                self._db.execute(f"CREATE TABLE failures ({_cols(FAILURE_COLUMNS)})")
                self._db.execute("CREATE INDEX results_model ON results (model_id)")
                self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 (SCHEMA_KEY, json.dumps(SCHEMA_VERSION)))
            self._db.execute(f"CREATE TABLE IF NOT EXISTS exports ({_cols(EXPORT_COLUMNS)}, "
                             "PRIMARY KEY (model_id, format))")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}

    def _add_missing_columns(self) -> None:
        """Every column of :data:`ADDED_IN_3` a table lacks, added in place (NULL on the rows already there)."""
        for table, names in ADDED_IN_3.items():
            have = self._columns(table)
            columns = MODEL_COLUMNS if table == "models" else RESULT_COLUMNS
            for name in names:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {_q(name)} {columns[name]}")

    def _migrate(self) -> None:
        """Schema 2 -> 3 in place (inside :meth:`_create`'s transaction): the new columns (NULL on old rows; a
        model's status 'done'), the failures table, the marker."""
        self._add_missing_columns()
        self._db.execute(f"UPDATE models SET status = '{STATUS_DONE}' WHERE status IS NULL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS failures ({_cols(FAILURE_COLUMNS)})")
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(SCHEMA_VERSION), SCHEMA_KEY))

    def _write(self) -> None:
        if self.readonly:
            raise RobustPruneError(f"{self.path} was opened read-only; open it with ResultsStore(path) to write")

    def _transaction(self, sql: str, values: Sequence[tuple]) -> None:
        self._write()
        if self._db.in_transaction:  # inside batch(): part of the caller's one transaction
            self._db.executemany(sql, values)
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, values)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def batch(self):
        """Every write inside the ``with`` block is one transaction: all of it lands, or none (a work unit's
        results are committed this way, see ``robustprune.study.unit``)."""
        self._write()
        if self._db.in_transaction:
            yield self
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- raw rows of some models (a work unit's view of the database) ------------------------------------------
    _ROW_TABLES = (("models", "model_id"), ("results", "model_id"), ("checks", "model_id"),
                   ("vulnerability", "model_id"), ("failures", "cell_id"))

    def rows_for(self, ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Every stored row of the models (and failed cells) ``ids``, table by table, as plain values: what a
        work unit needs to see of the database to reuse finished work (see :meth:`load_rows`)."""
        ids = sorted(set(ids))
        out: dict[str, list[dict[str, Any]]] = {}
        tables = self._tables()
        for table, key in self._ROW_TABLES:
            rows: list[dict[str, Any]] = []
            if table in tables:
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    sql = f"SELECT * FROM {table} WHERE {key} IN ({', '.join('?' * len(chunk))})"
                    rows += [dict(r) for r in self._db.execute(sql, chunk)]
            out[table] = [{k: v for k, v in r.items() if k != "id"} for r in rows]
        return out

    def load_rows(self, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Insert (or replace) raw rows as :meth:`rows_for` returns them, in one transaction."""
        with self.batch():
            for table, _ in self._ROW_TABLES:
                have = self._columns(table)
                for r in rows.get(table, ()):
                    names = [k for k in r if k in have]
                    self._db.execute(_insert_sql(table, names), tuple(r[k] for k in names))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- meta -----------------------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self._write()
        if key == SCHEMA_KEY:
            raise ValueError(f"meta key {SCHEMA_KEY!r} is the store's own")
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (key, json.dumps(value, default=str)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    # ---- models ---------------------------------------------------------------------------------------------
    @staticmethod
    def _decode_model(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        for k in MODEL_COLUMNS:  # a schema-2 file read as it is: the columns of schema 3 read as None
            out.setdefault(k, None)
        if out["status"] is None:
            out["status"] = STATUS_DONE
        for k, empty in JSON_MODEL_COLUMNS.items():
            out[k] = _load(out[k], empty)
        return out

    def get_model(self, model_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM models WHERE model_id = ?", (model_id,)).fetchone()
        return None if row is None else self._decode_model(row)

    def put_model(self, record: Mapping[str, Any]) -> None:
        """Insert (or replace) one model row. JSON columns (settings, convergence, flags, metrics, config) take
        Python objects; unknown keys are refused."""
        unknown = set(record) - set(MODEL_COLUMNS)
        if unknown:
            raise ValueError(f"unknown model columns {sorted(unknown)}; known: {list(MODEL_COLUMNS)}")
        validate_row(record, table="models")
        rec = {k: record.get(k) for k in MODEL_COLUMNS}
        rec["created_at"] = rec["created_at"] or time.time()
        rec["status"] = rec["status"] or STATUS_DONE
        if rec["status"] not in (STATUS_DONE, STATUS_FAILED):
            raise ValueError(f"models row: status must be {STATUS_DONE!r} or {STATUS_FAILED!r}, got {rec['status']!r}")
        for k, empty in JSON_MODEL_COLUMNS.items():
            rec[k] = _dump(rec[k], empty())
        if rec["converged"] is not None:
            rec["converged"] = int(bool(rec["converged"]))
        self._write()
        self._db.execute(_insert_sql("models", list(rec)), tuple(rec.values()))

    def models(self) -> list[dict[str, Any]]:
        return [self._decode_model(r) for r in self._db.execute("SELECT * FROM models ORDER BY created_at")]

    def update_model(self, model_id: str, values: Mapping[str, Any]) -> None:
        """Set plain (non-JSON) columns of a stored model row, e.g. the structure measured when it is evaluated
        (``{"achieved_sparsity": ..., "filters_removed": ..., "flops_removed": ...}``); unknown columns are
        refused."""
        bad = set(values) - (set(MODEL_COLUMNS) - set(JSON_MODEL_COLUMNS) - {"model_id"})
        if bad:
            raise ValueError(f"update_model: unknown or JSON columns {sorted(bad)}")
        if not values:
            return
        self._write()
        names = list(values)
        self._db.execute(f"UPDATE models SET {', '.join(f'{_q(n)} = ?' for n in names)} WHERE model_id = ?",
                         (*(values[n] for n in names), model_id))

    def set_model_status(self, model_id: str, status: str) -> None:
        """Mark a stored model 'done' or 'failed' (its evaluation failed; the model itself is kept and reused)."""
        if status not in (STATUS_DONE, STATUS_FAILED):
            raise ValueError(f"status must be {STATUS_DONE!r} or {STATUS_FAILED!r}, got {status!r}")
        self._write()
        self._db.execute("UPDATE models SET status = ? WHERE model_id = ? AND status IS NOT ?",
                         (status, model_id, status))

    # ---- results --------------------------------------------------------------------------------------------
    def has_result(self, model_id: str, attack_hash: str, eps_str: str, n_eval: int | None = None) -> bool:
        """A row of this model, attack and ε is stored (on ``n_eval`` points when given: a rerun on another number
        of points is another row, never a reuse)."""
        sql = "SELECT 1 FROM results WHERE model_id = ? AND attack_hash = ? AND eps_str = ?"
        args: tuple = (model_id, attack_hash, eps_str)
        if n_eval is not None:
            sql, args = sql + " AND n_eval = ?", args + (int(n_eval),)
        return self._db.execute(sql + " LIMIT 1", args).fetchone() is not None

    def put_results(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert (or replace) rows in one transaction: all of them land, or none. ``settings`` and
        ``attack_config`` take dicts, ``flags`` a list of strings; unknown keys are refused."""
        if not rows:
            return
        unknown = set().union(*(r.keys() for r in rows)) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)} (schema {SCHEMA_VERSION}: 'scheme' is now "
                             f"'group', 'target_compression' is 'rate' + 'rate_kind')")
        names = list(RESULT_COLUMNS)
        now = time.time()
        values = []
        for r in rows:
            validate_row(r)
            r = dict(r)
            r.setdefault("created_at", now)
            if isinstance(r.get("attack_config"), (dict, list)):
                r["attack_config"] = json.dumps(r["attack_config"], sort_keys=True)
            r["settings"] = _dump(r.get("settings"), {})
            r["flags"] = _dump(sorted(set(json.loads(r["flags"]) if isinstance(r.get("flags"), str)
                                          else (r.get("flags") or []))), [])
            if r.get("converged") is not None:
                r["converged"] = int(bool(r["converged"]))
            values.append(tuple(r.get(k) for k in names))
        self._transaction(_insert_sql("results", names), values)

    def results(self, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows (oldest first) with ``settings`` decoded to a dict and ``flags`` to a list (``attack_config``
        stays JSON text). ``where`` is SQL over the columns; quote ``"group"``."""
        sql = "SELECT * FROM results" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        out = []
        for r in self._db.execute(sql, tuple(params)):
            d = dict(r)
            for k in ADDED_IN_3["results"]:  # a schema-2 file read as it is
                d.setdefault(k, None)
            d["settings"] = _load(d["settings"], dict)
            d["flags"] = _load(d["flags"], list)
            out.append(d)
        return out

    # ---- sanity checks ------------------------------------------------------------------------------------
    def put_checks(self, model_id: str, checks: Sequence[Mapping[str, Any]], *, evaluation_id: str = "",
                   code_version: str | None = None) -> None:
        """Insert (or replace) an evaluation's sanity checks ``[{name, passed, detail, value, threshold, ran}]`` in
        one transaction. ``ran`` defaults to True; a skipped check is ``{"name": ..., "ran": False, "detail":
        "why it was skipped"}`` (``passed`` is then stored as NULL)."""
        if not checks:
            return
        names = list(CHECK_COLUMNS)
        now = time.time()
        values = []
        for c in checks:
            ran = bool(c.get("ran", True))
            passed = c.get("passed") if ran else None
            rec = {"model_id": model_id, "evaluation_id": evaluation_id, "name": c["name"], "ran": int(ran),
                   "passed": None if passed is None else int(bool(passed)), "value": c.get("value"),
                   "threshold": c.get("threshold"), "detail": c.get("detail"), "code_version": code_version,
                   "created_at": now}
            values.append(tuple(rec[k] for k in names))
        self._transaction(_insert_sql("checks", names), values)

    def checks(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Stored sanity checks (of one model, or all), oldest first; ``passed`` as bool (None: undecided or
        skipped), ``ran`` as bool."""
        sql = "SELECT * FROM checks" + (" WHERE model_id = ?" if model_id is not None else "") + " ORDER BY id"
        rows = [dict(r) for r in self._db.execute(sql, (model_id,) if model_id is not None else ())]
        for r in rows:
            r["passed"] = None if r["passed"] is None else bool(r["passed"])
            r["ran"] = bool(r["ran"])
        return rows

    # ---- latent vulnerability -----------------------------------------------------------------------------
    def has_vulnerability(self, model_id: str, threat: str, attack_hash: str | None = None,
                          eps_str: str | None = None) -> bool:
        """A measurement of ``model_id`` under ``threat`` is stored (of that attack and ε when given)."""
        sql, args = "SELECT 1 FROM vulnerability WHERE model_id = ? AND threat = ?", [model_id, threat]
        if attack_hash is not None:
            sql, args = sql + " AND attack_hash = ?", args + [attack_hash]
        if eps_str is not None:
            sql, args = sql + " AND eps_str = ?", args + [eps_str]
        return self._db.execute(sql + " LIMIT 1", tuple(args)).fetchone() is not None

    def put_vulnerability(self, model_id: str, threat: str, attack_hash: str, eps_str: str, *, network: float,
                          layers: dict[str, float], features: dict[str, list[float]], n_points: int) -> None:
        """Insert (or replace) one measurement (a single statement: atomic)."""
        self._write()
        self._db.execute(
            "INSERT OR REPLACE INTO vulnerability (model_id, threat, attack_hash, eps_str, network, layers, features, "
            "n_points, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (model_id, threat, attack_hash, eps_str, float(network), json.dumps(layers), json.dumps(features),
             int(n_points), time.time()))

    def vulnerabilities(self) -> list[dict[str, Any]]:
        """Every stored measurement, oldest first, with ``layers`` / ``features`` decoded."""
        rows = [dict(r) for r in self._db.execute("SELECT * FROM vulnerability ORDER BY id")]
        for r in rows:
            r["layers"] = json.loads(r["layers"]) if r["layers"] else {}
            r["features"] = json.loads(r["features"]) if r["features"] else {}
        return rows

    # ---- failed cells -------------------------------------------------------------------------------------
    def put_failure(self, record: Mapping[str, Any], *, attempted: bool = True) -> dict[str, Any]:
        """Insert (or replace) the failure row of one cell (``record`` keyed by :data:`FAILURE_COLUMNS`, at least
        ``cell_id`` and ``step``). ``attempts`` counts the runs that tried the cell and failed: the stored count
        plus one when ``attempted`` (a cell that was not run because a cell it depends on failed keeps its count).
        Returns the row as stored."""
        unknown = set(record) - set(FAILURE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown failure columns {sorted(unknown)}; known: {list(FAILURE_COLUMNS)}")
        if not record.get("cell_id") or not record.get("step"):
            raise ValueError("a failure row needs a cell_id and a step")
        self._write()
        rec = {k: record.get(k) for k in FAILURE_COLUMNS}
        prev = self._db.execute("SELECT attempts FROM failures WHERE cell_id = ?", (rec["cell_id"],)).fetchone()
        if rec["attempts"] is None:
            rec["attempts"] = (int(prev[0] or 0) if prev else 0) + (1 if attempted else 0)
        rec["created_at"] = rec["created_at"] or time.time()
        self._db.execute(_insert_sql("failures", list(rec)), tuple(rec.values()))
        return rec

    def clear_failure(self, cell_id: str) -> None:
        """Forget the failure of a cell that has now succeeded (nothing when there is none)."""
        self._write()
        self._db.execute("DELETE FROM failures WHERE cell_id = ?", (cell_id,))

    # ---- exports --------------------------------------------------------------------------------------------
    def put_export(self, record: Mapping[str, Any]) -> None:
        """Insert or replace the export row of one (model, format); ``report`` takes a dict."""
        unknown = set(record) - set(EXPORT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown export columns {sorted(unknown)}; known: {list(EXPORT_COLUMNS)}")
        rec = {k: record.get(k) for k in EXPORT_COLUMNS}
        rec["created_at"] = rec["created_at"] or time.time()
        rec["report"] = _dump(rec["report"], {})
        self._write()
        self._db.execute(_insert_sql("exports", list(rec)), tuple(rec.values()))

    def exports(self, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """The export rows (none in a database written before exports existed)."""
        if "exports" not in self._tables():
            return []
        sql = "SELECT * FROM exports" + (f" WHERE {where}" if where else "") + " ORDER BY created_at, model_id"
        out = []
        for r in self._db.execute(sql, tuple(params)):
            d = dict(r)
            d["report"] = _load(d["report"], dict)
            out.append(d)
        return out

    def failures(self, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """The failure rows, oldest first (none in a schema-2 file read as it is)."""
        if "failures" not in self._tables():
            return []
        sql = "SELECT * FROM failures" + (f" WHERE {where}" if where else "") + " ORDER BY created_at, cell_id"
        return [dict(r) for r in self._db.execute(sql, tuple(params))]
