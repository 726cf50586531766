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
import time

import torch
import torch.nn.functional as F
from torch import nn

from robustprune.objectives import PGDAT
from robustprune.utils import default_device, parse_eps


class SmallConv(nn.Module):
    """A small CIFAR-sized conv net with BatchNorm (so eval/train switching matters)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, shape: tuple[int, int, int], classes: int) -> nn.Module:
    if name == "smallconv":
        return SmallConv(shape[0], classes)
    try:
        from robustprune.models import create_model  # type: ignore[attr-defined]
    except ImportError as e:  # models package not there yet
        raise SystemExit(f"model {name!r} needs robustprune.models.create_model ({e}); use --model smallconv")
    return create_model(name, num_classes=classes, in_channels=shape[0], input_size=shape[1])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def time_fn(fn, iters: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smallconv", help="smallconv (defined here) or a robustprune.models name")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds over (a), (b), (c)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shape", default="3,32,32", help="C,H,W of the synthetic batch")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = default_device(None if args.device == "auto" else args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    eps = parse_eps(args.eps)
    alpha = eps / 4
    torch.manual_seed(args.seed)
    base = build_model(args.model, shape, args.classes).to(device)
    g = torch.Generator(device=device)
    g.manual_seed(args.seed)
    x = torch.rand(args.batch, *shape, generator=g, device=device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g, device=device)

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
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device={dev_name} model={args.model} batch={args.batch} steps={args.steps} "
          f"iters={args.iters}x{args.rounds} eps={args.eps} torch={torch.__version__}")
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
