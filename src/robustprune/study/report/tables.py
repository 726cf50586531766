"""The report's tables as data (``Table`` of ``Cell``s), rendered by ``markdown.py`` and ``page.py`` alike, so the
Markdown and the HTML always say the same thing.

Tables: the headline (clean / APGD / PGD per model), sweet spots (Merkle2022 Table 2), robustness and vulnerability
(Madaan2020 Table 1), methods side by side at each rate (Jian2022 Tables VI/VII), and the sanity checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from robustprune.study.report.data import (
    BETTER,
    NOISE,
    UNKNOWN,
    WORSE,
    Column,
    Comparison,
    Entry,
    Group,
    ReportData,
    Stat,
    build,
    compare,
    flag_order,
    line_key,
    summarize_convergence,
)
from robustprune.rates import sparsity_percent
from robustprune.study.store import FLAG_CHANCE, FLAG_NOT_CONVERGED, FLAGS


@dataclass
class Cell:
    text: str = ""
    cls: str | None = None      # gain | loss | confounded | flag (rendering hints)
    title: str | None = None    # a hover text in HTML
    left: bool = False

    @property
    def strong(self) -> bool:
        return self.cls == "gain"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    left_columns: int = 1      # leading columns aligned left


# ---- flags ---------------------------------------------------------------------------------------------------
SYMBOLS = ("†", "‡", "§", "¶", "‖", "#", "◊", "※")
FLAG_WORDS = {FLAG_NOT_CONVERGED: "did not converge", FLAG_CHANCE: "accuracy at chance level (collapsed)",
              "nothing-pruned": "nothing was pruned",
              "mechanism-did-not-act": "the method's mechanism did not act at this budget (not the method's result: "
                                       "see the model's convergence.mechanism)"}


class Marks:
    """Flag symbols shared by every table and figure of one report, and the footnotes of one table."""

    def __init__(self, data: ReportData) -> None:
        flags = sorted({f for g in data.groups for e in g.entries for f in e.flag_seeds}, key=flag_order)
        self.symbol = {f: SYMBOLS[i] if i < len(SYMBOLS) else f"[{f}]" for i, f in enumerate(flags)}

    def of(self, e: Entry) -> str:
        return "".join(self.symbol[f] for f in e.flags)

    def notes(self, entries: list[Entry]) -> list[str]:
        """One footnote per flag that occurs among ``entries``: what it means and on which rows."""
        out = []
        for f, sym in self.symbol.items():
            hit = [e for e in entries if f in e.flag_seeds]
            if not hit:
                continue
            items = []
            for e in hit:
                seeds = sorted(e.flag_seeds[f])
                txt = f"{e.name} c={e.rate_text()} (seed{'s' if len(seeds) > 1 else ''} " \
                      f"{', '.join(map(str, seeds))} of {len(e.seeds)}"
                if f == FLAG_NOT_CONVERGED:
                    sig = "; ".join(dict.fromkeys(summarize_convergence(e.convergence[s]) for s in seeds
                                                  if e.convergence.get(s)))
                    txt += f": {sig}" if sig else ""
                items.append(txt + ")")
            words = FLAG_WORDS.get(f) or FLAGS.get(f) or f
            out.append(f"{sym} {words}: " + "; ".join(items) + ".")
        return out


def method_cell(e: Entry, marks: Marks) -> Cell:
    sym = marks.of(e)
    title = "; ".join(FLAG_WORDS.get(f) or FLAGS.get(f) or f for f in e.flags) or None
    return Cell(e.name + (f" {sym}" if sym else ""), "flag" if sym else None, title, left=True)


def noise_note(entries: list[Entry]) -> str:
    if any(len(e.seeds) < 2 for e in entries):
        return ("One seed per model here (or fewer than two on one side of a comparison): the spread over seeds is "
                "unknown, so no change is marked as a gain or a loss.")
    return ("Mean ± std over seeds. Marked (bold green / red): a change of the mean beyond 2 std of the difference, "
            "2·sqrt(sd² + sd_ref²); anything smaller is within noise and left plain.")


def value_cell(stat: Stat, cmp: Comparison | None, scale: float = 100.0, digits: int = 1) -> Cell:
    if not stat:
        return Cell()
    txt = stat.text(scale, digits)
    if cmp is None:
        return Cell(txt)
    if cmp.change is not None:
        txt += f" ({cmp.change:+.1f}%)"
    if cmp.confounded:
        return Cell(txt, "confounded", "lower, but accuracy collapsed with it: not a gain")
    cls = {BETTER: "gain", WORSE: "loss"}.get(cmp.verdict)
    title = {NOISE: "within noise (2 std over seeds)", UNKNOWN: "one seed: the spread is unknown"}.get(cmp.verdict)
    return Cell(txt, cls, title)


def accuracy_collapsed(e: Entry, base: Entry | None, white: Column | None) -> bool:
    """Accuracy fell with the model: chance-level flag, a marked loss of clean or white-box accuracy, or a relative
    fall of the clean accuracy by a fifth or more (whatever the noise)."""
    if FLAG_CHANCE in e.flag_seeds:
        return True
    if base is None:
        return False
    for col_stat, ref in ((e.clean, base.clean), (e.cell(white), base.cell(white))):
        c = compare(col_stat, ref)
        if c is not None and (c.verdict == WORSE or (c.change is not None and c.change <= -20.0)):
            return True
    return False


def n_text(data: ReportData) -> str:
    ns = data.n_values
    if len(ns) == 1:
        return f"the first {ns[0]} test images"
    return "the first n test images (n differs between rows: see the n column; rows on different n are never averaged)"


# ---- headline ----------------------------------------------------------------------------------------------------
PGD_OVER_APGD = 0.03


def headline_columns(g: Group) -> list[Column]:
    """APGD (when the database has it) then PGD, white-box: APGD at every ε it ran, PGD at those ε (all its ε
    without APGD)."""
    apgd = [c for c in g.attack_columns(transfer=False) if c.attack == "apgd"]
    pgd = [c for c in g.attack_columns(transfer=False) if c.attack == "pgd"]
    if apgd:
        eps = {c.eps_str for c in apgd}
        pgd = [c for c in pgd if c.eps_str in eps] or pgd
    return sorted(apgd, key=lambda c: (c.eps, c.label)) + sorted(pgd, key=lambda c: (c.eps, c.label))


def headline_tables(data: ReportData, marks: Marks) -> list[Table]:
    out = []
    for g in data.groups:
        cols = headline_columns(g)
        entries = g.sorted_by_method()
        header = ["method", "c", "sparsity (%)", "achieved", "n", "seeds", "clean (%)"] + [f"{c.label} (%)"
                                                                                        for c in cols]
        apgd_at = {c.eps_str: c for c in cols if c.attack == "apgd"}
        rows = []
        overstated = False
        for e in entries:
            cells = []
            for c in cols:
                st, ref = e.cell(c), e.cell(apgd_at.get(c.eps_str)) if c.attack == "pgd" else Stat()
                if st and ref and st.mean - ref.mean > PGD_OVER_APGD:
                    overstated = True
                    cells.append(Cell(st.text() + " *", "flag", "PGD above APGD by more than 3 points"))
                else:
                    cells.append(Cell(st.text()))
            counts = e.rate_counts
            sp = e.sparsity_text() + (f" ({counts})" if counts not in ("weights", "none", "learned") else "")
            rows.append([method_cell(e, marks), Cell(e.rate_text()), Cell(sp), Cell(e.achieved_text()),
                         Cell(str(e.n_eval)), Cell(str(len(e.seeds))), Cell(e.clean.text())] + cells)
        lead = "APGD-CE + APGD-T" if apgd_at else "PGD"
        notes = [f"White-box accuracy (%) on {n_text(data)}; the headline attack is {lead}"
                 + ("" if lead != "PGD" else " (no APGD rows in this database)") + ". c: the target compression "
                 "rate; sparsity: the same target in the field's words, 1 - 1/c, of the weights for unstructured "
                 "methods and of the filters (kernels, columns) of the method's scope for structured ones, marked "
                 "'(filters)'; achieved: the overall compression actually reached (all Conv2d + Linear weights / "
                 "non-zero ones)."]
        if overstated:
            notes.append("* PGD exceeds APGD at the same ε by more than 3 points: PGD overstates this model's "
                         "robustness (read the APGD column).")
        out.append(Table(f"{g.title}: clean / " + " / ".join(dict.fromkeys(c.attack.upper() for c in cols)),
                         header, rows, notes + marks.notes(entries)))
    return out


# ---- sweet spots (Merkle2022 Table 2) ----------------------------------------------------------------------------
def sweet_spot_tables(data: ReportData, marks: Marks) -> list[Table]:
    """Per curve (one method and configuration): the unpruned model then each rate (sorted by c), every column
    with the relative margin of the mean to the unpruned model."""
    out = []
    for g in data.groups:
        cols = [c for c in g.columns if c.attack == "clean"] + g.attack_columns()
        lines: dict[tuple, list[Entry]] = {}
        for e in g.sorted_by_method():
            if not e.unpruned:
                lines.setdefault(line_key(e), []).append(e)
        for entries in lines.values():
            entries.sort(key=Entry.sort_rate)
            base = g.baseline(entries[0])
            header = ["c", "achieved", "n"] + [f"{c.label} (%)" for c in cols]
            rows = []
            if base is not None:
                rows.append([Cell("1 (unpruned)", left=True), Cell(""), Cell(str(base.n_eval))]
                            + [Cell(base.cell(c).text()) for c in cols])
            for e in entries:
                sym = marks.of(e)
                rows.append([Cell(e.rate_text() + (f" {sym}" if sym else ""), "flag" if sym else None, left=True),
                             Cell(e.achieved_text()), Cell(str(e.n_eval))]
                            + [value_cell(e.cell(c), compare(e.cell(c), base.cell(c)) if base else None)
                               for c in cols])
            notes = [] if base is not None else ["No unpruned model on the same points to compare with."]
            out.append(Table(f"{g.title} / {entries[0].name}", header, rows,
                             notes + [noise_note(entries + ([base] if base else []))] + marks.notes(entries)))
    return out


# ---- robustness and vulnerability (Madaan2020 Table 1) -----------------------------------------------------------
ROBUSTNESS_COLUMNS = [("clean", "clean acc (%)", 100, 1, +1), ("white", "white-box adv acc (%)", 100, 1, +1),
                      ("black", "black-box adv acc (%)", 100, 1, +1), ("v_white", "vulnerability (white)", 1, 3, -1),
                      ("v_black", "vulnerability (black)", 1, 3, -1), ("sparsity", "weight sparsity (%)", 100, 1, 0),
                      ("xflops", "xFLOPs", 1, 2, 0), ("memory", "memory (% params)", 100, 1, 0)]


def _white_black(g: Group) -> tuple[Column | None, Column | None]:
    """The white-box column: the one the vulnerability was measured under, else the middle ε of PGD (or the first
    white-box attack); the black-box column: its transfer counterpart."""
    by_key = {c.key: c for c in g.columns}
    white = next((by_key[e.v_col] for e in g.entries if e.v_col in by_key), None)
    if white is None:
        cands = [c for c in g.attack_columns(transfer=False) if c.attack == "pgd"] or g.attack_columns(transfer=False)
        cands.sort(key=lambda c: c.eps)
        white = cands[len(cands) // 2] if cands else None
    black = None
    if white is not None:
        black = next((c for c in g.attack_columns(transfer=True)
                      if c.base_attack == white.attack and c.eps_str == white.eps_str), None)
    return white, black


def robustness_values(g: Group) -> list[dict[str, Any]]:
    white, black = _white_black(g)
    out = []
    for e in g.sorted_by_method():
        base = g.baseline(e)
        stats = {"clean": e.clean, "white": e.cell(white), "black": e.cell(black), "v_white": e.v_white,
                 "v_black": e.v_black, "sparsity": e.sparsity,
                 "xflops": Stat([1.0 / f for f in e.flops_ratio.values if f > 0]), "memory": e.params_ratio}
        refs = {} if base is None else {"clean": base.clean, "white": base.cell(white), "black": base.cell(black),
                                        "v_white": base.v_white, "v_black": base.v_black}
        collapsed = accuracy_collapsed(e, base, white)
        vals = {}
        for name, _, _, _, good in ROBUSTNESS_COLUMNS:
            st = stats[name]
            if not st:
                continue
            cmp = compare(st, refs[name], good) if name in refs else None
            if cmp is not None and name.startswith("v_") and cmp.diff < 0 and collapsed:
                cmp.confounded = True
            vals[name] = {"mean": st.mean, "std": st.std, "n": st.n, "change": cmp.change if cmp else None,
                          "stat": st, "cmp": cmp}
        out.append({"entry": e, "method": e.method, "rate": e.rate, "label": e.rate_text(), "values": vals})
    return out


def robustness_tables(data: ReportData, marks: Marks) -> list[Table]:
    out = []
    for g in data.groups:
        white, black = _white_black(g)
        rows = []
        entries = []
        for item in robustness_values(g):
            e = item["entry"]
            entries.append(e)
            cells = [method_cell(e, marks), Cell(e.rate_text()), Cell(str(e.n_eval))]
            for name, _, scale, digits, _ in ROBUSTNESS_COLUMNS:
                v = item["values"].get(name)
                cells.append(value_cell(v["stat"], v["cmp"], scale, digits) if v else Cell())
            rows.append(cells)
        title = (f"{g.title}: white-box {white.label if white else '-'}, black-box {black.label if black else '-'}")
        notes = [noise_note(entries), "A fall in vulnerability that comes with an accuracy collapse (chance level, a "
                 "marked loss, or clean accuracy down by a fifth) is shown in grey italics, not as a gain."]
        out.append(Table(title, ["method", "c", "n"] + [h for _, h, _, _, _ in ROBUSTNESS_COLUMNS], rows,
                         notes + marks.notes(entries)))
    return out


def robustness_table(rows: list[dict[str, Any]], vulns: list[dict[str, Any]],
                     models: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Madaan2020 Table 1 as data, per (dataset, architecture): ``{dataset, architecture, white, black, eps,
    entries: [{method, rate, label, values: {name: {mean, std, n, change}}}]}`` (``std`` None with one seed)."""
    data = build(rows, models or [], [], vulns)
    out = []
    for g in data.groups:
        white, black = _white_black(g)
        entries = [{k: v for k, v in item.items() if k != "entry"} for item in robustness_values(g)]
        for item in entries:
            item["values"] = {n: {k: v for k, v in d.items() if k not in ("stat", "cmp")}
                              for n, d in item["values"].items()}
        out.append({"dataset": g.dataset, "architecture": g.architecture, "white": white.label if white else None,
                    "black": black.label if black else None, "eps": white.eps_str if white else None,
                    "entries": entries})
    return out


