#!/usr/bin/env python
"""Benchmark the evaluation attacks on one trained model and the same points .

On a LeNet-5-Caffe trained quickly on Fashion-MNIST (fast adversarial training, FGSM-RS at ε = 0.1, cached under
``--cache``), on the first ``--n`` test points, robust accuracy at each ε of ``--eps`` and wall time of:

(a) PGD-20 (L∞, Madry step 2.5 ε / steps, one restart) once per ε, every point attacked every step
    (``early_exit=False``: the evaluation before early exit);
(b) the same PGD-20 with per-sample early exit;
(c) the one-run minimal-norm attack ``min-norm-linf`` (APGD at the largest ε, then a per-sample bisection):
    accuracy at every ε from one run;
(d) in-house APGD-CE + APGD-T (Croce2020; 100 iterations, 9 targets) once per ε;
(e) the official AutoAttack (``pyautoattack``) through the adapter, version custom with apgd-ce + apgd-t and one
    APGD-CE restart (the standard version's settings for these two attacks), once per ε.

Every variant runs through ``robustprune.evaluation.run_attacks`` as the study does (clean errors count as broken
and are not attacked). Prints each accuracy and the time ratios to (a) and to (e). Timings on a shared CPU are
noisy: compare ratios.

    python bench/bench_eval.py --n 1000 --eps 0.05,0.1,0.15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from robustprune.attacks import AttackConfig
from robustprune.evaluation import run_attacks
from robustprune.utils import default_device

sys.path.insert(0, str(Path(__file__).resolve().parent))


def trained_lenet(cache: Path, epochs: int, device: torch.device, seed: int = 0):
    """LeNet-5-Caffe trained with FGSM-RS at ε = 0.1 (Adam, cosine), cached as safetensors; and the data."""
    from safetensors.torch import load_file, save_file

    from robustprune.data import load_splits
    from robustprune.models import model_for_dataset
    from robustprune.objectives import build_objective
    from robustprune.train import TrainConfig, fit

    splits = load_splits("fashion-mnist", val_size=5000, seed=seed, device=str(device))
    torch.manual_seed(seed)
    model = model_for_dataset("lenet5-caffe", splits.spec).to(device)
    if cache.exists():
        model.load_state_dict(load_file(str(cache), device=str(device)))
        print(f"model: {cache} (cached)")
    else:
        t0 = time.perf_counter()
        cfg = TrainConfig(epochs=epochs, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0,
                          schedule="cosine", seed=seed, select="last", progress=False)
        fit(model, build_objective("fast-at", eps=0.1), splits.train, splits.val, cfg)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cache))
        print(f"model: trained {epochs} epochs FGSM-RS eps 0.1 in {time.perf_counter() - t0:.0f} s -> {cache}")
    model.eval()
    return model, splits


VARIANTS = {
    "a": "(a) PGD-20 x eps, no early exit",
    "b": "(b) PGD-20 x eps, early exit",
    "c": "(c) min-norm-linf, one run",
    "d": "(d) APGD-CE + APGD-T (in-house)",
    "e": "(e) AutoAttack apgd-ce+apgd-t (official)",
}


def specs(eps: list[float]) -> dict[str, list[AttackConfig]]:
    out = {
        "a": [AttackConfig.build("pgd", eps, steps=20, restarts=1, early_exit=False)],
        "b": [AttackConfig.build("pgd", eps, steps=20, restarts=1)],
        "c": [AttackConfig.build("min-norm-linf", eps)],
        "d": [AttackConfig.build("apgd", eps)],
    }
    try:
        import pyautoattack  # noqa: F401

        out["e"] = [AttackConfig.build("autoattack", eps, version="custom", attacks_to_run="apgd-ce+apgd-t",
                                       apgd_n_restarts=1)]
    except ImportError:
        print("(e) unavailable: pip install 'robustprune[autoattack]'")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="first n test points")
    ap.add_argument("--eps", default="0.05,0.1,0.15")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs when the model is not cached")
    ap.add_argument("--cache", default="runs/bench-eval/lenet5-caffe-fastat.safetensors")
    ap.add_argument("--only", default="abcde", help="variants to run, e.g. abd")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device(None if args.device == "auto" else args.device)
    eps = [float(e) for e in args.eps.split(",")]
    model, splits = trained_lenet(Path(args.cache), args.epochs, device, args.seed)
    x, y = splits.test.x[:args.n], splits.test.y[:args.n]

    acc: dict[str, dict[float, float]] = {}
    wall: dict[str, float] = {}
    clean = None
    for key, sp in specs(eps).items():
        if key not in args.only:
            continue
        t0 = time.perf_counter()
        run = run_attacks(model, x, y, sp, default_eps=0.1, batch_size=500, seed=args.seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall[key] = time.perf_counter() - t0
        clean = run.clean_acc
        acc[key] = {float(r["eps"]): float(r["robust_acc"]) for r in run.rows if r["attack"] != "clean"}
        print(f"  {VARIANTS[key]}: {wall[key]:.1f} s", flush=True)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\ndevice={dev} model=lenet5-caffe (fast-AT eps 0.1) n={len(x)} clean={clean:.3f} torch={torch.__version__}")
    head = "| variant | " + " | ".join(f"eps {e:g}" for e in eps) + " | wall s | time / (a) | time / (e) |"
    print(head)
    print("|" + "---|" * (len(eps) + 4))
    for key, label in VARIANTS.items():
        if key not in acc:
            continue
        cells = " | ".join(f"{100 * acc[key].get(e, float('nan')):.1f}" for e in eps)
        ra = f"{wall[key] / wall['a']:.3f}" if "a" in wall else "-"
        re_ = f"{wall[key] / wall['e']:.3f}" if "e" in wall else "-"
        print(f"| {label} | {cells} | {wall[key]:.1f} | {ra} | {re_} |")
    if "d" in acc and "e" in acc:
        gaps = [100 * (acc["d"][e] - acc["e"][e]) for e in eps]
        print("APGD in-house minus official (points): " + ", ".join(f"{g:+.1f}" for g in gaps)
              + f"; throughput (d)/(e) = {wall['e'] / wall['d']:.2f}x")
    if "c" in acc and "d" in acc:
        gaps = [100 * (acc["c"][e] - acc["d"][e]) for e in eps]
        print("min-norm minus APGD (points): " + ", ".join(f"{g:+.1f}" for g in gaps))
    if "a" in wall and "b" in wall:
        print(f"early exit: time (b)/(a) = {wall['b'] / wall['a']:.3f}")


if __name__ == "__main__":
    main()
