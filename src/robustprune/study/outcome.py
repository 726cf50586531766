"""What a study run reports back: its counts, failures and the one-line summary of failed cells (the CLI's last
line), shared by the in-process and the Ray runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one line (its class name when it has none), at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rate_text(rate: float | None, method: str | None = None) -> str:
    if method == "unpruned":
        return "unpruned"
    return "c=learned" if rate is None else f"c={float(rate):g}"


def cell_label(f: dict[str, Any]) -> str:
    """``dataset/architecture/seed s/method c=rate`` of a failure row (or any row with those keys)."""
    method = f.get("method") or "?"
    where = f"{f.get('dataset')}/{f.get('architecture')}/seed {f.get('seed')}"
    return f"{where}/{method}" + ("" if method == "unpruned" else f" {rate_text(f.get('rate'))}")


def failure_summary(failures: list[dict[str, Any]], total: int, *, limit: int = 3, width: int = 160) -> str:
    """``N of M models failed: <model> (<step>): <error>: <message>; ...`` for the CLI's last line: the cells
    that failed (the first ``limit``), then how many were not run because a cell they depend on failed."""
    failed = [f for f in failures if f.get("error")]
    skipped = [f for f in failures if not f.get("error")]
    n = len(failures)
    parts = []
    for f in failed[:limit]:
        msg = f"{f['error']}: {f.get('message') or ''}".strip()
        if len(msg) > width:
            msg = msg[: width - 1] + "…"
        parts.append(f"{cell_label(f)} ({f.get('step')}): {msg}")
    if len(failed) > limit:
        parts.append(f"and {len(failed) - limit} more")
    text = f"{n} of {max(total, n)} models failed: " + "; ".join(parts) if parts else \
        f"{n} of {max(total, n)} models failed"
    if skipped:
        text += (f" ({len(skipped)} of them not run: a model they depend on failed)" if parts
                 else ": not run, a model they depend on failed")
    return text + "; the report lists them; rerun the same command to retry them (finished models are reused)"


@dataclass
class StudyOutcome:
    out_dir: Path
    db_path: Path
    models_trained: int = 0
    models_reused: int = 0
    rows_written: int = 0
    wall_time: float = 0.0
    report_files: list[Path] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    """Cells whose training diverged (each also in ``failures``)."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """The failure rows written by this run (see ``ResultsStore.failures``): cells that failed, and cells not run
    because a cell they depend on failed."""
    models_planned: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    """Ray node id -> work units it ran (empty in-process)."""
    report_error: str | None = None
    """Why the report could not be written (None: it was, or the run never got that far)."""
    exports: dict[str, int] = field(default_factory=dict)
    """``{"exported", "reused", "failed"}`` of the study key ``export`` (empty without it)."""
    export_error: str | None = None
    """The one-line summary of the exports that failed (None: none did)."""

    @property
    def ok(self) -> bool:
        return not self.failures and self.report_error is None and self.export_error is None

    def summary(self) -> str | None:
        """The one-line failure summary (None when nothing failed)."""
        parts = []
        if self.failures:
            parts.append(failure_summary(self.failures, self.models_planned))
        if self.export_error is not None:
            parts.append(self.export_error)
        if self.report_error is not None:
            parts.append(f"the report could not be written: {self.report_error}")
        return "; ".join(parts) if parts else None
