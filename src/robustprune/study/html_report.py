"""The self-contained HTML report of a study: every figure embedded as a base64 PNG, no external resource.

Sections: the seed 003 Fig. 1 panels (robust accuracy against compression rate, one panel per attack x ε), the
sweet-spot table (seed 003 Table 2: absolute accuracy and relative margin to the unpruned model, gains marked),
the method-comparison table (seed 000 Table 1 / seed 004 Tables VI-VII: clean, every attack/ε, sparsity, effective
FLOPs, training time), security curves (robust accuracy against ε), per-layer remaining weights / units, sanity-check
flags, run times, and the exact command and config that produced it. Mean ± std over seeds everywhere.

A small script checks on load that every image decoded and sets ``document.title`` to ``OK ...`` or ``ERR ...``
(the test reads it from Chromium's ``--dump-dom``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from robustprune.study.report import (
    LEARNED,
    ROBUSTNESS_COLUMNS,
    _attack_columns,
    _mean_std,
    aggregate,
    format_cell,
    rate_label,
    robustness_table,
    sweet_spots,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td.l,th.l{text-align:left}
.gain{font-weight:bold;color:#0a6b1f}.loss{color:#8a1c1c}.fail{color:#b00;font-weight:bold}.ok{color:#0a6b1f}
img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.7em;overflow:auto;font-size:.82em;max-height:40em}
.note{color:#555;font-size:.9em}
"""

CHECK_JS = """
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message||e.type));},true);
  window.addEventListener('load',function(){
    var imgs=document.getElementsByTagName('img'),bad=[];
    for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth<1){bad.push(imgs[i].alt||('img'+i));}}
    var msg=(bad.length||errors.length)?('ERR '+bad.length+' figure(s) failed: '+bad.join('; ')+
      (errors.length?' | JS errors: '+errors.join('; '):'')):('OK '+imgs.length+' figures rendered');
    document.title=msg;
    var s=document.getElementById('render-status');if(s){s.textContent=msg;}
  });
})();
"""


_CLS = {1: ' class="gain"', -1: ' class="loss"', 0: ""}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return ""
    m, s = _mean_std(values)
    return f"{scale * m:.{digits}f}" + (f" ± {scale * s:.{digits}f}" if len(values) > 1 else "")


