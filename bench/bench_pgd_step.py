#!/usr/bin/env python
"""Benchmark one PGD-AT training step: library objective vs. a bare hand loop vs. a naive loop.

(a) ``PGDAT`` objective + optimizer step (what the trainer runs),
(b) a bare loop doing the same passes by hand: k × (forward + input-gradient backward), then one
    training forward/backward + optimizer step — the floor the library should sit on,
(c) the naive loop of many reference codes: ``loss.backward()`` inside the attack (weight gradients
    computed and thrown away) plus an extra no-grad forward per step.

Prints images/s for each and the ratios (a)/(b) and (c)/(b) of the median step times.

    python bench/bench_pgd_step.py --batch 128 --steps 10 --iters 20 --device auto
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from robustprune.objectives import PGDAT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_data_args, add_run_args, header, setup, time_fn  # noqa: E402


def project(x_adv, x, eps):
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def make_steps(model, opt, x, y, eps, alpha, steps, generator):
    objective = PGDAT(eps, alpha=alpha, steps=steps)

    def library():
        opt.zero_grad(set_to_none=True)
        out = objective(model, x, y, generator=generator)
        out.loss.backward()
        opt.step()

    def bare():
        model.eval()
        x_adv = (x + (2 * torch.rand(x.shape, generator=generator, device=x.device) - 1) * eps).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + alpha * g.sign(), x, eps)
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_adv), y).backward()
        opt.step()

    def naive():
        model.eval()
        x_adv = (x + (2 * torch.rand(x.shape, generator=generator, device=x.device) - 1) * eps).clamp(0, 1)
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            model.zero_grad()
            loss.backward()  # weight gradients too, thrown away
            x_adv = project(x_adv.detach() + alpha * x_adv.grad.sign(), x, eps)
            with torch.no_grad():
                model(x_adv)  # the extra forward per step (e.g. to log the attack's accuracy)
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_adv), y).backward()
        opt.step()

    return {"a_library": library, "b_bare": bare, "c_naive": naive}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(ap, iters=20, warmup=3, rounds=1, rounds_help="interleaved rounds over (a), (b), (c)")
    add_data_args(ap)
    args = ap.parse_args()

    device, eps, alpha, base, g, x, y = setup(args)
    variants = {}
    for name in ("a_library", "b_bare", "c_naive"):
        model = copy.deepcopy(base).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        variants[name] = make_steps(model, opt, x, y, eps, alpha, args.steps, g)[name]

    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):  # interleave so background load hits all three alike
        for name, fn in variants.items():
            times[name] += time_fn(fn, args.iters, args.warmup, device)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(header(args, device))
    labels = {
        "a_library": "(a) PGDAT objective + opt step",
        "b_bare": "(b) bare loop (k fwd+input-grad, 1 fwd/bwd)",
        "c_naive": "(c) naive (loss.backward + extra fwd/step)",
    }
    for k, label in labels.items():
        print(f"{label:48s} median {med[k] * 1e3:9.2f} ms/step  {args.batch / med[k]:10.1f} img/s")
    print(f"ratio (a)/(b) = {med['a_library'] / med['b_bare']:.3f}")
    print(f"ratio (c)/(b) = {med['c_naive'] / med['b_bare']:.3f}")


if __name__ == "__main__":
    main()
