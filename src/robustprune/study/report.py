"""Turn a study's results database into a Markdown report and a plot of robust accuracy against compression."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from robustprune.errors import RobustPruneError
from robustprune.study.store import ResultsStore


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def _fmt(values: list[float]) -> str:
    m, s = _mean_std(values)
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if len(values) > 1 else "")


LEARNED = 0.0
"""The ``target_compression`` of models whose rate was learned (Bayesian recipes)."""


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, list[float]]]:
    """(dataset, architecture, method, rate) -> {"clean": [...], "<attack>@<eps>": [...], "sparsity": [...],
    "compression": [...], ...} over seeds."""
    out: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["dataset"], r["architecture"], r["method"], float(r["target_compression"]))
        col = "clean" if r["attack"] == "clean" else f"{r['attack']}@{r['eps_str']}"
        out[key][col].append(float(r["robust_acc"]))
        if r["attack"] == "clean":
            out[key]["sparsity"].append(float(r["achieved_sparsity"] or 0.0))
            out[key]["compression"].append(float(r["achieved_compression"] or 1.0))
            out[key]["flops_ratio"].append(float(r["flops_effective"] or 0) / max(float(r["flops_dense"] or 1), 1.0))
            out[key]["params"].append(float(r["params_nonzero"] or 0) / max(float(r["params_total"] or 1), 1.0))
    return out


def rate_label(rate: float, cells: dict[str, list[float]] | None = None) -> str:
    """``c`` as shown: the target rate, or "learned (x2.4)" (the achieved rate) for a learned one."""
    if rate != LEARNED:
        return f"{rate:g}"
    comp = (cells or {}).get("compression") or []
    return "learned" + (f" (×{_mean_std(comp)[0]:.1f})" if comp else "")


def x_position(key: tuple, cells: dict[str, list[float]]) -> float:
    """Where a cell sits on a compression axis: its target rate, or the mean achieved one when learned."""
    if key[3] != LEARNED:
        return key[3]
    comp = cells.get("compression") or [1.0]
    return max(_mean_std(comp)[0], 1.0)


def _attack_columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, float] = {}
    for r in rows:
        if r["attack"] != "clean":
            seen.setdefault(f"{r['attack']}@{r['eps_str']}", (r["attack"], float(r["eps"])))
    return sorted(seen, key=lambda k: seen[k])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    agg = aggregate(rows)
    cols = _attack_columns(rows)
    lines = []
    for (dataset, arch) in sorted({(k[0], k[1]) for k in agg}):
        lines.append(f"### {dataset} / {arch}\n")
        header = ["method", "c", "sparsity", "eff. FLOPs", "clean"] + cols
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        keys = sorted((k for k in agg if k[0] == dataset and k[1] == arch),
                      key=lambda k: (k[2] != "unpruned", k[2], k[3]))
        for k in keys:
            cells = agg[k]
            row = [k[2], rate_label(k[3], cells), f"{100 * _mean_std(cells['sparsity'])[0]:.1f}%" if cells["sparsity"] else "",
                   f"{100 * _mean_std(cells['flops_ratio'])[0]:.1f}%" if cells["flops_ratio"] else "",
                   _fmt(cells["clean"]) if cells["clean"] else ""]
            row += [_fmt(cells[c]) if cells.get(c) else "" for c in cols]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_robust_vs_compression(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Seed 003 Fig. 1 style: one panel per (attack, ε) plus clean, one line per method over compression rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    if not agg:
        return None
    panels = ["clean"] + _attack_columns(rows)
    groups = sorted({(k[0], k[1]) for k in agg})
    ncols = min(len(panels), 4)  # wrap: at most 4 panels a row, each (dataset, architecture) on its own rows
    rows_per_group = -(-len(panels) // ncols)
    fig, axes = plt.subplots(len(groups) * rows_per_group, ncols,
                             figsize=(3.8 * ncols, 3.2 * len(groups) * rows_per_group), squeeze=False)
    for ax in axes.flat[len(groups) * len(panels):]:
        ax.set_visible(False)
    for gi in range(len(groups)):
        for ax in axes[gi * rows_per_group:(gi + 1) * rows_per_group].flat[len(panels):]:
            ax.set_visible(False)
    methods = sorted({k[2] for k in agg if k[2] != "unpruned"})
    for gi, (dataset, arch) in enumerate(groups):
        base = agg.get((dataset, arch, "unpruned", 1.0), {})
        for pi, panel in enumerate(panels):
            ax = axes[gi * rows_per_group + pi // ncols][pi % ncols]
            for m in methods:
                pts = sorted((x_position(k, v), *_mean_std(v[panel])) for k, v in agg.items()
                             if k[0] == dataset and k[1] == arch and k[2] == m and v.get(panel))
                if base.get(panel):
                    pts = [(1.0, *_mean_std(base[panel]))] + pts
                if pts:
                    xs, ys, sds = zip(*pts)
                    # mean over seeds, error bars one std (zero-length with a single seed)
                    learned = any(k[2] == m and k[3] == LEARNED for k in agg)
                    ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * s for s in sds], marker="o", ms=3, lw=1.3,
                                capsize=2, label=m + (" (rate learned: at its achieved c)" if learned else ""))
            ax.set_xscale("log", base=2)
            rates = sorted({k[3] for k in agg if k[0] == dataset and k[1] == arch and k[3] != LEARNED} | {1.0})
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
            ax.minorticks_off()
            if base.get(panel):
                ax.axhline(100 * _mean_std(base[panel])[0], color="0.5", ls=":", lw=1)
            ax.set_xlabel("compression rate c")
            ax.set_title(panel, fontsize=10)
            if pi % ncols == 0:
                ax.set_ylabel(f"{dataset} / {arch}\naccuracy (%)")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 / (len(groups) * rows_per_group), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path) -> list[Path]:
    """Write ``report.md``, ``robust_vs_compression.png`` and the self-contained ``report.html`` from
    ``out_dir/results.sqlite``."""
    out = Path(out_dir)
    db = out / "results.sqlite"
    if not db.exists():
        raise RobustPruneError(f"no results database at {db}; run `robustprune study --out {out}` first")
    with ResultsStore(db) as store:
        rows = store.results()
        spec = store.get_meta("spec", {})
        models = store.models()
        checks = store.checks()
        vulns = store.vulnerabilities()
        store_meta = {k: store.get_meta(k) for k in ("command", "started_at", "study_wall_time")}
    files: list[Path] = []
    plot = plot_robust_vs_compression(rows, out / "robust_vs_compression.png")
    train_time = sum(float(m["wall_time"] or 0) for m in models)  # per model: its own step(s) only
    eval_time = sum(float(r["eval_wall_time"] or 0) for r in rows)
    text = [f"# robustprune study: {spec.get('name', out.name)}", ""]
    text.append("Robust accuracy (%) on the first "
                f"{rows[0]['n_eval'] if rows else 0} test images; mean ± std over seeds where there are several. "
                "`c` is the compression rate (1/c of prunable weights remain); sparsity counts zeros actually present "
                "in the prunable weights; eff. FLOPs = multiply-accumulates with non-zero weights / dense.")
    text.append("")
    text.append(markdown_table(rows))
    if plot:
        text += ["", f"![robust accuracy against compression rate]({plot.name})", ""]
    text.append(f"Models: {len(models)}; result rows: {len(rows)}; time spent training/pruning {train_time:.0f}s, "
                f"evaluating {eval_time:.0f}s.")
    text.append("")
    if spec:
        base = spec.get("base_objective", {})
        ft = spec.get("finetune_objective", {})
        text.append(f"Base model: {base.get('name')} ({spec.get('base_train', {}).get('epochs')} epochs); "
                    f"fine-tuning: {ft.get('name')} ({spec.get('finetune_train', {}).get('epochs')} epoch(s) per "
                    f"pruning step, schedule {spec.get('schedule')}). Checkpoints selected on a validation split "
                    "carved from the training set; the test split is used only for these numbers. Kernel and filter "
                    "methods prune convolution layers only (as in seed 003), so their sparsity over all prunable "
                    "weights stays low where dense layers hold most weights; their effective FLOPs show the gain.")
    rob = robustness_markdown(rows, vulns)
    if rob:
        text += ["", "## Robustness and vulnerability (seed 000 Table 1)", "",
                 "White-box: the attack on the model; black-box: its examples crafted on the unpruned model. "
                 "Vulnerability (lower is better) of the hidden features, seed 000 Eq. 1-2. In parentheses the "
                 "relative change to the unpruned model.", "", rob]
    failed = [c for c in checks if c["passed"] is False]
    if checks:
        text += ["", f"Sanity checks: {len(checks) - len(failed)}/{len(checks)} passed"
                 + (": FAILED " + "; ".join(f"{c['name']} ({c['detail']})" for c in failed[:10]) if failed else ".")]
    md_extra = sweet_spot_markdown(rows)
    if md_extra:
        text += ["", "## Sweet spots (margin to the unpruned model, relative %; **bold** = gain)", "", md_extra]
    command = store_meta.get("command")
    if command:
        text += ["", "Command: `" + " ".join(str(c) for c in command) + "`"]
    md = out / "report.md"
    md.write_text("\n".join(text) + "\n")
    files.append(md)
    if plot:
        files.append(plot)
    from robustprune.study.html_report import write_html_report

    files.append(write_html_report(out, rows=rows, models=models, checks=checks, meta=store_meta, spec=spec,
                                   fig1=plot, vulns=vulns))
    return files


def sweet_spots(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed 003 Table 2: per (dataset, architecture, method), per rate and per column (clean, attack@ε): mean/std
    over seeds, and the relative margin (%) of the mean to the unpruned model's mean (positive: a gain)."""
    agg = aggregate(rows)
    cols = ["clean"] + _attack_columns(rows)
    out = []
    for (dataset, arch) in sorted({(k[0], k[1]) for k in agg}):
        base = agg.get((dataset, arch, "unpruned", 1.0), {})
        for method in sorted({k[2] for k in agg if k[0] == dataset and k[1] == arch and k[2] != "unpruned"}):
            rates = sorted(k[3] for k in agg if k[:3] == (dataset, arch, method))
            table = []
            for rate in [1.0] + [r for r in rates if r != 1.0]:
                cells = base if rate == 1.0 else agg[(dataset, arch, method, rate)]
                row = {"rate": rate, "label": rate_label(rate, cells), "cells": {}}
                for c in cols:
                    vals = cells.get(c) or []
                    if not vals:
                        continue
                    m, sd = _mean_std(vals)
                    margin = None
                    if rate != 1.0 and base.get(c):
                        b = _mean_std(base[c])[0]
                        margin = 100.0 * (m - b) / b if b > 0 else None
                    row["cells"][c] = {"mean": m, "std": sd, "n": len(vals), "margin": margin}
                table.append(row)
            out.append({"dataset": dataset, "architecture": arch, "method": method, "columns": cols, "rows": table})
    return out