def _png_b64(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{b64}"></p>'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- figures ----------------------------------------------------------------------------------------------------
def security_curves_png(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Robust accuracy against ε (clean at ε = 0), one line per method, one panel per compression rate; one figure
    per (dataset, architecture, attack)."""
    plt = _plt()
    agg = aggregate(rows)
    attacks = sorted({r["attack"] for r in rows if r["attack"] != "clean"})
    eps_of = {f"{r['attack']}@{r['eps_str']}": float(r["eps"]) for r in rows if r["attack"] != "clean"}
    out = []
    for (dataset, arch) in sorted({(k[0], k[1]) for k in agg}):
        keys = [k for k in agg if k[0] == dataset and k[1] == arch]
        rates = sorted({k[3] for k in keys if k[3] != 1.0}) or [1.0]
        methods = sorted({k[2] for k in keys if k[2] != "unpruned"})
        base = agg.get((dataset, arch, "unpruned", 1.0), {})
        for attack in attacks:
            cols = sorted((c for c in eps_of if c.startswith(attack + "@")), key=lambda c: eps_of[c])
            fig, axes = plt.subplots(1, len(rates), figsize=(3.4 * len(rates), 3.0), squeeze=False)
            for ax, rate in zip(axes[0], rates):
                def curve(cells: dict[str, list[float]]) -> tuple[list[float], list[float]]:
                    xs = [0.0] if cells.get("clean") else []
                    ys = [100 * _mean_std(cells["clean"])[0]] if cells.get("clean") else []
                    for c in cols:
                        if cells.get(c):
                            xs.append(eps_of[c])
                            ys.append(100 * _mean_std(cells[c])[0])
                    return xs, ys

                if base:
                    ax.plot(*curve(base), color="0.4", ls=":", marker=".", label="unpruned")
                for m in methods:
                    cells = agg.get((dataset, arch, m, rate))
                    if cells:
                        ax.plot(*curve(cells), marker="o", ms=3, lw=1.2, label=m)
                ax.set_title(f"c = {rate_label(rate)}", fontsize=10)
                ax.set_xlabel(f"{attack} ε")
                ax.grid(alpha=0.3)
            axes[0][0].set_ylabel(f"{dataset} / {arch}\naccuracy (%)")
            handles, labels = axes[0][0].get_legend_handles_labels()
            if handles:
                fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7, frameon=False)
            fig.tight_layout(rect=(0, 0.12, 1, 1))
            out.append((f"security curves {dataset} / {arch} / {attack}", _png_b64(fig)))
    return out


def layer_profiles(out_dir: Path, models: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, float]]]:
    """(dataset, architecture, method, rate) -> {layer: {"weights": kept fraction, "units": kept output units}}
    from the stored checkpoints' masks (the lowest seed of each cell)."""
    from safetensors import safe_open

    prof: dict[tuple, dict[str, dict[str, float]]] = {}
    for m in sorted(models, key=lambda m: (m.get("seed") or 0)):
        if m.get("kind") != "pruned":
            continue
        key = (m["dataset"], m["architecture"], m["method"], float(m["target_compression"] or 1.0))
        if key in prof:
            continue
        path = Path(m["checkpoint"] or "")
        path = path if path.is_absolute() else out_dir / path
        if not path.exists():
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


def layer_charts_png(prof: dict[tuple, dict[str, dict[str, float]]]) -> list[tuple[str, str]]:
    """Per-layer remaining weights (top) and remaining units (bottom), one panel per method, bars per rate."""
    plt = _plt()
    out = []
    for (dataset, arch) in sorted({(k[0], k[1]) for k in prof}):
        methods = sorted({k[2] for k in prof if k[:2] == (dataset, arch)})
        fig, axes = plt.subplots(2, len(methods), figsize=(max(3.8 * len(methods), 5), 5.6), squeeze=False)
        for j, method in enumerate(methods):
            rates = sorted(k[3] for k in prof if k[:3] == (dataset, arch, method))
            layers = list(prof[(dataset, arch, method, rates[0])])
            width = 0.8 / max(len(rates), 1)
            for i, what in enumerate(("weights", "units")):
                ax = axes[i][j]
                for ri, rate in enumerate(rates):
                    cells = prof[(dataset, arch, method, rate)]
                    ax.bar([li + ri * width for li in range(len(layers))],
                           [100 * cells.get(layer, {}).get(what, float("nan")) for layer in layers], width,
                           label=f"c={rate_label(rate)}")
                ax.set_xticks([li + 0.4 - width / 2 for li in range(len(layers))], layers, rotation=45, ha="right",
                              fontsize=7)
                ax.set_ylim(0, 105)
                ax.set_ylabel(f"remaining {what} (%)", fontsize=8)
                if i == 0:
                    ax.set_title(method, fontsize=9)
                ax.grid(alpha=0.3, axis="y")
            axes[0][j].legend(fontsize=7)
        fig.suptitle(f"{dataset} / {arch}: per-layer remaining weights and units", fontsize=10)
        fig.tight_layout()
        out.append((f"per-layer sparsity {dataset} / {arch}", _png_b64(fig)))
    return out


def runtime_chart_png(models: list[dict[str, Any]]) -> str | None:
    """Seconds each model cell cost (training / pruning + fine-tuning), mean over seeds."""
    plt = _plt()
    by: dict[str, list[float]] = defaultdict(list)
    for m in models:
        label = "base" if m.get("kind") == "base" else \
            f"{m['method']} c={rate_label(float(m['target_compression'] if m['target_compression'] is not None else 1))}"
        by[f"{m['architecture']}: {label}"].append(float(m.get("wall_time") or 0.0))
    if not by:
        return None
    labels = sorted(by)
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(labels) + 1.2))
    ax.barh(range(len(labels)), [_mean_std(by[k])[0] for k in labels],
            xerr=[_mean_std(by[k])[1] for k in labels])
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (this cell's own training / pruning + fine-tuning)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _png_b64(fig)


# ---- tables -----------------------------------------------------------------------------------------------------
def sweet_spot_html(rows: list[dict[str, Any]]) -> str:
    parts = []
    for t in sweet_spots(rows):
        parts.append(f"<h3>{_e(t['dataset'])} / {_e(t['architecture'])} / {_e(t['method'])}</h3>")
        parts.append("<table><tr><th>c</th>" + "".join(f"<th>{_e(c)}</th>" for c in t["columns"]) + "</tr>")
        for r in t["rows"]:
            tds = []
            for c in t["columns"]:
                cell = r["cells"].get(c)
                if cell is None:
                    tds.append("<td></td>")
                    continue
                txt, sign = format_cell(cell, "margin")
                tds.append(f"<td{_CLS[sign]}>{_e(txt)}</td>")
            parts.append(f"<tr><td>{_e(r['label'])}</td>" + "".join(tds) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _times(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, list[float]]]:
    times: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seen: set[tuple] = set()
    for r in rows:
        key = (r["dataset"], r["architecture"], r["method"], float(r["target_compression"]))
        if r["attack"] == "clean":
            times[key]["params"].append(float(r["params_nonzero"] or 0))
            times[key]["flops"].append(float(r["flops_effective"] or 0))
        if (r["model_id"], r["seed"]) not in seen:
            seen.add((r["model_id"], r["seed"]))
            times[key]["train"].append(float(r["train_wall_time"] or 0.0))
        times[key]["eval"].append(float(r["eval_wall_time"] or 0.0))
    return times


def comparison_html(rows: list[dict[str, Any]]) -> str:
    """Seed 004 Tables VI/VII shape: methods side by side at each pruning rate (PR), natural accuracy, every
    attack (white-box and transfer), sparsity, FLOPs and training time (TT); the best accuracy of each column
    within a rate in bold."""
    agg = aggregate(rows)
    cols = _attack_columns(rows)
    times = _times(rows)
    parts = []
    for (dataset, arch) in sorted({(k[0], k[1]) for k in agg}):
        parts.append(f"<h3>{_e(dataset)} / {_e(arch)}</h3>")
        head = (["PR (c)", "method", "seeds", "sparsity (%)", "non-zero params", "eff. FLOPs (%)", "eff. MMACs",
                 "natural (%)"] + [f"{c} (%)" for c in cols] + ["TT: train time (s)", "eval time (s)"])
        parts.append("<table><tr>" + "".join(f"<th{' class=l' if i == 1 else ''}>{_e(h)}</th>"
                                            for i, h in enumerate(head)) + "</tr>")
        keys = [k for k in agg if k[:2] == (dataset, arch)]
        rates = sorted({k[3] for k in keys}, key=lambda r: (r == LEARNED, r))
        for rate in rates:
            group = sorted((k for k in keys if k[3] == rate), key=lambda k: k[2])
            best = {c: max((_mean_std(agg[k][c])[0] for k in group if agg[k].get(c)), default=None)
                    for c in ["clean"] + cols}
            for i, k in enumerate(group):
                cells, t = agg[k], times[k]
                n_seeds = max(len(cells.get("clean", [])), 1)
                eval_total = sum(t["eval"]) / n_seeds

                def acc(c: str) -> str:
                    v = cells.get(c, [])
                    txt = _pm(v)
                    bold = v and len(group) > 1 and best[c] is not None and _mean_std(v)[0] >= best[c] - 1e-12
                    return f"<td><b>{txt}</b></td>" if bold else f"<td>{txt}</td>"

                pr = (f"<td rowspan={len(group)}>{_e(rate_label(rate) if rate != LEARNED else 'learned')}</td>"
                      if i == 0 else "")
                tds = [pr, f"<td class=l>{_e(k[2])}" + (f" (×{_mean_std(cells['compression'])[0]:.1f})"
                                                         if rate == LEARNED and cells.get("compression") else "")
                       + "</td>", f"<td>{len(cells.get('clean', []))}</td>",
                       f"<td>{_pm(cells.get('sparsity', []), 100, 1)}</td>",
                       f"<td>{_pm(t['params'], 1, 0)}</td>",
                       f"<td>{_pm(cells.get('flops_ratio', []), 100, 1)}</td>",
                       f"<td>{_pm([f / 1e6 for f in t['flops']], 1, 2)}</td>", acc("clean")]
                tds += [acc(c) for c in cols]
                tds += [f"<td>{_pm(t['train'], 1, 1)}</td>", f"<td>{eval_total:.1f}</td>"]
                parts.append("<tr>" + "".join(tds) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def robustness_html(rows: list[dict[str, Any]], vulns: list[dict[str, Any]]) -> str:
    parts = []
    for t in robustness_table(rows, vulns):
        parts.append(f"<h3>{_e(t['dataset'])} / {_e(t['architecture'])}: white-box {_e(t['white'])}, black-box "
                     f"{_e(t['black'])}</h3>")
        parts.append("<table><tr><th class=l>method</th><th>c</th>" + "".join(f"<th>{_e(h)}</th>"
                                                                          for _, h, _, _, _ in ROBUSTNESS_COLUMNS)
                     + "</tr>")
        for e in t["entries"]:
            tds = [f"<td class=l>{_e(e['method'])}</td>", f"<td>{_e(e['label'])}</td>"]
            for name, _, scale, digits, good in ROBUSTNESS_COLUMNS:
                c = e["values"].get(name)
                if c is None:
                    tds.append("<td></td>")
                    continue
                txt, sign = format_cell(c, "change", scale, digits, good)
                tds.append(f"<td{_CLS[sign]}>{_e(txt)}</td>")
            parts.append("<tr>" + "".join(tds) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def vulnerability_histograms_png(rows: list[dict[str, Any]], vulns: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Seed 000 Fig. 4: the distribution of the latent features' vulnerability (all hidden layers, white-box),
    one panel per method with one histogram per rate and the unpruned model dashed (lowest seed of each cell)."""
    plt = _plt()
    info = {r["model_id"]: (r["dataset"], r["architecture"], r["method"], float(r["target_compression"]),
                            r["seed"] or 0) for r in rows}
    feats: dict[tuple, list[float]] = {}
    for v in sorted(vulns, key=lambda v: info.get(v["model_id"], ("",) * 5)[4]):
        k = info.get(v["model_id"])
        if k is None or v["threat"] != "white" or k[:4] in feats:
            continue
        feats[k[:4]] = [x for layer in v["features"].values() for x in layer]
    out = []
    for g in sorted({k[:2] for k in feats}):
        methods = sorted({k[2] for k in feats if k[:2] == g and k[2] != "unpruned"})
        base = feats.get((*g, "unpruned", 1.0))
        allv = [x for k, f in feats.items() if k[:2] == g for x in f]
        if not allv:
            continue
        top = max(max(allv), 1e-6)
        bins = [top * i / 40 for i in range(41)]
        panels = methods or ["unpruned"]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.9), squeeze=False)
        for ax, m in zip(axes[0], panels):
            if base:
                ax.hist(base, bins=bins, histtype="step", color="0.3", ls="--", lw=1.2, label="unpruned")
            for k in sorted((k for k in feats if k[:3] == (*g, m)), key=lambda k: k[3]):
                if m != "unpruned":
                    ax.hist(feats[k], bins=bins, histtype="step", lw=1.2, label=f"c={rate_label(k[3])}")
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("feature vulnerability", fontsize=8)
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"{g[0]} / {g[1]}\nfeatures", fontsize=8)
        fig.tight_layout()
        out.append((f"vulnerability histograms {g[0]} / {g[1]}", _png_b64(fig)))
    return out


def checks_html(checks: list[dict[str, Any]], models: list[dict[str, Any]]) -> str:
    if not checks:
        return "<p class=note>No sanity checks are stored in this database.</p>"
    label = {m["model_id"]: f"{m['method']} c={rate_label(float(m['target_compression'] or 0))} seed {m['seed']}"
             for m in models}
    failed = [c for c in checks if c["passed"] is False]
    parts = [f"<p>{len(checks) - len(failed)}/{len(checks)} checks passed"
             + (f", <span class=fail>{len(failed)} FAILED</span>" if failed else "") + ".</p>",
             "<table><tr><th class=l>model</th><th class=l>check</th><th>passed</th><th>value</th><th>threshold</th>"
             "<th class=l>detail</th></tr>"]
    ordered = sorted(checks, key=lambda c: (c["passed"] is not False, c["model_id"], c["name"]))
    for i, c in enumerate(ordered):
        if i == len(failed) and failed:
            # the failures stay in view; the passed checks fold away under them
            parts.append("</table><details><summary>the passed checks</summary><table>")
        elif i == 0 and not failed:
            parts[-1] = "<details><summary>show every check</summary>" + parts[-1]
        ok = {True: "<span class=ok>yes</span>", False: "<span class=fail>NO</span>", None: "?"}[c["passed"]]
        val = "" if c["value"] is None else f"{c['value']:.4g}"
        thr = "" if c["threshold"] is None else f"{c['threshold']:.4g}"
        parts.append(f"<tr><td class=l>{_e(label.get(c['model_id'], c['model_id']))}</td><td class=l>{_e(c['name'])}"
                     f"</td><td>{ok}</td><td>{val}</td><td>{thr}</td><td class=l>{_e(c['detail'] or '')}</td></tr>")
    parts.append("</table>" + ("</details>" if len(ordered) > len(failed) else ""))
    return "\n".join(parts)


# ---- the page ---------------------------------------------------------------------------------------------------
def write_html_report(out: Path, *, rows: list[dict[str, Any]], models: list[dict[str, Any]],
                      checks: list[dict[str, Any]], meta: dict[str, Any], spec: dict[str, Any],
                      fig1: Path | None, vulns: list[dict[str, Any]] | None = None) -> Path:
    vulns = vulns or []
    name = spec.get("name", out.name) if spec else out.name
    body: list[str] = [f"<h1>robustprune study: {_e(name)}</h1>",
                       "<p id=render-status class=note>checking figures…</p>"]
    n_eval = rows[0]["n_eval"] if rows else 0
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    body.append(f"<p>{len(models)} models, {len(rows)} result rows, seeds {_e(seeds)}; accuracy (%) on the first "
                f"{n_eval} test images, <b>mean ± std over seeds</b> where there are several. <i>c</i> is the "
                "compression rate (1/c of the prunable weights remain); sparsity counts zeros actually present in the "
                "prunable weights; eff. FLOPs = multiply-accumulates with non-zero weights / dense. Checkpoints "
                "were selected on a validation split carved from the training set.</p>")

    body.append("<h2>Robust accuracy against compression rate (seed 003 Fig. 1)</h2>")
    if fig1 is not None and fig1.exists():
        body.append(_img(base64.b64encode(fig1.read_bytes()).decode("ascii"),
                         "robust accuracy against compression rate"))
    else:
        body.append("<p class=note>No results yet.</p>")

    body.append("<h2>Sweet spots (seed 003 Table 2)</h2><p class=note>Absolute accuracy (%) and, in parentheses, the "
                "relative margin of the mean to the unpruned model; <span class=gain>green bold</span> marks a gain."
                "</p>")
    body.append(sweet_spot_html(rows) or "<p class=note>No pruned models yet.</p>")

    body.append("<h2>Robustness and vulnerability (seed 000 Table 1)</h2><p class=note>White-box: the attack on "
                "the model itself; black-box: the same attack's examples crafted on the unpruned model and transferred. "
                "Vulnerability: mean |z(x) - z(x_adv)| of the hidden features (seed 000 Eq. 1-2; lower is better; "
                "pruned features count as 0). In parentheses the relative change to the unpruned model, "
                "<span class=gain>green</span> = better. xFLOPs = dense / effective multiply-accumulates; memory = "
                "non-zero parameters. A learned rate (Bayesian recipes) shows the achieved compression.</p>")
    body.append(robustness_html(rows, vulns) if rows else "<p class=note>No results yet.</p>")

    body.append("<h2>Methods at each pruning rate (seed 004 Tables VI/VII)</h2><p class=note>Best accuracy of each "
                "column within a rate in bold. TT: what it cost to make the model (for iterative chains, the whole "
                "chain up to this rate; ADMM recipes prune each rate from the base model); eval time: all attacks of "
                "one model.</p>")
    body.append(comparison_html(rows))

    body.append("<h2>Security curves</h2><p class=note>Accuracy against the attack budget ε (ε = 0: clean), per "
                "compression rate.</p>")
    curves = security_curves_png(rows) if rows else []
    body += [f"<h3>{_e(alt)}</h3>" + _img(b64, alt) for alt, b64 in curves] or ["<p class=note>No attacks.</p>"]

    body.append("<h2>Per-layer remaining weights and units</h2><p class=note>From the stored masks (lowest seed); "
                "units are output channels / neurons with at least one remaining weight.</p>")
    charts = layer_charts_png(layer_profiles(out, models))
    body += [_img(b64, alt) for alt, b64 in charts] or ["<p class=note>No pruned checkpoints.</p>"]

    body.append("<h2>Vulnerability histograms (seed 000 Fig. 4)</h2><p class=note>Distribution of the latent "
                "features' vulnerability under the white-box attack of the table above (all hidden layers; lowest "
                "seed). Pruned features have vulnerability 0 and pile up in the first bin.</p>")
    hists = vulnerability_histograms_png(rows, vulns) if vulns else []
    body += [_img(b64, alt) for alt, b64 in hists] or [
        "<p class=note>No vulnerability measured (set <code>vulnerability: true</code> in the study file).</p>"]

    body.append("<h2>Sanity checks</h2>")
    body.append(checks_html(checks, models))

    body.append("<h2>Run times</h2>")
    train_time = sum(float(m["wall_time"] or 0) for m in models)
    eval_time = sum(float(r["eval_wall_time"] or 0) for r in rows)
    wall = meta.get("study_wall_time")
    body.append(f"<p>Training / pruning {train_time:.0f}s, evaluation {eval_time:.0f}s"
                + (f"; last study run {wall:.0f}s wall time" if wall is not None else "") + ".</p>")
    rt = runtime_chart_png(models)
    if rt:
        body.append(_img(rt, "run time per model cell"))

    body.append("<h2>Provenance</h2>")
    command = meta.get("command")
    started = meta.get("started_at")
    body.append("<p>Command:</p><pre>" + _e(" ".join(str(c) for c in command) if command else "(not recorded)")
                + "</pre>")
    if started:
        body.append(f"<p>Started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(started)))}; code "
                    f"versions {_e(sorted({r['code_version'] for r in rows if r['code_version']}))}.</p>")
    cfg_path = out / "study.json"
    cfg_text = cfg_path.read_text() if cfg_path.exists() else json.dumps(spec, indent=2)
    body.append("<p>Config (<code>study.json</code>):</p><pre>" + _e(cfg_text) + "</pre>")

    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>robustprune study {_e(name)}</title><style>{CSS}</style><script>{CHECK_JS}</script></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
