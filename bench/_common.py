"""Pieces shared by the benchmark scripts in this folder (not a benchmark itself).

The scripts are run as ``python bench/bench_x.py`` from the repository root; each puts its own folder
on ``sys.path`` before ``import _common``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

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
    except ImportError as e:  # models package not there
        raise SystemExit(f"model {name!r} needs robustprune.models.create_model ({e}); use --model smallconv")
    return create_model(name, num_classes=classes, in_channels=shape[0], input_size=shape[1])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call of ``fn`` over ``iters`` calls, after ``warmup`` untimed ones."""
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


def add_run_args(ap: argparse.ArgumentParser, *, iters: int, warmup: int, rounds: int, rounds_help: str) -> None:
    """--model, --batch, --steps, --iters, --warmup, --rounds, --device."""
    ap.add_argument("--model", default="smallconv", help="smallconv (defined here) or a robustprune.models name")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    ap.add_argument("--device", default="auto")


def add_data_args(ap: argparse.ArgumentParser) -> None:
    """--shape, --classes, --eps, --seed."""
    ap.add_argument("--shape", default="3,32,32", help="C,H,W of the synthetic batch")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--seed", type=int, default=0)


def setup(args: argparse.Namespace):
    """Device, eps, alpha (= eps/4), the model (on the device, mode untouched), a seeded generator and
    a synthetic batch ``(x, y)``, all from the parsed options."""
    device = default_device(None if args.device == "auto" else args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    eps = parse_eps(args.eps)
    alpha = eps / 4
    torch.manual_seed(args.seed)
    model = build_model(args.model, shape, args.classes).to(device)
    g = torch.Generator(device=device)
    g.manual_seed(args.seed)
    x = torch.rand(args.batch, *shape, generator=g, device=device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g, device=device)
    return device, eps, alpha, model, g, x, y


def header(args: argparse.Namespace, device: torch.device) -> str:
    """The first line of a benchmark's report: device, model and settings."""
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return (f"device={dev_name} model={args.model} batch={args.batch} steps={args.steps} "
            f"iters={args.iters}x{args.rounds} eps={args.eps} torch={torch.__version__}")
