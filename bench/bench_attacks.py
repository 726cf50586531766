#!/usr/bin/env python
"""Benchmark our PGD-L∞ against public libraries' PGD and a naive weight-gradient loop.

All variants run the same k-step L∞ PGD (random start, step α, CE loss) on the same model (eval
mode) and batch:

(a) ``robustprune.attacks.pgd_linf`` — the evaluation attack (tracks the worst point per sample,
    one extra forward at the end);
(a') ``robustprune.attacks.pgd_linf_last`` — the training variant (last iterate, nothing tracked);
(b) ``torchattacks.PGD`` (pip install torchattacks --no-deps: it imports without torchvision);
(c) ``foolbox.attacks.LinfPGD`` (foolbox 3) — if installed;
(d) a naive loop calling ``loss.backward()`` each step, so the weight gradients are computed too
    (and thrown away), as many reference codes do.

adv-lib 0.2.8 is tried as well, but its ``adv_lib.attacks`` imports torchvision (for LPIPS), so
without torchvision it is reported as unavailable.

Prints images/s for each and the ratios of their throughput to (a):

    python bench/bench_attacks.py --batch 128 --steps 10 --iters 10 --device auto
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from robustprune.attacks import pgd_linf, pgd_linf_last

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_data_args, add_run_args, header, setup, time_fn  # noqa: E402


def naive_pgd(model, x, y, eps, alpha, steps, generator):
    """The reference-code loop: loss.backward() each step (weight gradients computed and dropped)."""
    x_adv = (x + (2 * torch.rand(x.shape, generator=generator, device=x.device) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        model.zero_grad()
        loss.backward()
        x_adv = x_adv.detach() + alpha * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def variants(model, x, y, eps, alpha, steps, generator) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    runs: dict[str, Callable[[], object]] = {
        "a_ours": lambda: pgd_linf(model, x, y, eps=eps, alpha=alpha, steps=steps, generator=generator),
        "a_ours_last": lambda: pgd_linf_last(model, x, y, eps=eps, alpha=alpha, steps=steps, generator=generator),
    }
    missing: dict[str, str] = {}
    try:
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        runs["b_torchattacks"] = lambda: ta(x, y)
    except Exception as exc:  # noqa: BLE001 - report any import problem
        missing["b_torchattacks"] = f"{type(exc).__name__}: {exc}"
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
        fpgd = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
        crit = fb.criteria.Misclassification(y)
        runs["c_foolbox"] = lambda: fpgd.run(fmodel, x, crit, epsilon=eps)
    except Exception as exc:  # noqa: BLE001
        missing["c_foolbox"] = f"{type(exc).__name__}: {exc}"
    try:
        from adv_lib.attacks import pgd_linf as adv_pgd  # imports torchvision (LPIPS)

        runs["e_adv_lib"] = lambda: adv_pgd(model, x, y, ε=eps, steps=steps, random_init=True, restarts=1,
                                            relative_step_size=alpha / eps)
    except Exception as exc:  # noqa: BLE001
        missing["e_adv_lib"] = f"{type(exc).__name__}: {exc}"
    runs["d_naive_backward"] = lambda: naive_pgd(model, x, y, eps, alpha, steps, generator)
    return runs, missing


LABELS = {
    "a_ours": "(a)  robustprune pgd_linf (tracks worst)",
    "a_ours_last": "(a') robustprune pgd_linf_last (last iterate)",
    "b_torchattacks": "(b)  torchattacks.PGD",
    "c_foolbox": "(c)  foolbox LinfPGD",
    "e_adv_lib": "(e)  adv-lib pgd_linf",
    "d_naive_backward": "(d)  naive loop, loss.backward() per step",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(ap, iters=10, warmup=2, rounds=2, rounds_help="interleaved rounds over the variants")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    add_data_args(ap)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device, eps, alpha, model, g, x, y = setup(args)
    model = model.eval()

    # each variant gets its own copy of the model (the naive loop writes .grad)
    runs: dict[str, Callable[[], object]] = {}
    missing: dict[str, str] = {}
    for name in ("a_ours", "a_ours_last", "b_torchattacks", "c_foolbox", "e_adv_lib", "d_naive_backward"):
        r, m = variants(copy.deepcopy(model), x, y, eps, alpha, args.steps, g)
        if name in r:
            runs[name] = r[name]
        elif name in m:
            missing[name] = m[name]

    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):  # interleave so background load hits all alike
        for name, fn in runs.items():
            times[name] += time_fn(fn, args.iters, args.warmup, device)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(header(args, device))
    for k, label in LABELS.items():
        if k in med:
            print(f"{label:48s} median {med[k] * 1e3:9.2f} ms  {args.batch / med[k]:10.1f} img/s  "
                  f"throughput vs (a) {med['a_ours'] / med[k]:6.3f}")
        elif k in missing:
            print(f"{label:48s} unavailable ({missing[k].splitlines()[0][:80]})")
    for k in ("a_ours_last", "b_torchattacks", "c_foolbox", "e_adv_lib", "d_naive_backward"):
        if k in med:
            print(f"time ratio {k} / a_ours = {med[k] / med['a_ours']:.3f}")


if __name__ == "__main__":
    main()
