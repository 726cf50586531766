#!/usr/bin/env python
"""Export a study's models to deployment formats, verify every file, and print the table of docs/deployment.md.

    python experiments/deployment_table.py runs/precision --seed 0 --train-precision fp32 \
        --format onnx --format torchscript --md /tmp/deployment.md

Runs ``robustprune.study.exports.export_study`` on the chosen models of the study in OUT (the files go to
``OUT/exports/``, the rows to its database, exactly as ``robustprune report OUT --export ...`` does), then reads the
``exports`` table back and writes one Markdown row per (model, format): file size, parameters kept, MACs (dense
kernels) and their ratio to the base, the verification (max |logit difference|, prediction agreement, accuracy on
the model's APGD examples: export vs model), and the latency in the format's runtime at batch 1 and 64 with the
speed-up against the unpruned base in the same runtime. With ``--sparse-model METHOD:RATE`` it also exports that
model as ONNX with sparse initializers into a temporary folder and measures what the sparse form gives (file size,
ONNX Runtime latency) against the dense ONNX file. Measure with nothing else running: latency is wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
from pathlib import Path


def _rows(db: Path) -> list[dict]:
    con = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    q = ("SELECT e.*, m.method, m.rate, m.seed, m.kind FROM exports e JOIN models m USING (model_id)")
    return [dict(r) for r in con.execute(q)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a study's output folder (with results.sqlite)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-precision", default=None, help="only models trained at this precision (fp32, bf16)")
    ap.add_argument("--format", action="append", dest="formats", help="onnx, torchscript, exported-program")
    ap.add_argument("--n", type=int, default=1000, help="test images for the verification")
    ap.add_argument("--sparse-model", default="magnitude-unstructured-global:16",
                    help="METHOD:RATE exported once more as sparse ONNX ('' to skip)")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--fresh", action="store_true",
                    help="export and measure again even where a verified file exists (latency in one quiet run)")
    args = ap.parse_args()
    formats = args.formats or ["onnx", "torchscript"]
    db = args.out / "results.sqlite"
    if not db.is_file():
        print(f"error: no study database at {db}; run a study into {args.out} first", file=sys.stderr)
        return 2

    import torch

    from robustprune.study.exports import export_study
    from robustprune.study.store import ResultsStore

    with ResultsStore(db, readonly=True) as store:
        models = [m for m in store.models() if m.get("seed") == args.seed and (
            args.train_precision is None or (m.get("train_precision") or "fp32") == args.train_precision)]
    if not models:
        print(f"error: no model of seed {args.seed} in {db}", file=sys.stderr)
        return 2
    ids = [m["model_id"] for m in models]
    if args.fresh:
        con = sqlite3.connect(db)
        with con:
            con.executemany("DELETE FROM exports WHERE model_id = ? AND format = ?",
                            [(i, f) for i in ids for f in formats])
        con.close()
    counts = export_study(args.out, formats, n=args.n, model_ids=ids)
    print(counts)

    rows = [r for r in _rows(db) if r["model_id"] in set(ids) and r["format"] in formats]
    base_macs = {r["format"]: r["macs_dense"] for r in rows if r["kind"] == "base" and r["status"] == "done"}
    rows.sort(key=lambda r: (r["kind"] != "base", r["method"] or "", r["rate"] or 0.0, formats.index(r["format"])))
    lines = [f"Models of seed {args.seed}" + (f", trained in {args.train_precision}" if args.train_precision else "")
             + f"; verification on the first {args.n} test images; latency: median ms per call, "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}.", "",
             "| model | format | size MB | params kept | MMACs (dense) | base / model MACs | max \\|Δlogit\\| | "
             "same class | APGD acc. export / model | latency b1 / b64 ms | speed-up b1 / b64 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    failed = 0
    for r in rows:
        label = "unpruned base" if r["kind"] == "base" else f"{r['method']}" + (
            f" c={r['rate']:g}" if r["rate"] else " (learned)")
        if r["status"] != "done":
            failed += 1
            lines.append(f"| {label} | {r['format']} | FAILED: {r.get('message') or ''} |" + " |" * 8)
            continue
        mratio = base_macs.get(r["format"], 0) / max(1, r["macs_dense"])
        sp = ("" if r["kind"] == "base" else
              f"{(r['speedup_b1'] or float('nan')):.2f}x / {(r['speedup_b64'] or float('nan')):.2f}x")
        lines.append(
            f"| {label} | {r['format']} | {r['file_bytes'] / 1e6:.3f} | {r['params_nonzero']:,} / {r['params']:,} | "
            f"{r['macs_dense'] / 1e6:.3f} | {mratio:.2f}x | {r['max_abs_logit_diff']:.1e} | "
            f"{100 * r['prediction_agreement']:.1f} % | {100 * r['robust_acc_export']:.1f} / "
            f"{100 * r['robust_acc_model']:.1f} % | {r['runtime_b1_ms']:.3f} / {r['runtime_b64_ms']:.2f} | {sp} |")

    if args.sparse_model and "onnx" in formats:
        method, rate = args.sparse_model.split(":")
        pick = [m for m in models if m.get("method") == method and m.get("rate") == float(rate)]
        dense = [r for r in rows if r["model_id"] == (pick[0]["model_id"] if pick else None) and r["format"] == "onnx"
                 and r["status"] == "done"]
        if pick and dense:
            from robustprune.checkpoint import load_checkpoint
            from robustprune.data import load_splits
            from robustprune.deploy import export

            model, meta, masks = load_checkpoint(args.out / pick[0]["checkpoint"])
            splits = load_splits(meta["dataset"], val_size=0, test_limit=args.n)
            with tempfile.TemporaryDirectory() as tmp:
                res = export(model, Path(tmp) / "sparse.onnx", format="onnx", sparse=True, masks=masks,
                             data=(splits.test.x[:args.n], splits.test.y[:args.n]), eps=float(splits.spec.eps_linf),
                             card=False, seed=args.seed)
                rep = res.report
                ms = rep["latency"]["ms"]["onnxruntime"]
                d = dense[0]
                lines += ["", f"Sparse ONNX ({method} c={rate}, {rep['sizes']['deployed']['params_nonzero']:,} of "
                          f"{rep['sizes']['deployed']['params']:,} weights non-zero): file "
                          f"{rep['sizes']['deployed']['file_bytes'] / 1e6:.3f} MB against "
                          f"{d['file_bytes'] / 1e6:.3f} MB dense ({d['file_bytes'] / rep['sizes']['deployed']['file_bytes']:.2f}x "
                          f"smaller); ONNX Runtime latency b1 / b64 {ms['b1']:.3f} / {ms['b64']:.2f} ms against "
                          f"{d['runtime_b1_ms']:.3f} / {d['runtime_b64_ms']:.2f} ms dense (ONNX Runtime densifies "
                          "sparse initializers when it loads the file: the same kernels run); verification "
                          f"{'passed' if rep['verification']['passed'] else 'FAILED'}, max |Δlogit| "
                          f"{rep['verification']['max_abs_logit_diff']:.1e}, APGD accuracy "
                          f"{100 * rep['verification']['robust_acc_export']:.1f} / "
                          f"{100 * rep['verification']['robust_acc_model']:.1f} %."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    print(f"OMP/threads: {os.environ.get('OMP_NUM_THREADS', 'unset')}; {failed} export(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
