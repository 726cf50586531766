"""The leaderboard section: the study's models in a published benchmark's format (clean / AutoAttack accuracy per
sparsity, per method), with the benchmark's published numbers for the same cell beside them, in columns of their
own. Shown only for a study with a ``leaderboard`` key (``leaderboard: apb`` in the APB presets).

Published numbers live in ``<name>_published.json`` beside this file: where they come from (repository, file,
commit), the protocol they were measured under, which of our methods a published method name stands for (per
structure), and one entry per published cell. They are never computed, averaged or mixed into our columns.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from robustprune.study.report.data import Column, Entry, Group, ReportData
from robustprune.study.report.tables import Cell, Marks, Table, method_cell

PUBLISHED_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def load_published(name: str) -> dict[str, Any]:
    """The published numbers ``<name>_published.json`` (e.g. ``apb``)."""
    path = PUBLISHED_DIR / f"{name}_published.json"
    return json.loads(path.read_text(encoding="utf-8"))


def structure_of(e: Entry) -> str:
    """``unstructured`` (single weights) or ``structured`` (kernels, filters, columns, gated units)."""
    return "unstructured" if (e.group or "unstructured") == "unstructured" else "structured"


def published_name(pub: dict[str, Any], method: str, structure: str) -> str | None:
    """The published method name our ``method`` (a study entry, ``NAME@variant`` allowed) stands for."""
    from robustprune.study.spec import method_of

    base = method_of(method)
    for name, by_structure in pub.get("methods", {}).items():
        if base in (by_structure or {}).get(structure, []):
            return name
    return None


def published_counts(pub: dict[str, Any], structure: str) -> str:
    """What a published cell's sparsity counts: ``weights`` for unstructured cells, ``filters`` for structured ones
    (APB's S cells: ``round(ratio * n_filters)`` filters removed, the rule of Twin-Rep's reference), unless the
    published file says otherwise (``counts``)."""
    return (pub.get("counts") or {}).get(structure, "weights" if structure == "unstructured" else "filters")


def published_cell(pub: dict[str, Any], dataset: str, architecture: str, structure: str, sparsity: float,
                   name: str) -> dict[str, Any] | None:
    """The published cell (``clean``, ``autoattack`` in %) of a method at a sparsity (%), or None."""
    for c in pub.get("cells", []):
        if (c["dataset"], c["architecture"], c["structure"], c["method"]) == (dataset, architecture, structure, name) \
                and abs(float(c["sparsity"]) - sparsity) < 0.01:
            return c
    return None


def _our_column(g: Group, pub: dict[str, Any]) -> tuple[Column | None, str]:
    """Our white-box column in the published format: the benchmark's attack at the budget nearest its ε (else
    APGD-CE + APGD-T, said so), and a note on any difference."""
    attack = pub.get("attack", "autoattack")
    eps = float(pub.get("eps", 0.0))
    for name in (attack, "apgd"):
        cols = [c for c in g.attack_columns(transfer=False) if c.attack == name]
        if cols:
            col = min(cols, key=lambda c: (abs(c.eps - eps), c.label))
            note = ""
            if name != attack:
                note = (f"No {attack} rows in this study: our column is {col.label} (APGD-CE + APGD-T, AutoAttack's "
                        "first two attacks), an upper bound on what AutoAttack would give.")
            elif eps and abs(col.eps - eps) > 1e-6:
                note = f"Our {attack} ran at ε {col.eps_str}, the published numbers at ε {eps:g}."
            return col, note
    return None, f"No {attack} (nor apgd) rows in this study: our robust column is empty."


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def leaderboard_tables(data: ReportData, marks: Marks) -> list[Table]:
    """One table per (dataset, architecture): every model of the study in the published format, the published
    cell beside it where the benchmark has one."""
    name = (data.spec or {}).get("leaderboard")
    if not name or not (PUBLISHED_DIR / f"{name}_published.json").is_file():
        return []  # none, or a name this version has no numbers for: no section
    pub = load_published(name)
    short = pub.get("short", name.upper())
    out = []
    for g in data.groups:
        col, col_note = _our_column(g, pub)
        ours_robust = f"ours: {col.label} (%)" if col is not None else "ours: AutoAttack (%)"
        header = ["structure", "sparsity (%)", "method", f"{short} name", "c", "target counts",
                  "achieved sparsity (% of Conv2d + Linear weights)", "filters removed (% of conv filters)", "n",
                  "seeds", "ours: clean (%)", ours_robust,
                  f"{short} published: clean (%)", f"{short} published: AutoAttack (%)"]
        entries = sorted(g.entries, key=lambda e: (not e.unpruned, structure_of(e) != "unstructured",
                                                   e.learned, e.rate or 1.0, e.method, e.variant, e.n_eval))
        rows, matched, unmatched_counts = [], 0, []
        for e in entries:
            structure = "none" if e.unpruned else structure_of(e)
            sparsity = None if e.learned else round(100.0 * (1.0 - 1.0 / (e.rate or 1.0)), 4)
            ref = published_name(pub, e.method, structure) if not e.unpruned else None
            cell = (published_cell(pub, g.dataset, g.architecture, structure, sparsity, ref)
                    if ref is not None and sparsity is not None else None)
            if cell is not None and e.rate_counts != published_counts(pub, structure):
                unmatched_counts.append(f"{e.name} at {e.sparsity_text()} % ({e.rate_counts})")
                cell = None  # the same number of a different thing: never set beside each other
            matched += cell is not None
            rows.append([
                Cell(structure if not e.unpruned else "unpruned", left=True), Cell(e.sparsity_text()),
                method_cell(e, marks), Cell(ref or "", left=True), Cell(e.rate_text()), Cell(e.rate_counts, left=True),
                Cell(e.sparsity.text()), Cell(e.filters_removed.text()), Cell(str(e.n_eval)), Cell(str(len(e.seeds))),
                Cell(e.clean.text(digits=2)), Cell(e.cell(col).text(digits=2)),
                Cell(_pct(cell["clean"]) if cell else "", title=f"{short} published" if cell else None),
                Cell(_pct(cell["autoattack"]) if cell else "", title=f"{short} published" if cell else None),
            ])
        src = pub.get("source", {})
        notes = [f"{short} published: {pub.get('title', name)}; numbers copied from {src.get('repository')} "
                 f"{src.get('file')} ({src.get('section')}, commit {str(src.get('commit'))[:12]}). They are the "
                 f"benchmark's measurements of its own checkpoints ({pub.get('protocol')}), not ours: never averaged "
                 "with, or put in a column of, the numbers this study measured.",
                 f"{matched} of {len(rows)} rows have a published cell (same dataset, architecture, structure, "
                 "sparsity and method); an empty published cell means the benchmark has none for it.",
                 f"sparsity: the target 1 - 1/c of what 'target counts' says (unstructured methods: weights; "
                 f"structured methods: the filters of their scope removed, as {short} counts; 'weights' for a "
                 "structured method run with budget: weights). A row is matched to a published cell only when both "
                 f"count the same thing ({short} unstructured cells: "
                 f"{published_counts(pub, 'unstructured')}; structured cells: {published_counts(pub, 'structured')}). "
                 "Achieved sparsity counts zeros over every Conv2d and Linear weight, filters removed the conv "
                 "filters gone (all-zero or cut), one way for every method: both are stored for every row."]
        if unmatched_counts:
            notes.append("Not matched because the target counts something else than the published cell: "
                         + "; ".join(unmatched_counts) + ".")
        if col_note:
            notes.append(col_note)
        out.append(Table(f"{g.title}: {short} leaderboard format", header, rows, notes + marks.notes(entries),
                         left_columns=1))
    return out


def leaderboard_intro(data: ReportData) -> str:
    """The section's first paragraph ('' without a leaderboard)."""
    name = (data.spec or {}).get("leaderboard")
    if not name:
        return ""
    pub = load_published(name)
    short = pub.get("short", name.upper())
    return (f"The models of this study in the format of {pub.get('title', name)}: clean and AutoAttack accuracy (%) "
            f"per sparsity and method. Columns headed 'ours' were measured by this study; columns headed '{short} "
            f"published' are the benchmark's own numbers for the same cell, copied from its repository "
            f"({pub.get('paper')}).")
