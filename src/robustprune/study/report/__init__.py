"""Turn a study's results database into ``report.md``, ``robust_vs_compression.png`` and a self-contained
``report.html``.

Layout (one job per file, imports go one way: ``__init__`` -> ``page`` / ``markdown`` / ``figures`` -> ``tables`` ->
``data`` -> ``study.store``):

``data.py``      rows -> entries (one model configuration on n points, mean ± std over seeds only), columns,
                 baselines, comparisons against noise, flags
``tables.py``    the tables as data (headline clean / APGD / PGD, Merkle2022 Table 2, Madaan2020 Table 1,
                 Jian2022 Tables VI/VII, sanity checks)
``leaderboard.py`` the models in a published benchmark's format beside its published numbers
                 (``<name>_published.json``; only for a study with a ``leaderboard`` key)
``figures.py``   the figures as PNG bytes
``markdown.py``  / ``page.py``: the two renderings
"""

from __future__ import annotations

from pathlib import Path

from robustprune.study.report.data import ReportData, build
from robustprune.study.report.figures import (
    layer_charts_png,
    layer_profiles,
    robust_vs_compression_png,
    runtime_chart_png,
    security_curves_png,
    vulnerability_histograms_png,
)
from robustprune.study.report.leaderboard import leaderboard_intro, leaderboard_tables, load_published
from robustprune.study.report.markdown import provenance_markdown, sections_markdown, table_markdown
from robustprune.study.report.page import e, img, page, provenance_html, table_html
from robustprune.study.report.tables import (
    FLAG_WORDS,
    Marks,
    checks_table,
    checks_text,
    comparison_tables,
    deployment_table,
    deployment_text,
    failures_table,
    failures_text,
    headline_tables,
    models_table,
    n_text,
    precision_text,
    robustness_table,
    robustness_tables,
    settings_table,
    sweet_spot_tables,
)
from robustprune.study.store import FLAGS, ResultsStore

__all__ = ["ReportData", "load", "robustness_table", "write_report"]

CONVENTIONS = ("`c` is the target compression rate (1/c of the prunable weights remain), *sparsity* the same "
               "target in the field's words (1 - 1/c: c = 100 is sparsity 99 %); *achieved* is the overall "
               "compression actually reached (prunable weights / non-zero prunable weights): structured (kernel, "
               "filter, column) methods prune convolutions only, so their achieved overall compression can be far "
               "below c. A learned rate is shown as learned with its achieved value. Rows are averaged over seeds "
               "only when nothing but the seed differs (same model configuration, attack configuration, ε and n). "
               "Sparsity counts zeros actually present in the prunable weights; eff. FLOPs = multiply-accumulates "
               "with non-zero weights / dense. Checkpoints were selected on a validation split carved from the "
               "training set; the test split is used only for these numbers.")


def load(out_dir: str | Path) -> ReportData:
    """Read ``out_dir/results.sqlite`` read-only (a file that is not a robustprune database of this schema is
    refused with one line, and never written to)."""
    db = Path(out_dir) / "results.sqlite"
    with ResultsStore(db, readonly=True) as store:
        meta = {k: store.get_meta(k) for k in ("command", "started_at", "study_wall_time", "layouts")}
        return build(store.results(), store.models(), store.checks(), store.vulnerabilities(), meta,
                     store.get_meta("spec", {}) or {}, store.failures(), store.exports())


def _sections(data: ReportData, marks: Marks) -> list[tuple[str, str, list]]:
    lead = "APGD" if data.has_apgd else "PGD"
    board = leaderboard_tables(data, marks)
    return [
        (f"Headline: clean / {lead}" + (" / PGD" if data.has_apgd else "") + " per model", "",
         headline_tables(data, marks)),
    ] + ([("Leaderboard: " + load_published(data.spec["leaderboard"]).get("title", data.spec["leaderboard"]),
           leaderboard_intro(data), board)] if board else []) + [
        ("Sweet spots (Merkle2022 Table 2)", "Absolute accuracy (%) and, in parentheses, the relative margin of the "
         "mean to the unpruned model it was pruned from (same points).", sweet_spot_tables(data, marks)),
        ("Robustness and vulnerability (Madaan2020 Table 1)", "White-box: the attack on the model itself; black-box: "
         "the same attack's examples crafted on the unpruned model and transferred. Vulnerability: mean |z(x) - "
         "z(x_adv)| of the hidden features (Madaan2020 Eq. 1-2; lower is better; pruned features count as 0). In "
         "parentheses the relative change to the unpruned model. xFLOPs = dense / effective multiply-accumulates; "
         "memory = non-zero parameters.", robustness_tables(data, marks)),
        ("Methods at each pruning rate (Jian2022 Tables VI/VII)", "", comparison_tables(data, marks)),
    ]


