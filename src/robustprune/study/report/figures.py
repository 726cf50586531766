"""The report's figures (matplotlib, Agg), each returned as PNG bytes.

Robust accuracy against the achieved overall compression (Merkle2022 Fig. 1), security curves, per-layer remaining
weights and units, run time per model, vulnerability histograms (Madaan2020 Fig. 4). Flagged points (did not
converge, chance accuracy, nothing pruned, ...) are drawn hollow with their footnote symbol; a line never crosses a
rate of the study's grid that its method did not run.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from robustprune.study.report.data import Entry, Group, ReportData, line_key
from robustprune.study.report.tables import FLAG_WORDS, Marks


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, dpi: int = 100) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _color(i: int) -> Any:
    plt = _plt()
    return plt.get_cmap("tab10")(i % 10)


def _lines(g: Group) -> list[list[Entry]]:
    """Curves of one group: entries of one method configuration sorted by rate (learned entries each alone)."""
    lines: dict[tuple, list[Entry]] = {}
    for e in g.sorted_by_method():
        if not e.unpruned:
            lines.setdefault(line_key(e) + ((e.model_key,) if e.learned else ()), []).append(e)
    return [sorted(v, key=Entry.sort_rate) for v in lines.values()]


def segments(points: list[tuple[float, Any]], grid: list[float]) -> list[list[Any]]:
    """Split ``(target rate, payload)`` points (sorted by rate) wherever a rate of ``grid`` between two neighbours
    was not run: a line is drawn only between rates that are adjacent in the grid."""
    out: list[list[Any]] = []
    prev = None
    for rate, p in points:
        if prev is not None and not any(prev < r < rate for r in grid):
            out[-1].append(p)
        else:
            out.append([p])
        prev = rate
    return out


def _plot_points(ax: Any, pts: list[tuple[float, float, float | None, Entry | None]], color: Any, marks: Marks,
                 label: str | None, learned: bool = False, connect: bool = True) -> None:
    """``pts``: (x, y %, std % or None, entry); hollow markers with the flag symbol for flagged entries."""
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    if connect and len(pts) > 1:
        ax.plot(xs, ys, color=color, lw=1.3, label=label)
        label = None
    for x, y, sd, e in pts:
        sym = marks.of(e) if e is not None else ""
        ax.errorbar([x], [y], yerr=[sd] if sd is not None else None, color=color, marker="s" if learned else "o",
                    ms=4, capsize=2, lw=1.0, mfc="white" if sym else color, label=label)
        label = None
        note = sym
        if e is not None and not e.learned and e.rate and abs(x / e.rate - 1) > 0.1:
            note = f"c={e.rate:g}" + (f" {sym}" if sym else "")  # a structured method far left of its target
        if note:
            ax.annotate(note, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=color)


def robust_vs_compression_png(data: ReportData, marks: Marks) -> bytes | None:
    """One panel per (group, clean or attack column), one line per method configuration: accuracy against the
    achieved overall compression (log 2 axis; ticks at the study's target rates)."""
    plt = _plt()
    groups = [g for g in data.groups if g.entries]
    if not groups:
        return None
    panels_of = {g.title: [c for c in g.columns if c.attack == "clean"] + g.attack_columns() for g in groups}
    ncols = min(max(len(p) for p in panels_of.values()), 4)
    rows_of = {t: -(-len(p) // ncols) for t, p in panels_of.items()}
    nrows = sum(rows_of.values())
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    row0 = 0
    for g in groups:
        panels = panels_of[g.title]
        grid = g.rate_grid
        lines = _lines(g)
        for pi, col in enumerate(panels):
            ax = axes[row0 + pi // ncols][pi % ncols]
            ax.set_visible(True)
            for li, line in enumerate(lines):
                color = _color(li)
                base = g.baseline(line[0])
                learned = line[0].learned
                pts: list[tuple[float, tuple]] = []
                if base is not None and base.cell(col) and not learned:
                    st = base.cell(col)
                    pts.append((1.0, (1.0, 100 * st.mean, None if st.std is None else 100 * st.std, None)))
                for e in line:
                    st = e.cell(col)
                    if st:
                        rate = e.x if learned else (e.rate or 1.0)
                        pts.append((rate, (e.x, 100 * st.mean, None if st.std is None else 100 * st.std, e)))
                label = line[0].name + (" (rate learned)" if learned else "") + (
                    f" n={line[0].n_eval}" if len(data.n_values) > 1 else "")
                for seg in (segments(pts, grid) if not learned else [[p for _, p in pts]]):
                    _plot_points(ax, seg, color, marks, label if label not in handles else None, learned,
                                 connect=not learned)
                    if label not in handles:
                        handles[label] = color
            for e in g.entries:
                if e.unpruned and e.cell(col):
                    ax.axhline(100 * e.cell(col).mean, color="0.5", ls=":", lw=1)
            ax.set_xscale("log", base=2)
            ticks = grid
            ax.set_xticks(ticks, [f"{r:g}" for r in ticks])
            ax.minorticks_off()
            ax.set_xlabel("achieved overall compression (×)", fontsize=8)
            ax.set_title(col.label, fontsize=10)
            if pi % ncols == 0:
                ax.set_ylabel(f"{g.title}\naccuracy (%)", fontsize=9)
            ax.grid(alpha=0.3)
        row0 += rows_of[g.title]
    labels = list(handles)
    legend = [plt.Line2D([], [], color=handles[k], marker="o", lw=1.3) for k in labels]
    for f, sym in marks.symbol.items():
        legend.append(plt.Line2D([], [], color="0.3", marker="o", mfc="white", lw=0))
        labels.append(f"{sym} {FLAG_WORDS.get(f, f)}")
    if legend:
        fig.legend(legend, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    legend_rows = -(-len(labels) // 4)
    fig.tight_layout(rect=(0, min(0.45, 0.035 * legend_rows * 3.3 / max(nrows, 1) + 0.03), 1, 1))
    return _png(fig, dpi=110)


def security_curves_png(data: ReportData, marks: Marks) -> list[tuple[str, bytes]]:
    """Accuracy against ε (ε = 0: clean), one panel per target rate (learned rates in their own panel), one figure
    per (group, white-box attack configuration)."""
    plt = _plt()
    out = []
    for g in data.groups:
        attacks: dict[str, list] = {}
        for c in g.attack_columns(transfer=False):
            attacks.setdefault(c.label.rsplit("@", 1)[0], []).append(c)
        lines = _lines(g)
        panels = sorted({("learned" if e.learned else e.rate or 1.0) for e in g.entries if not e.unpruned},
                        key=lambda r: (r == "learned", r if r != "learned" else 0)) or [1.0]
        for name, cols in attacks.items():
            cols.sort(key=lambda c: c.eps)
            fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.1), squeeze=False)
            for ax, panel in zip(axes[0], panels):
                def curve(e: Entry) -> tuple[list[float], list[float]]:
                    xs, ys = ([0.0], [100 * e.clean.mean]) if e.clean else ([], [])
                    for c in cols:
                        if e.cell(c):
                            xs.append(c.eps)
                            ys.append(100 * e.cell(c).mean)
                    return xs, ys

                for b in [e for e in g.entries if e.unpruned]:
                    ax.plot(*curve(b), color="0.4", ls=":", marker=".", label="unpruned" + (
                        f" n={b.n_eval}" if len(data.n_values) > 1 else ""))
                for li, line in enumerate(lines):
                    for e in line:
                        if ("learned" if e.learned else e.rate or 1.0) != panel:
                            continue
                        xs, ys = curve(e)
                        sym = marks.of(e)
                        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=_color(li), mfc="white" if sym else None,
                                label=e.name + (f" {sym}" if sym else "")
                                + (f" ({e.achieved_text()})" if e.learned else ""))
                ax.set_title(f"c = {panel if panel == 'learned' else f'{panel:g}'}", fontsize=10)
                ax.set_xlabel(f"{name} ε", fontsize=8)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6)
            axes[0][0].set_ylabel(f"{g.title}\naccuracy (%)", fontsize=8)
            fig.tight_layout()
            out.append((f"security curves {g.title} / {name}", _png(fig)))
    return out


def layer_profiles(out_dir: Path, data: ReportData) -> dict[tuple, dict[str, dict[str, float]]]:
    """(group title, curve name, rate text, x) -> {layer: {"weights": kept fraction, "units": kept output units}} from
    the stored checkpoints' masks (the lowest seed of each entry)."""
    from safetensors import safe_open

    prof: dict[tuple, dict[str, dict[str, float]]] = {}
    for m in sorted(data.models, key=lambda m: (m.get("seed") or 0)):
        es = data.entry_of_model.get(m["model_id"])
        if m.get("kind") == "base" or not es or es[0].unpruned:
            continue
        e = es[0]
        key = (f"{e.dataset} / {e.architecture}", e.name, e.rate_text(), e.sort_rate())
        if key in prof:
            continue
        path = Path(m.get("checkpoint") or "")
        path = path if path.is_absolute() else out_dir / path
        if not path.is_file():
            continue
        layers: dict[str, dict[str, float]] = {}
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if not name.startswith("mask."):
                        continue
                    mask = f.get_tensor(name).bool()
                    units = mask.flatten(1).any(1) if mask.dim() > 1 else mask
                    layers[name[len("mask."):]] = {"weights": mask.float().mean().item(),
                                                   "units": units.float().mean().item()}
        except Exception:  # noqa: BLE001 - a damaged checkpoint only loses its chart
            continue
        if layers:
            prof[key] = layers
    return prof


def layer_charts_png(prof: dict[tuple, dict[str, dict[str, float]]]) -> list[tuple[str, bytes]]:
    """Per-layer remaining weights (top) and remaining units (bottom), one panel per method, bars per rate."""
    plt = _plt()
    out = []
    for title in sorted({k[0] for k in prof}):
        methods = sorted({k[1] for k in prof if k[0] == title})
        fig, axes = plt.subplots(2, len(methods), figsize=(max(3.8 * len(methods), 5), 5.6), squeeze=False)
        for j, method in enumerate(methods):
            keys = sorted((k for k in prof if k[:2] == (title, method)), key=lambda k: k[3])
            layers = list(prof[keys[0]])
            width = 0.8 / max(len(keys), 1)
            for i, what in enumerate(("weights", "units")):
                ax = axes[i][j]
                for ri, k in enumerate(keys):
                    ax.bar([li + ri * width for li in range(len(layers))],
                           [100 * prof[k].get(layer, {}).get(what, float("nan")) for layer in layers], width,
                           label=f"c={k[2]}")
                ax.set_xticks([li + 0.4 - width / 2 for li in range(len(layers))], layers, rotation=45, ha="right",
                              fontsize=7)
                ax.set_ylim(0, 105)
                ax.set_ylabel(f"remaining {what} (%)", fontsize=8)
                if i == 0:
                    ax.set_title(method, fontsize=9)
                ax.grid(alpha=0.3, axis="y")
            axes[0][j].legend(fontsize=7)
        fig.suptitle(f"{title}: per-layer remaining weights and units", fontsize=10)
        fig.tight_layout()
        out.append((f"per-layer sparsity {title}", _png(fig)))
    return out


def runtime_chart_png(data: ReportData) -> bytes | None:
    """Seconds each model configuration cost to make (its own training / pruning + fine-tuning), mean over seeds."""
    plt = _plt()
    items = []
    for g in data.groups:
        for e in g.sorted_by_method():
            if e.train_time:
                lab = f"{g.architecture}: " + ("unpruned" if e.unpruned else f"{e.name} c={e.rate_text()}")
                if e.train_epochs:
                    lab += f" ({e.train_epochs.mean:g} ep)"
                items.append((lab, e.train_time.mean, e.train_time.std or 0.0))
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(items) + 1.2))
    ax.barh(range(len(items)), [t for _, t, _ in items], xerr=[s for _, _, s in items])
    ax.set_yticks(range(len(items)), [lab for lab, _, _ in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (training / pruning + fine-tuning of the model)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _png(fig)


def vulnerability_histograms_png(data: ReportData) -> list[tuple[str, bytes]]:
    """Madaan2020 Fig. 4: the distribution of the latent features' vulnerability (all hidden layers, white-box),
    one panel per method with one histogram per rate and the unpruned model dashed (lowest seed of each entry)."""
    plt = _plt()
    seed_of = {m["model_id"]: (m.get("seed") or 0) for m in data.models}
    feats: dict[tuple, list[float]] = {}
    for v in sorted(data.vulns, key=lambda v: seed_of.get(v["model_id"], 0)):
        es = data.entry_of_model.get(v["model_id"])
        if not es or v["threat"] != "white":
            continue
        e = es[0]
        key = (f"{e.dataset} / {e.architecture}", "unpruned" if e.unpruned else e.name, e.rate_text(),
               e.sort_rate())
        if key not in feats:
            feats[key] = [x for layer in v["features"].values() for x in layer]
    out = []
    for title in sorted({k[0] for k in feats}):
        keys = [k for k in feats if k[0] == title]
        methods = sorted({k[1] for k in keys if k[1] != "unpruned"})
        base = next((feats[k] for k in keys if k[1] == "unpruned"), None)
        allv = [x for k in keys for x in feats[k]]
        if not allv:
            continue
        top = max(max(allv), 1e-6)
        bins = [top * i / 40 for i in range(41)]
        panels = methods or ["unpruned"]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.9), squeeze=False)
        for ax, m in zip(axes[0], panels):
            if base:
                ax.hist(base, bins=bins, histtype="step", color="0.3", ls="--", lw=1.2, label="unpruned")
            for k in sorted((k for k in keys if k[1] == m and m != "unpruned"), key=lambda k: k[3]):
                ax.hist(feats[k], bins=bins, histtype="step", lw=1.2, label=f"c={k[2]}")
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("feature vulnerability", fontsize=8)
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"{title}\nfeatures", fontsize=8)
        fig.tight_layout()
        out.append((f"vulnerability histograms {title}", _png(fig)))
    return out
