"""Verdicts of the reproduction suite (studies/reproduce/*.yaml) from its results database.

    python experiments/reproduction_verdicts.py runs/reproduce/results.sqlite > docs/reproductions-table.md

For each claim: per-seed paired differences (each pruned model against its own seed's base model, or two methods on
the same seed's base model), their mean ± std over seeds, the standard error, and a verdict. An effect counts when
|mean| > 2 standard errors (with 3 seeds); a "keeps" claim holds when the mean is not significantly negative.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from collections import defaultdict


def rows(db: str, attack: str) -> dict[tuple[str, float | None, int], dict]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    out = {}
    for r in con.execute('SELECT method, rate, seed, robust_acc, clean_acc, converged, flags FROM results '
                         'WHERE attack = ? AND n_eval >= 1000', (attack,)):
        out[(r["method"], r["rate"], r["seed"])] = dict(r)
    return out


def stats(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, sd, sd / math.sqrt(n) if n > 1 else float("nan")


def paired(table, a: tuple[str, float | None], b: tuple[str, float | None]) -> list[float]:
    seeds = sorted({s for (_m, _r, s) in table})
    out = []
    for s in seeds:
        ra, rb = table.get((a[0], a[1], s)), table.get((b[0], b[1], s))
        if ra and rb:
            out.append(100 * (ra["robust_acc"] - rb["robust_acc"]))
    return out


def level(table, key: tuple[str, float | None]) -> str:
    vals = [100 * r["robust_acc"] for (m, rt, _s), r in table.items() if (m, rt) == key]
    if not vals:
        return "n/a"
    mean, sd, _ = stats(vals)
    flags = sorted({f for (m, rt, _s), r in table.items() if (m, rt) == key for f in json.loads(r["flags"] or "[]")})
    return f"{mean:.1f} ± {sd:.1f}" + (f" ({', '.join(flags)})" if flags else "")


def effect(d: list[float]) -> str:
    if len(d) < 2:
        return "n/a (fewer than 2 seeds)"
    mean, sd, se = stats(d)
    return f"{mean:+.1f} ± {sd:.1f} (SE {se:.1f}, n={len(d)})"


def significant(d: list[float], sign: int) -> bool:
    mean, _sd, se = stats(d)
    return len(d) > 1 and sign * mean > 2 * se


def main(db: str) -> None:
    apgd = rows(db, "apgd")
    base = ("unpruned", 1.0)
    print("| claim | comparison | APGD-CE + APGD-T @0.1 (%) | paired difference (points) | verdict |")
    print("|---|---|---|---|---|")
    mild = [("magnitude-unstructured-global", c) for c in (2.0, 4.0)]
    heavy = [("magnitude-unstructured-global", c) for c in (16.0, 32.0)]
    if all(paired(apgd, k, base) for k in mild + heavy):
        keeps = all(not significant(paired(apgd, k, base), -1) for k in mild)
        lowers = all(significant(paired(apgd, k, base), -1) for k in heavy)
        verdict = ("reproduced" if keeps and lowers else "partly reproduced" if keeps or lowers else
                   "not reproduced")
        for k in mild + heavy:
            print(f"| Merkle2022 Table 2: mild keeps, heavy lowers | c={k[1]:g} vs unpruned ({level(apgd, base)}) | "
                  f"{level(apgd, k)} | {effect(paired(apgd, k, base))} | {verdict} |")
    pw, ce, kd = ("pwoa-irregular", 16.0), ("pwoa-irregular@ce", 16.0), ("pwoa-irregular@kd", 16.0)
    if paired(apgd, pw, ce):
        d = paired(apgd, pw, ce)
        keeps = not significant(paired(apgd, pw, base), -1)  # PwoA not significantly below its base model
        v = ("reproduced" if significant(d, +1) and keeps else
             "partly reproduced (beats CE, but loses robustness against the base)" if significant(d, +1) else
             "opposite" if significant(d, -1) else "not reproduced")
        print(f"| Jian2022 Table II: PwoA keeps robustness where CE loses it | PwoA vs CE at 16x | {level(apgd, pw)} vs "
              f"{level(apgd, ce)} | {effect(d)} | {v} |")
        print(f"| (same) | PwoA at 16x vs unpruned ({level(apgd, base)}) | {level(apgd, pw)} | "
              f"{effect(paired(apgd, pw, base))} | |")
    if paired(apgd, pw, kd):
        d = paired(apgd, pw, kd)
        v = "reproduced" if significant(d, +1) else ("opposite" if significant(d, -1) else "not reproduced")
        print(f"| Jian2022 Table II: HBaR adds robustness on top of KD | KD + HBaR vs KD at 16x | {level(apgd, pw)} vs "
              f"{level(apgd, kd)} | {effect(d)} | {v} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce/results.sqlite")