def write_report(out_dir: str | Path) -> list[Path]:
    """Write ``report.md``, ``robust_vs_compression.png`` and ``report.html`` from ``out_dir/results.sqlite``
    (opened read-only). Returns the files written."""
    out = Path(out_dir)
    data = load(out)
    marks = Marks(data)
    name = data.spec.get("name", out.name) if data.spec else out.name
    files: list[Path] = []
    fig1 = robust_vs_compression_png(data, marks)
    fig1_path = out / "robust_vs_compression.png"
    if fig1 is not None:
        fig1_path.write_bytes(fig1)
    sections = _sections(data, marks)
    models, rows = data.models, data.rows
    train_time = sum(float(m.get("wall_time") or 0) for m in models)
    eval_time = sum(float(r.get("eval_wall_time") or 0) for r in rows)
    seeds = data.seeds
    intro = (f"Accuracy (%) on {n_text(data)}; seeds {seeds}"
             + (" (one seed: the spread over seeds is unknown)" if len(seeds) < 2 else "; mean ± std over seeds")
             + ". " + CONVENTIONS)
    flags_line = ("Flags: " + "; ".join(f"{s} {FLAG_WORDS.get(f) or FLAGS.get(f) or f}"
                                        for f, s in marks.symbol.items())
                  + " (marked on every row and plot point, explained under each table).") if marks.symbol else ""

    failed = failures_table(data)
    precision = precision_text(data)

    # ---- Markdown
    text = [f"# robustprune study: {name}", "", intro, ""] + ([flags_line, ""] if flags_line else [])
    if failed is not None:
        text += ["## Failed models", "", failures_text(data), "", table_markdown(failed)]
    text += sections_markdown(sections[:1])
    if fig1 is not None:
        text += [f"![accuracy against achieved compression]({fig1_path.name})", ""]
    text += sections_markdown(sections[1:])
    text += [f"Models: {len(models)}; result rows: {len(rows)}; time spent training/pruning {train_time:.0f}s, "
             f"evaluating {eval_time:.0f}s.", "", checks_text(data.checks), ""]
    spec = data.spec
    if spec:
        base = spec.get("base_objective") or {}
        text += [f"Base model: {base.get('name')} ({(spec.get('base_train') or {}).get('epochs')} epochs). "
                 "Training budgets per model (seconds, epochs, gradient steps) are in the table of methods at each "
                 "rate." + (f" {precision}" if precision else ""), ""]
    elif precision:
        text += [precision, ""]
    deploy = deployment_table(data)
    if deploy is not None:
        text += ["## Deployment", "", deployment_text(data), "", table_markdown(deploy)]
    deviations = settings_table(data)
    if deviations is not None:
        text += ["## Settings that differ from the methods' defaults", "", table_markdown(deviations)]
    if models:
        text += ["## Models", "", "Checkpoints are named by the hash of their config; the unpruned base model of "
                 "each seed has the role 'unpruned base'.", "", table_markdown(models_table(data, marks))]
    text += provenance_markdown(data.meta)
    md = out / "report.md"
    md.write_text("\n".join(text) + "\n")
    files.append(md)
    if fig1 is not None:
        files.append(fig1_path)

    # ---- HTML
    blocks = [f"<h1>robustprune study: {e(name)}</h1>", "<p id=render-status class=note></p>",
              f"<p>{len(models)} models, {len(rows)} result rows. {e(intro.replace('`', '').replace('*', ''))}</p>"]
    if flags_line:
        blocks.append(f"<p class=flag>{e(flags_line)}</p>")
    if failed is not None:
        blocks += ["<h2 id=failed-models>Failed models</h2>", f"<p class=fail>{e(failures_text(data))}</p>",
                   table_html(failed)]
    for i, (title, sec_intro, tables) in enumerate(sections):
        blocks.append(f"<h2>{e(title)}</h2>")
        if sec_intro:
            blocks.append(f"<p class=note>{e(sec_intro)}</p>")
        blocks += [table_html(t) for t in tables] or ["<p class=note>No results yet.</p>"]
        if i == 0:
            blocks.append("<h2>Accuracy against compression (Merkle2022 Fig. 1)</h2><p class=note>x: the achieved "
                          "overall compression (ticks at the study's target rates; structured methods sit left of "
                          "their target). Mean over seeds, error bars one std (none with one seed). Hollow points "
                          "carry a flag; a line never crosses a rate the method did not run; the dotted line is the "
                          "unpruned model.</p>")
            blocks.append(img(fig1, "accuracy against achieved compression") if fig1 is not None
                          else "<p class=note>No results yet.</p>")
    blocks.append("<h2>Security curves</h2><p class=note>Accuracy against the attack budget ε (ε = 0: clean), per "
                  "target rate.</p>")
    blocks += [f"<h3>{e(alt)}</h3>" + img(png, alt) for alt, png in security_curves_png(data, marks)] or [
        "<p class=note>No attacks.</p>"]
    blocks.append("<h2>Per-layer remaining weights and units</h2><p class=note>From the stored masks (lowest seed); "
                  "units are output channels / neurons with at least one remaining weight.</p>")
    blocks += [img(png, alt) for alt, png in layer_charts_png(layer_profiles(out, data))] or [
        "<p class=note>No pruned checkpoints.</p>"]
    blocks.append("<h2>Vulnerability histograms (Madaan2020 Fig. 4)</h2><p class=note>Distribution of the latent "
                  "features' vulnerability under the white-box attack of the table above (all hidden layers; lowest "
                  "seed). Pruned features have vulnerability 0 and pile up in the first bin.</p>")
    hists = vulnerability_histograms_png(data) if data.vulns else []
    blocks += [img(png, alt) for alt, png in hists] or [
        "<p class=note>No vulnerability measured (set <code>vulnerability: true</code> in the study file).</p>"]
    blocks.append("<h2>Sanity checks</h2>")
    blocks.append(f"<p>{e(checks_text(data.checks))}</p>")
    if data.checks:
        t = checks_table(data.checks, data)
        failed = [r for r in t.rows if r[2].text == "NO"]
        rest = t.rows[len(failed):]
        t.rows = failed
        if failed:
            blocks.append(table_html(t))
        if rest:
            t.rows = rest
            blocks.append("<details><summary>the other checks</summary>" + table_html(t) + "</details>")
    blocks.append("<h2>Run times</h2>")
    wall = data.meta.get("study_wall_time")
    blocks.append(f"<p>Training / pruning {train_time:.0f}s, evaluation {eval_time:.0f}s"
                  + (f"; last study run {wall:.0f}s wall time" if wall is not None else "") + ".</p>")
    if precision:
        blocks.append(f"<p>{e(precision)}</p>")
    rt = runtime_chart_png(data)
    if rt:
        blocks.append(img(rt, "run time per model"))
    if deploy is not None:
        blocks += ["<h2 id=deployment>Deployment</h2>", f"<p class=note>{e(deployment_text(data))}</p>",
                   table_html(deploy)]
    if deviations is not None:
        blocks.append("<h2>Settings that differ from the methods' defaults</h2>" + table_html(deviations))
    if models:
        blocks.append("<h2>Models</h2><p class=note>Checkpoints are named by the hash of their config; the unpruned "
                      "base model of each seed has the role 'unpruned base'.</p><details><summary>every model "
                      f"({len(models)})</summary>" + table_html(models_table(data, marks)) + "</details>")
    blocks += provenance_html(out, data.meta, data.spec,
                              sorted({r["code_version"] for r in rows if r.get("code_version")}))
    files.append(page(out, title=f"robustprune study {name}", blocks=blocks))
    return files