def format_cell(cell: dict[str, Any], change_key: str, scale: float = 100.0, digits: int = 1,
                good: int = 1) -> tuple[str, int]:
    """A table cell's text, ``mean ± std (change%)`` (std only over several seeds), and whether the change is
    better (+1), worse (-1) or neither (0) given the direction ``good`` (+1: higher is better, -1: lower)."""
    txt = f"{scale * cell['mean']:.{digits}f}" + (f" ± {scale * cell['std']:.{digits}f}" if cell["n"] > 1 else "")
    change = cell.get(change_key)
    if change is None:
        return txt, 0
    txt += f" ({change:+.1f}%)"
    return txt, (1 if change * good > 0 else -1 if change * good < 0 else 0)


def sweet_spot_markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    for t in sweet_spots(rows):
        lines.append(f"### {t['dataset']} / {t['architecture']} / {t['method']}\n")
        lines.append("| c | " + " | ".join(t["columns"]) + " |")
        lines.append("|" + "---|" * (1 + len(t["columns"])))
        for r in t["rows"]:
            cells = []
            for c in t["columns"]:
                cell = r["cells"].get(c)
                if cell is None:
                    cells.append("")
                    continue
                txt, sign = format_cell(cell, "margin")
                cells.append(f"**{txt}**" if sign > 0 else txt)
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def robustness_markdown(rows: list[dict[str, Any]], vulns: list[dict[str, Any]]) -> str:
    lines = []
    for t in robustness_table(rows, vulns):
        lines.append(f"### {t['dataset']} / {t['architecture']}: white-box {t['white']}, black-box {t['black']}\n")
        lines.append("| method | c | " + " | ".join(h for _, h, _, _, _ in ROBUSTNESS_COLUMNS) + " |")
        lines.append("|" + "---|" * (2 + len(ROBUSTNESS_COLUMNS)))
        for e in t["entries"]:
            cells = []
            for name, _, scale, digits, good in ROBUSTNESS_COLUMNS:
                c = e["values"].get(name)
                if c is None:
                    cells.append("")
                    continue
                txt, sign = format_cell(c, "change", scale, digits, good)
                cells.append(f"**{txt}**" if sign > 0 else txt)
            lines.append(f"| {e['method']} | {e['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def robustness_table(rows: list[dict[str, Any]], vulns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed 000 Table 1 per (dataset, architecture): one entry per (method, rate) with clean, white-box and
    black-box (transfer from the unpruned model) accuracy at the vulnerability budget, the network vulnerability
    under both, weight sparsity, xFLOPs (dense / effective MACs) and memory (non-zero params %); each value as
    [mean, std, n] over seeds, plus the relative change to the unpruned model."""
    key_of = {r["model_id"]: (r["dataset"], r["architecture"], r["method"], float(r["target_compression"]))
              for r in rows}
    v_by: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    eps_by: dict[tuple, str] = {}
    hash_of: dict[tuple, str] = {}
    for v in vulns:
        k = key_of.get(v["model_id"])
        if k is None:
            continue
        v_by[k][v["threat"]].append(float(v["network"]))
        eps_by[k[:2]] = v["eps_str"]
        if v["threat"] == "white":
            hash_of[k[:2]] = v["attack_hash"]
    agg = aggregate(rows)
    white_col: dict[tuple, str] = {}
    for r in rows:
        g = (r["dataset"], r["architecture"])
        if g in hash_of and r["attack_hash"] == hash_of[g] and r["eps_str"] == eps_by[g]:
            white_col[g] = f"{r['attack']}@{r['eps_str']}"
    out = []
    for g in sorted({k[:2] for k in agg}):
        wc = white_col.get(g)
        if wc is None:
            cols = [c for c in _attack_columns(rows) if not c.startswith("transfer-")]
            wc = cols[len(cols) // 2] if cols else None
        bc = f"transfer-{wc}" if wc else None
        base = (*g, "unpruned", 1.0)
        entries = []
        keys = sorted((k for k in agg if k[:2] == g), key=lambda k: (k[2] != "unpruned", k[2], k[3] == LEARNED, k[3]))
        for k in keys:
            cells = agg[k]
            vals = {"clean": cells.get("clean", []), "white": cells.get(wc, []) if wc else [],
                    "black": cells.get(bc, []) if bc else [], "v_white": v_by[k].get("white", []),
                    "v_black": v_by[k].get("black", []), "sparsity": cells.get("sparsity", []),
                    "xflops": [1.0 / f for f in cells.get("flops_ratio", []) if f > 0],
                    "memory": cells.get("params", [])}
            e = {"method": k[2], "rate": k[3], "label": rate_label(k[3], cells), "values": {}}
            for name, v in vals.items():
                if not v:
                    continue
                m, sd = _mean_std(v)
                ref = None
                if k != base and name in ("clean", "white", "black", "v_white", "v_black"):
                    bv = (agg[base] if base in agg else {}).get({"clean": "clean", "white": wc, "black": bc}.get(
                        name, ""), []) if name in ("clean", "white", "black") else v_by[base].get(name[2:], [])
                    if bv and _mean_std(bv)[0] > 0:
                        ref = 100.0 * (m - _mean_std(bv)[0]) / _mean_std(bv)[0]
                e["values"][name] = {"mean": m, "std": sd, "n": len(v), "change": ref}
            entries.append(e)
        out.append({"dataset": g[0], "architecture": g[1], "white": wc, "black": bc, "eps": eps_by.get(g),
                    "entries": entries})
    return out


ROBUSTNESS_COLUMNS = [("clean", "clean acc (%)", 100, 1, +1), ("white", "white-box adv acc (%)", 100, 1, +1),
                      ("black", "black-box adv acc (%)", 100, 1, +1), ("v_white", "vulnerability (white)", 1, 3, -1),
                      ("v_black", "vulnerability (black)", 1, 3, -1), ("sparsity", "weight sparsity (%)", 100, 1, 0),
                      ("xflops", "xFLOPs", 1, 2, 0), ("memory", "memory (% params)", 100, 1, 0)]
