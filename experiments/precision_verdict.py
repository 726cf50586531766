#!/usr/bin/env python
"""Does bf16 training cost robustness? Compare the models of one study run at two training precisions.

Run the same study twice into one folder, once per precision (a non-default precision is part of every model's
identity, so both sets of models live side by side), then read the database:

    robustprune study studies/precision/main-job-3-seeds.yaml --precision fp32 --out runs/precision
    robustprune study studies/precision/main-job-3-seeds.yaml --precision bf16 --out runs/precision
    python experiments/precision_verdict.py runs/precision/results.sqlite [--attack apgd] [--md out.md]

For every model configuration (method, rate) it prints the clean and robust accuracy (mean ± std over seeds) at each
precision, the paired difference by seed (mean ± std), the seed-to-seed spread (the larger std of the two), and the
verdict: "within spread" when |mean difference| <= that spread, else "bf16 lower" / "bf16 higher". Evaluation is
always strict fp32 (the ``eval_precision`` column says so), so the comparison is between training precisions only.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def _ms(values: list[float]) -> tuple[float, float]:
    m = statistics.mean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("--attack", default="apgd", help="result rows' attack (default apgd)")
    ap.add_argument("--eps", type=float, default=None, help="budget (default: the attack's only / largest one)")
    ap.add_argument("--a", default="fp32", help="reference training precision")
    ap.add_argument("--b", default="bf16", help="compared training precision")
    ap.add_argument("--md", type=Path, default=None, help="also write the table as Markdown here")
    args = ap.parse_args()
    if not args.db.is_file():
        print(f"error: no database at {args.db}; run the two studies first (see --help)", file=sys.stderr)
        return 2
    con = sqlite3.connect(f"file:{args.db.resolve()}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    cols = {r[1] for r in con.execute("PRAGMA table_info(results)")}
    if "train_precision" not in cols:
        print(f"error: {args.db} has no train_precision column (written by an older robustprune)", file=sys.stderr)
        return 2
    rows = [dict(r) for r in con.execute(
        "SELECT method, rate, seed, train_precision, eval_precision, attack, eps, robust_acc, clean_acc, "
        "achieved_compression FROM results WHERE attack = ?", (args.attack,))]
    if not rows:
        print(f"error: no {args.attack!r} rows in {args.db}", file=sys.stderr)
        return 2
    eps = args.eps if args.eps is not None else max(r["eps"] for r in rows)
    rows = [r for r in rows if abs(r["eps"] - eps) < 1e-9]
    by: dict[tuple[str, str], dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        rate = "learned" if r["rate"] is None else f"{r['rate']:g}"
        by[(r["method"], rate)][r["train_precision"]][r["seed"]] = r
    evals = sorted({r["eval_precision"] for r in rows})
    head = (f"| method | c | clean {args.a} | clean {args.b} | {args.attack} {args.a} | {args.attack} {args.b} | "
            f"paired diff ({args.b} - {args.a}) | spread | verdict |")
    lines = [f"{args.attack} at eps {eps:g}, evaluation precision {', '.join(evals)}; mean ± std over seeds, points",
             "", head, "|" + "---|" * 9]
    for (method, rate), per in sorted(by.items(), key=lambda kv: (kv[0][0] != "unpruned", kv[0])):
        a, b = per.get(args.a, {}), per.get(args.b, {})
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        ra = [100 * a[s]["robust_acc"] for s in seeds]
        rb = [100 * b[s]["robust_acc"] for s in seeds]
        ca = [100 * a[s]["clean_acc"] for s in seeds]
        cb = [100 * b[s]["clean_acc"] for s in seeds]
        d = [y - x for x, y in zip(ra, rb)]
        (ma, sa), (mb, sb), (md, sd) = _ms(ra), _ms(rb), _ms(d)
        spread = max(sa, sb) if len(seeds) > 1 else float("nan")
        if len(seeds) < 2:
            verdict = "one seed: spread unknown"
        elif abs(md) <= spread:
            verdict = "within spread"
        else:
            verdict = f"{args.b} {'lower' if md < 0 else 'higher'}"
        lines.append(f"| {method} | {rate} | {_ms(ca)[0]:.1f} ± {_ms(ca)[1]:.1f} | {_ms(cb)[0]:.1f} ± {_ms(cb)[1]:.1f}"
                     f" | {ma:.1f} ± {sa:.1f} | {mb:.1f} ± {sb:.1f} | {md:+.1f} ± {sd:.1f} (n={len(seeds)}) | "
                     f"{spread:.1f} | {verdict} |")
    text = "\n".join(lines)
    print(text)
    if args.md is not None:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