# ---- methods at each rate (Jian2022 Tables VI/VII) ---------------------------------------------------------------
def _best_marks(entries: list[Entry], col: Column | None, clean: bool = False) -> set[int]:
    """Indices of the entry whose mean is the best and beats every other by more than 2 std of the difference
    (needs ≥ 2 seeds everywhere); nothing otherwise."""
    stats = [(i, e.clean if clean else e.cell(col)) for i, e in enumerate(entries)]
    stats = [(i, s) for i, s in stats if s]
    if len(stats) < 2:
        return set()
    i_best, s_best = max(stats, key=lambda t: t[1].mean)
    for i, s in stats:
        if i != i_best:
            c = compare(s_best, s)
            if c is None or c.verdict != BETTER:
                return set()
    return {i_best}


def comparison_tables(data: ReportData, marks: Marks) -> list[Table]:
    out = []
    for g in data.groups:
        cols = g.attack_columns()
        header = (["c", "method", "target counts", "achieved", "n", "seeds",
                   "achieved sparsity (% of Conv2d + Linear weights)", "filters removed (% of conv filters)",
                   "non-zero params", "eff. FLOPs (%)", "natural (%)"] + [f"{c.label} (%)" for c in cols]
                  + ["train time (s)", "train epochs", "train steps", "eval time (s)"])
        rows = []
        entries = g.sorted_by_rate()
        groups: dict[tuple, list[Entry]] = {}
        for e in entries:
            groups.setdefault((e.unpruned, e.learned, e.rate if not e.learned else None), []).append(e)
        for (unpruned, learned, rate), block in groups.items():
            best = {"clean": _best_marks(block, None, clean=True), **{c.key: _best_marks(block, c) for c in cols}}
            for i, e in enumerate(block):
                rate_txt = ("1 (unpruned)" if unpruned else "learned" if learned else f"{rate:g}") if i == 0 else ""

                def acc(st: Stat, k: Any) -> Cell:
                    return Cell(st.text(), "gain" if i in best[k] else None,
                                "best at this rate beyond 2 std" if i in best[k] else None)

                rows.append([Cell(rate_txt, left=True), method_cell(e, marks), Cell(e.rate_counts, left=True),
                             Cell(e.achieved_text()), Cell(str(e.n_eval)), Cell(str(len(e.seeds))),
                             Cell(e.sparsity.text()), Cell(e.filters_removed.text()), Cell(e.params_nonzero.text(1, 0)), Cell(e.flops_ratio.text()), acc(e.clean, "clean")]
                            + [acc(e.cell(c), c.key) for c in cols]
                            + [Cell(e.train_time.text(1, 1)), Cell(e.train_epochs.text(1, 2)),
                               Cell(e.train_steps.text(1, 0)), Cell(e.eval_time.text(1, 1))])
        notes = ["Methods side by side at equal target c (sorted by c; learned rates last, with the achieved "
                 "compression). The same c counts what 'target counts' says: weights for unstructured methods, the "
                 "filters of their scope for filter methods; the measured columns count one way for every method. Training budget: seconds, epochs over the training split and gradient steps (for "
                 "iterative chains, the whole chain up to this rate). Bold: the best of a column within a rate, only "
                 "when it beats every other beyond 2 std over seeds.", noise_note(entries)]
        out.append(Table(g.title, header, rows, notes + marks.notes(entries), left_columns=2))
    return out


