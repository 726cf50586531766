#!/usr/bin/env python3
"""The official AutoAttack next to the reproduction suite's in-house APGD, on the same models and test points.

The suite (``studies/reproduce/*.yaml``) judges robustness with the in-house APGD-CE + APGD-T (50 iterations, 3 target
classes). This script takes a subset of its models from the results database (by method, rate, width and seed),
loads their checkpoints (safetensors: nothing is unpickled), and on the first ``--n`` test points runs

- the suite's in-house APGD (``apgd``, 50 iterations, 3 targets), as the study ran it;
- the official AutoAttack, version ``standard`` (APGD-CE, APGD-T with 9 targets, FAB-T, Square: the RobustBench
  protocol), from ``pyautoattack`` (``pip install -e ".[autoattack]"``).

It prints a Markdown table: robust accuracy of each, their difference, and the points the official attack breaks
that the in-house one left robust. The suite's verdicts hold if that difference is small next to the effects.

    python experiments/autoattack_crosscheck.py runs/reproduce/results.sqlite --n 500 \
        --model unpruned:1:0 --model pwoa-irregular:16:0 --model magnitude-unstructured-global:32:0
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from robustprune.attacks import AttackConfig
from robustprune.checkpoint import load_checkpoint
from robustprune.data import load_splits
from robustprune.evaluation import run_attacks
from robustprune.utils import default_device


def pick(db: Path, method: str, rate: float | None, seed: int, architecture: str | None,
         width: float | None) -> dict:
    """The models row of (method, rate, seed[, architecture, width]); one-line error when absent or ambiguous."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    q = ("SELECT DISTINCT r.model_id, r.architecture, r.width, r.dataset, m.checkpoint FROM results r "
         "JOIN models m ON m.model_id = r.model_id WHERE r.method = ? AND r.seed = ?")
    args: list = [method, seed]
    if rate is None:
        q += " AND r.rate IS NULL"
    else:
        q += " AND r.rate = ?"
        args.append(rate)
    if architecture:
        q += " AND r.architecture = ?"
        args.append(architecture)
    if width is not None:
        q += " AND r.width = ?"
        args.append(width)
    found = [dict(r) for r in con.execute(q, args)]
    if not found:
        raise SystemExit(f"error: no model in {db} is {method} at rate {rate}, seed {seed} (architecture "
                         f"{architecture}, width {width}); check the names against the database's results table")
    if len(found) > 1:
        raise SystemExit(f"error: {len(found)} models are {method} at rate {rate}, seed {seed}; name one with "
                         "METHOD:RATE:SEED:ARCH:WIDTH")
    return found[0]


def parse_model(entry: str) -> tuple[str, float | None, int, str | None, float | None]:
    """``METHOD:RATE:SEED[:ARCH[:WIDTH]]``, RATE ``learned`` for a learned rate."""
    parts = entry.split(":")
    if len(parts) < 3:
        raise SystemExit(f"error: --model {entry!r} must look like METHOD:RATE:SEED[:ARCH[:WIDTH]], "
                         "e.g. pwoa-irregular:16:0")
    rate = None if parts[1] == "learned" else float(parts[1])
    return (parts[0], rate, int(parts[2]), parts[3] if len(parts) > 3 else None,
            float(parts[4]) if len(parts) > 4 else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("--model", action="append", required=True, help="METHOD:RATE:SEED[:ARCH[:WIDTH]]")
    ap.add_argument("--n", type=int, default=500, help="first n test points")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        raise SystemExit('error: the official AutoAttack is missing; pip install -e ".[autoattack]"') from None
    if not args.db.is_file():
        raise SystemExit(f"error: no results database at {args.db}; run the reproduction suite first")
    device = default_device(None if args.device == "auto" else args.device)
    ours = AttackConfig.build("apgd", [args.eps], steps=50, n_target_classes=3)
    official = AttackConfig.build("autoattack", [args.eps], version="standard")
    print(f"| model | clean | in-house APGD-CE + APGD-T (50 it, 3 targets) | official AutoAttack (standard) | "
          f"difference (points) | broken only by AutoAttack | wall s (ours / official) |")
    print("|---|---|---|---|---|---|---|")
    splits_cache: dict[tuple[str, int], object] = {}
    for entry in args.model:
        method, rate, seed, arch, width = parse_model(entry)
        rec = pick(args.db, method, rate, seed, arch, width)
        model, _meta, _masks = load_checkpoint(args.db.parent / rec["checkpoint"], device)
        model.eval()
        key = (rec["dataset"], seed)
        if key not in splits_cache:
            splits_cache[key] = load_splits(rec["dataset"], seed=seed, device=device, test_limit=args.n)
        test = splits_cache[key].test
        x, y = test.x[:args.n], test.y[:args.n]
        walls, robust = [], []
        for cfg in (ours, official):
            t0 = time.perf_counter()
            run = run_attacks(model, x, y, [cfg], default_eps=args.eps, batch_size=500, seed=seed)
            walls.append(time.perf_counter() - t0)
            robust.append(next(iter(run.correct.values())).cpu())
            clean = run.clean_acc
        only_aa = int((robust[0] & ~robust[1]).sum())
        a, b = 100 * robust[0].float().mean().item(), 100 * robust[1].float().mean().item()
        label = f"{method} c={rate if rate is not None else 'learned'} seed {seed}" + (
            f" ({rec['architecture']} w={rec['width']:g})" if arch or width else "")
        print(f"| {label} | {100 * clean:.1f} | {a:.1f} | {b:.1f} | {b - a:+.1f} | {only_aa} of {len(y)} | "
              f"{walls[0]:.0f} / {walls[1]:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
