#!/usr/bin/env python
"""Benchmark PGD-AT training steps at each precision: the library's training loop vs. a bare hand loop vs. a naive
loop.

(a) the library: ``robustprune.train.fit`` with the ``PGDAT`` objective, one epoch of ``--iters`` steps over a
    synthetic split (batching, precision contexts, divergence checks: everything a real phase runs; validation off),
    timed as the phase's wall time / steps;
(b) a bare loop doing the same passes by hand with plain PyTorch (``torch.autocast`` for bf16, ``channels_last``
    when asked, TF32 switched as the precision says): k x (forward + input-gradient backward), then one training
    forward / backward + optimiser step, on batches indexed from the same split -- the floor the library should sit
    on;
(c) the naive loop of many reference codes: ``loss.backward()`` inside the attack (weight gradients computed and
    thrown away) plus an extra no-grad forward per step, in the same precision.

For each precision in ``--precision`` (comma-separated: fp32, tf32, bf16) it prints ms/step and images/s of (a), (b)
and (c), the ratio (a)/(b), and the speed-up of each precision over fp32 (library and bare). Rounds are interleaved so
that background load hits every variant alike.

    python bench/bench_pgd_step.py --model resnet18 --batch 512 --steps 10 --precision fp32,bf16 --device cuda
    python bench/bench_pgd_step.py --batch 128 --steps 10 --precision fp32,bf16 --iters 4 --rounds 3   # CPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustprune.data import Split
from robustprune.objectives import PGDAT
from robustprune.precision import PRECISIONS, allow_tf32, use_channels_last
from robustprune.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_data_args, add_run_args, header, setup, sync  # noqa: E402


def project(x_adv, x, eps):
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def hand_loops(model, split, batch, eps, alpha, steps, generator, precision, channels_last):
    """(b) and (c): one call = ``iters`` training steps over the split's batches, in plain PyTorch."""
    dev = split.x.device
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = precision == "bf16"

    def batches():
        perm = torch.randperm(len(split), device=dev)
        for i in range(0, len(split) - batch + 1, batch):
            idx = perm[i : i + batch]
            x = split.x[idx]
            yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), split.y[idx]

    def train_step(x_adv, y):
        model.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        opt.step()

    def bare():
        with allow_tf32(precision != "fp32"):
            for x, y in batches():
                model.eval()
                x_adv = (x + (2 * torch.rand(x.shape, generator=generator, device=dev) - 1) * eps).clamp(0, 1)
                for _ in range(steps):
                    x_adv.requires_grad_(True)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
                    (g,) = torch.autograd.grad(loss, x_adv)
                    x_adv = project(x_adv.detach() + alpha * g.sign(), x, eps)
                train_step(x_adv, y)

    def naive():
        with allow_tf32(precision != "fp32"):
            for x, y in batches():
                model.eval()
                x_adv = (x + (2 * torch.rand(x.shape, generator=generator, device=dev) - 1) * eps).clamp(0, 1)
                for _ in range(steps):
                    x_adv = x_adv.detach().requires_grad_(True)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        loss = F.cross_entropy(model(x_adv), y)
                    model.zero_grad()
                    loss.backward()  # weight gradients too, thrown away
                    x_adv = project(x_adv.detach() + alpha * x_adv.grad.sign(), x, eps)
                    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        model(x_adv)  # the extra forward per step (e.g. to log the attack's accuracy)
                train_step(x_adv, y)

    return bare, naive


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(ap, iters=8, warmup=1, rounds=3, rounds_help="interleaved rounds over the variants and precisions")
    add_data_args(ap)
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, tf32, bf16 (e.g. fp32,bf16)")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                    help="memory layout of the model while training (auto: channels_last for bf16 on CUDA, as the "
                         "library decides)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's forward (library and loops)")
    ap.add_argument("--no-naive", action="store_true", help="skip (c)")
    args = ap.parse_args()
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise SystemExit(f"--precision must name {', '.join(PRECISIONS)}; got {bad[0]!r}")

    device, eps, alpha, base, g, _x, _y = setup(args)
    shape = tuple(int(s) for s in args.shape.split(","))
    n = args.batch * args.iters
    gx = torch.Generator(device=device).manual_seed(args.seed + 1)
    split = Split(torch.rand(n, *shape, generator=gx, device=device),
                  torch.randint(0, args.classes, (n,), generator=gx, device=device))
    cl_flag = {"auto": None, "on": True, "off": False}[args.channels_last]

    runs: dict[tuple[str, str], object] = {}
    layouts: dict[str, bool] = {}
    for p in precisions:
        cl = use_channels_last(base, p, device, cl_flag)
        layouts[p] = cl
        cfg = TrainConfig(epochs=1, batch_size=args.batch, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0,
                          schedule="constant", select="last", val_size=0, progress=False, seed=args.seed,
                          precision=p, channels_last=cl_flag, compile=args.compile)
        lib_model = copy.deepcopy(base).train()
        objective = PGDAT(eps, alpha=alpha, steps=args.steps)

        def library(m=lib_model, c=cfg, o=objective):
            res = fit(m, o, split, None, c)
            assert res.steps == args.iters, res.steps

        runs[(p, "a")] = library
        for key, model in (("b", copy.deepcopy(base).train()), ("c", copy.deepcopy(base).train())):
            if cl:
                model.to(memory_format=torch.channels_last)
            if args.compile:
                model.compile()
            bare, naive = hand_loops(model, split, args.batch, eps, alpha, args.steps, g, p, cl)
            if key == "b":
                runs[(p, "b")] = bare
            elif not args.no_naive:
                runs[(p, "c")] = naive

    for _ in range(args.warmup):
        for fn in runs.values():
            fn()
    per_step: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            per_step[k].append(timed(fn, device) / args.iters)
    med = {k: statistics.median(v) for k, v in per_step.items()}

    print(header(args, device) + f" precision={args.precision} channels_last={args.channels_last} "
          f"compile={args.compile}")
    labels = {"a": "(a) library fit(PGDAT)", "b": "(b) bare loop", "c": "(c) naive loop"}
    for p in precisions:
        for v in ("a", "b", "c"):
            if (p, v) in med:
                t = med[(p, v)]
                print(f"{p:5s} {'NHWC' if layouts[p] else 'NCHW'} {labels[v]:26s} median {t * 1e3:9.2f} ms/step  "
                      f"{args.batch / t:10.1f} img/s")
        print(f"{p:5s} ratio (a)/(b) = {med[(p, 'a')] / med[(p, 'b')]:.3f}"
              + (f"   (c)/(b) = {med[(p, 'c')] / med[(p, 'b')]:.3f}" if (p, "c") in med else ""))
    if "fp32" in precisions:
        for p in precisions:
            if p != "fp32":
                print(f"speed-up {p} over fp32: library {med[('fp32', 'a')] / med[(p, 'a')]:.2f}x, "
                      f"bare {med[('fp32', 'b')] / med[(p, 'b')]:.2f}x")


if __name__ == "__main__":
    main()