# ---- sanity checks -----------------------------------------------------------------------------------------------
CHECK_CATALOGUE = {
    "eps_monotone": "robust accuracy does not rise with ε",
    "large_eps": "PGD at ε = 1 drives accuracy to ~0",
    "more_iterations": "more steps / restarts do not raise accuracy",
    "converged": "the attack had converged (more steps do not lower accuracy much)",
    "whitebox_vs_transfer": "white-box is not weaker than transfer",
    "input_gradients": "input gradients are non-zero (no gradient masking)",
    "min_norm_valid": "minimal-norm points are adversarial with the reported norm",
}
"""The evaluation's sanity checks (``robustprune.evaluation.checks``), by base name."""


def check_base(name: str) -> str:
    return name.split(":", 1)[0]


def checks_summary(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """What ran and what did not: ``ran`` {base name: count}, ``skipped`` {base name: reasons}, ``not_run``
    (catalogue checks never run here), ``passed``, ``failed`` (check rows), ``total`` (ran)."""
    ran = [c for c in checks if c.get("ran", True)]
    skipped = [c for c in checks if not c.get("ran", True)]
    ran_names: dict[str, int] = {}
    for c in ran:
        ran_names[check_base(c["name"])] = ran_names.get(check_base(c["name"]), 0) + 1
    skip_names: dict[str, set[str]] = {}
    for c in skipped:
        if check_base(c["name"]) not in ran_names:
            skip_names.setdefault(check_base(c["name"]), set()).add(c.get("detail") or "skipped")
    not_run = [n for n in CHECK_CATALOGUE if n not in ran_names and n not in skip_names]
    failed = [c for c in ran if c.get("passed") is False]
    return {"ran": ran_names, "skipped": {k: sorted(v) for k, v in skip_names.items()}, "not_run": not_run,
            "failed": failed, "total": len(ran), "passed": sum(1 for c in ran if c.get("passed") is True),
            "undecided": sum(1 for c in ran if c.get("passed") is None)}


def checks_text(checks: list[dict[str, Any]]) -> str:
    """One paragraph: how many of the checks that ran passed, which ran, which did not (and why)."""
    if not checks:
        return "No sanity checks are stored in this database."
    s = checks_summary(checks)
    txt = f"Sanity checks: {s['passed']}/{s['total']} that ran passed"
    if s["failed"]:
        txt += f", {len(s['failed'])} FAILED (" + "; ".join(f"{c['name']}: {c.get('detail') or ''}".strip()
                                                           for c in s["failed"][:10]) + ")"
    if s["undecided"]:
        txt += f", {s['undecided']} undecided"
    txt += ". Ran: " + ", ".join(f"{n} ({k}×)" for n, k in sorted(s["ran"].items())) + "."
    missing = [f"{n} ({'; '.join(r)})" for n, r in sorted(s["skipped"].items())]
    missing += [f"{n} ({CHECK_CATALOGUE[n]})" for n in s["not_run"]]
    if missing:
        txt += " Did not run here: " + ", ".join(missing) + "; a pass covers only the checks that ran."
    return txt


def checks_table(checks: list[dict[str, Any]], data: ReportData) -> Table:
    label = {}
    for m in data.models:
        es = data.entry_of_model.get(m["model_id"])
        name = es[0].name if es else m.get("method")
        rate = es[0].rate_text() if es else ""
        label[m["model_id"]] = f"{name} c={rate} seed {m.get('seed')}"
    rows = []
    for c in sorted(checks, key=lambda c: (c.get("passed") is not False, not c.get("ran", True), c["model_id"],
                                           c["name"])):
        ran = c.get("ran", True)
        status = "skipped" if not ran else {True: "yes", False: "NO", None: "?"}[c.get("passed")]
        cls = "loss" if ran and c.get("passed") is False else None
        val = "" if c.get("value") is None else f"{c['value']:.4g}"
        thr = "" if c.get("threshold") is None else f"{c['threshold']:.4g}"
        rows.append([Cell(label.get(c["model_id"], c["model_id"]), left=True), Cell(c["name"], left=True),
                     Cell(status, cls), Cell(val), Cell(thr), Cell(c.get("detail") or "", left=True)])
    return Table("checks", ["model", "check", "passed", "value", "threshold", "detail"], rows, left_columns=2)


# ---- models and their roles -----------------------------------------------------------------------------------
def failure_label(f: dict[str, Any]) -> str:
    """``dataset / architecture / seed s / method c=rate`` of a failure row."""
    method = f.get("method") or "?"
    rate = f.get("rate")
    c = "" if method == "unpruned" else (" c=learned" if rate is None else f" c={float(rate):g}")
    return f"{f.get('dataset')} / {f.get('architecture')} / seed {f.get('seed')} / {method}{c}"


def failures_text(data: ReportData) -> str:
    """One paragraph on the failed cells ('' when none failed)."""
    fs = data.failures
    if not fs:
        return ""
    failed = [f for f in fs if f.get("error")]
    skipped = len(fs) - len(failed)
    parts = [f"{len(failed)} model{'s' if len(failed) != 1 else ''} failed"] if failed else []
    if skipped:
        parts.append(f"{skipped} {'were' if skipped != 1 else 'was'} not run because a model "
                     f"{'they depend' if skipped != 1 else 'it depends'} on failed")
    return (" and ".join(parts) + ". The study went on with every other model; the tables below have no results "
            "for them. Rerunning the same command retries them and reuses every finished model (the full "
            "tracebacks are in the database's failures table).")


def failures_table(data: ReportData) -> Table | None:
    """The cells that failed (which model, at which step, why) and those not run because of them."""
    if not data.failures:
        return None
    rows = []
    for f in sorted(data.failures, key=lambda f: (not f.get("error"), f.get("dataset") or "",
                                                  f.get("architecture") or "", f.get("seed") or 0,
                                                  f.get("method") != "unpruned", f.get("method") or "",
                                                  f.get("rate") if f.get("rate") is not None else float("inf"))):
        why = f"{f['error']}: {f.get('message') or ''}" if f.get("error") else (f.get("message") or "")
        rows.append([Cell(failure_label(f), left=True), Cell(str(f.get("cell_id") or "")),
                     Cell(str(f.get("step") or ""), "fail" if f.get("error") else None, left=True),
                     Cell(why, left=True), Cell(str(f.get("attempts") or 0))])
    return Table("which model, at which step, why", ["model", "model id", "step", "error", "attempts"], rows,
                 left_columns=4)


def _model_label(m: dict[str, Any] | None, model_id: str) -> str:
    if m is None:
        return model_id[:12]
    method = m.get("method") or "unpruned"
    rate = m.get("rate")
    c = "" if method == "unpruned" else (" c=learned" if rate is None else f" c={float(rate):g}")
    return f"{method}{c} / seed {m.get('seed')}"


def deployment_text(data: ReportData) -> str:
    """What the deployment table shows and how it was measured."""
    ex = [x for x in data.exports if x.get("status") == "done"]
    lat = next(((x.get("report") or {}).get("latency") or {} for x in ex if (x.get("report") or {}).get("latency")),
               {})
    where = (f"{lat.get('device', 'cpu')}, {lat.get('threads', '?')} threads" if lat else "not measured")
    n = sorted({int(x["n_verify"]) for x in ex if x.get("n_verify")})
    return ("Every model exported and loaded back by the format's own runtime. Logits: max |difference| to the "
            "model on the first " + "/".join(map(str, n or ["?"])) + " test images; APGD: accuracy on the APGD "
            "examples crafted on the model (PyTorch, strict fp32) given to the export (must be within 0.2 points "
            "of the model's). Latency: median ms per call in the export's runtime (" + where + "); speed-up: the "
            "unpruned base's latency in the same runtime over this model's. Dense kernels do not skip zero "
            "weights: unstructured sparsity saves no time here, only units removed physically do (units cut).")


def deployment_table(data: ReportData) -> Table | None:
    """One row per exported (model, format): size, MACs, latency, speed-up, and the verification."""
    if not data.exports:
        return None
    by_id = {m["model_id"]: m for m in data.models}

    def key(x: dict[str, Any]) -> tuple:
        m = by_id.get(x["model_id"]) or {}
        return (m.get("seed") or 0, m.get("kind") != "base", m.get("method") or "", m.get("rate") or 0.0,
                x["format"])

    rows = []
    for x in sorted(data.exports, key=key):
        label = Cell(_model_label(by_id.get(x["model_id"]), x["model_id"]), left=True)
        if x.get("status") != "done":
            rows.append([label, Cell(x["format"], left=True), Cell("FAILED", "fail"),
                         Cell(x.get("message") or "", left=True)] + [Cell("") for _ in range(8)])
            continue

        def f(v: Any, spec: str) -> str:
            return "" if v is None else format(v, spec)

        ok = (x.get("robust_acc_model") is not None and x.get("robust_acc_export") is not None
              and abs(x["robust_acc_model"] - x["robust_acc_export"]) <= 0.002 + 1e-12)
        rows.append([
            label, Cell(x["format"], left=True), Cell("verified" if ok else "CHECK", None if ok else "fail"),
            Cell(f"{x['file_bytes'] / 1e6:.3f}"),
            Cell(f"{x['params_nonzero']:,} / {x['params']:,}"),
            Cell(f"{x['macs_dense'] / 1e6:.2f}"), Cell(str(x.get("units_removed") or 0)),
            Cell(f"{f(x.get('runtime_b1_ms'), '.3f')} / {f(x.get('runtime_b64_ms'), '.2f')}"),
            Cell("base" if (by_id.get(x["model_id"]) or {}).get("kind") == "base" else
                 f"{f(x.get('speedup_b1'), '.2f')}x / {f(x.get('speedup_b64'), '.2f')}x"),
            Cell(f"{x['max_abs_logit_diff']:.1e}"),
            Cell(f"{100 * x['prediction_agreement']:.1f}"),
            Cell(f"{100 * x['robust_acc_model']:.1f} / {100 * x['robust_acc_export']:.1f}"),
        ])
    return Table("exports", ["model", "format", "check", "file MB", "non-zero / params", "dense MMACs", "units cut",
                             "latency ms b1 / b64", "speed-up b1 / b64", "max logit diff", "same class %",
                             "APGD % model / export"], rows, left_columns=2)


def _precisions(m: dict[str, Any]) -> tuple[str, str]:
    return (m.get("train_precision") or "not recorded", m.get("eval_precision") or "not recorded")


PRECISION_WORDS = {"fp32": "fp32 (IEEE float32, TF32 off)", "tf32": "tf32 (TF32 tensor cores)",
                   "bf16": "bf16 (bfloat16 autocast, float32 weights)"}


def precision_text(data: ReportData) -> str:
    """The precision of training and evaluation in one sentence ('' when no model recorded it)."""
    pairs = {_precisions(m) for m in data.models if m.get("train_precision") or m.get("eval_precision")}
    if not pairs:
        return ""
    if len(pairs) == 1:
        tp, ep = next(iter(pairs))
        unrecorded = sum(1 for m in data.models if not (m.get("train_precision") or m.get("eval_precision")))
        return (f"Precision: training {PRECISION_WORDS.get(tp, tp)}, evaluation {PRECISION_WORDS.get(ep, ep)}"
                + (f" ({unrecorded} model(s) of an earlier version did not record theirs)" if unrecorded else "")
                + ".")
    return ("Precision differs between models (training / evaluation): see the precision column of the models "
            "table.")


def models_table(data: ReportData, marks: Marks) -> Table:
    """Every stored model with its role (the unpruned base model of each seed, the pruned ones), rate, seed,
    checkpoint file (named by the hash of its config) and content hash; its status when an evaluation failed, and
    its precision when the models differ in it."""
    show_status = any(m.get("status") == "failed" for m in data.models)
    show_precision = len({_precisions(m) for m in data.models}) > 1
    measured: dict[str, dict[str, Any]] = {}
    for r in data.rows:
        for k in ("achieved_sparsity", "filters_removed", "flops_removed"):
            if r.get(k) is not None:
                measured.setdefault(r["model_id"], {}).setdefault(k, r[k])
    rows = []
    for m in sorted(data.models, key=lambda m: (m.get("kind") != "base", m.get("method") or "", m.get("seed") or 0,
                                                m.get("rate") or 0)):
        es = data.entry_of_model.get(m["model_id"])
        e = es[0] if es else None
        role = "unpruned base" if m.get("kind") == "base" else f"pruned from {str(m.get('parent_id') or '?')[:10]}"
        given = (m.get("metrics") or {}).get("given") if m.get("kind") == "base" else None
        if given:  # the study key base_models: where the base came from
            role += f" (given: {given.get('file')}, sha256 {str(given.get('sha256'))[:12]}; not trained here)"
        conv = {1: "yes", 0: "NO", None: ""}.get(m.get("converged"), str(m.get("converged")))
        rate = m.get("rate")
        c = e.rate_text() if e else ("learned" if rate is None else f"{float(rate):g}")
        target = e.sparsity_text() if e else ("learned" if rate is None else sparsity_percent(rate))
        row = [Cell(m["model_id"], left=True), Cell(role, left=True),
               method_cell(e, marks) if e else Cell(m.get("method") or "", left=True),
               Cell(c), Cell(target), Cell(e.rate_counts if e else "", left=True), Cell(str(m.get("seed"))),
               Cell(conv)]
        row += [Cell(_percent(_model_value(m, measured, k))) for k in ("achieved_sparsity", "filters_removed",
                                                                      "flops_removed")]
        if show_status:
            failed = m.get("status") == "failed"
            row.append(Cell("evaluation failed" if failed else "done", "fail" if failed else None))
        if show_precision:
            row.append(Cell(" / ".join(_precisions(m))))
        row += [Cell(m.get("checkpoint") or "", left=True), Cell((m.get("checkpoint_sha256") or "")[:12])]
        rows.append(row)
    header = ["model id", "role", "method", "c", "target sparsity (%)", "target counts", "seed", "converged",
              "achieved sparsity (% of Conv2d + Linear weights)", "filters removed (% of conv filters)",
              "FLOPs removed (%)"] + (["status"] if show_status else []) \
        + (["precision (train / eval)"] if show_precision else []) + ["checkpoint", "sha256"]
    notes = ["target sparsity: 1 - 1/c of what 'target counts' says: weights for unstructured methods (and for a "
             "structured method with budget: weights), filters (kernels, columns) for structured methods, i.e. the "
             "fraction of the filters of the method's scope removed, as the Adversarial Pruning Benchmark counts. "
             "Measured on each model, one way for every method: achieved sparsity = "
             "zeros among the weights of every Conv2d and Linear layer (first layer, shortcuts and classifier "
             "included; biases and BatchNorm not); filters removed = conv filters (output channels) of the unpruned "
             "architecture that are gone, cut out physically or left with all-zero weights; FLOPs removed = 1 - "
             "dense multiply-accumulates of the slim model (every removable unit cut out) / those of the unpruned "
             "architecture. Unstructured zeros remove neither filters nor dense FLOPs."]
    return Table("models", header, rows, notes, left_columns=3)


def _model_value(m: dict[str, Any], measured: dict[str, dict[str, Any]], key: str) -> float | None:
    """A model's measured structure: its ``models`` row, else (a database written before the row had it) the
    value its result rows carry (``measured``: model id -> {column: first non-empty value})."""
    v = m.get(key)
    if v is None:
        v = measured.get(m["model_id"], {}).get(key)
    return None if v is None else float(v)


def _percent(v: float | None) -> str:
    return "" if v is None else f"{100.0 * v:.1f}"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_table(data: ReportData) -> Table | None:
    """Per method (variant) of the study, every setting that differs from the method's own default (whose source is
    in ``robustprune list methods --settings NAME``): a short budget or a calibration is stated beside the results,
    never passed off as the paper's recipe. None when every method ran on its defaults."""
    from robustprune.errors import RobustPruneError
    from robustprune.methods import METHODS
    from robustprune.study.spec import method_of

    seen: dict[str, set[str]] = {}
    for m in data.models:
        name = m.get("method")
        if m.get("kind") == "base" or not name or name == "unpruned":
            continue
        stored = m.get("settings")
        stored = json.loads(stored) if isinstance(stored, str) else (stored or {})
        try:
            defaults = METHODS.get(method_of(name)).Settings().model_dump(mode="json")
        except (RobustPruneError, ValueError):  # a method this version no longer has: nothing to compare against
            continue
        flat, dflt = _flat(stored), _flat(defaults)
        for k in sorted(flat):
            if k in dflt and flat[k] != dflt[k]:
                default = "the task's epochs" if k.endswith("epochs") and dflt[k] is None else _value_text(dflt[k])
                seen.setdefault(name, set()).add(f"{k} = {_value_text(flat[k])} (default {default})")
    if not seen:
        return None
    rows = [[Cell(n, left=True), Cell("; ".join(sorted(v)), left=True)] for n, v in sorted(seen.items())]
    return Table("per method (variant)", ["method", "setting = value (default)"], rows,
                 notes=["Defaults and their sources (paper tables, reference codes): `robustprune list methods "
                        "--settings NAME`."], left_columns=2)


def _value_text(v: Any) -> str:
    return "None" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
