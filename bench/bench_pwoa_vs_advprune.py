#!/usr/bin/env python
"""Benchmark: wall time of one ADMM epoch of PwoA (Jian2022) against AdvPrune (Ye2019), in one process.

Jian2022 Fig. 3 says PwoA prunes several times faster than AdvPrune because it crafts no adversarial examples. This
measures the ADMM phase (the W-step, where the methods differ; Z/U updates included) of ``pwoa-irregular`` and of
``admm-irregular`` with PGD-10 (Ye2019's CIFAR setting) and PGD-40 (its MNIST setting), each pruning LeNet-5-Caffe to
16x on the same ``--n`` Fashion-MNIST training images, one ADMM epoch and no retraining, ``--repeats`` times in
turn; it prints the median seconds per epoch and the ratio to PwoA. Timings on a shared CPU are noisy: compare the
ratios of one run, and say what else was running.

    python bench/bench_pwoa_vs_advprune.py --n 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import robustprune
from robustprune.data import load_splits
from robustprune.models import model_for_dataset
from robustprune.utils import default_device

VARIANTS = {
    "pwoa-irregular (self-distillation + HBaR, no adversarial examples)": ("pwoa-irregular", {}),
    "admm-irregular, PGD-10 (Ye2019 CIFAR setting)": ("admm-irregular", {"pgd_steps": 10}),
    "admm-irregular, PGD-40 (Ye2019 MNIST setting)": ("admm-irregular", {"pgd_steps": 40}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="training images per epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=16.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device(None if args.device == "auto" else args.device)
    splits = load_splits("fashion-mnist", seed=0, device=device, train_limit=args.n, val_size=500)
    torch.manual_seed(0)
    base = model_for_dataset("lenet5-caffe", splits.spec).to(device)
    phase = {"epochs": 1, "optimizer": "adam", "lr": 5e-4, "select": "last"}
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    # The first optimiser built in a process imports torch._dynamo (about 3 s on this CPU); pay it here, not inside
    # the first variant's timing.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    for _ in range(args.repeats):
        for label, (method, extra) in VARIANTS.items():
            model = copy.deepcopy(base)
            res = robustprune.prune(model, method, rate=args.rate, data=splits.train, val=splits.val,
                                    eps=splits.spec.eps_linf, dataset="fashion-mnist", device=device,
                                    teacher=copy.deepcopy(base) if method.startswith("pwoa") else None,
                                    admm=phase, retrain={**phase, "epochs": 0}, **extra)
            times[label].append(float(res.times["admm"]))
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device={dev} lenet5-caffe rate={args.rate:g} n={len(splits.train)} repeats={args.repeats} "
          f"torch={torch.__version__}")
    print("| variant | s per ADMM epoch (median) | time / PwoA |")
    print("|---|---|---|")
    ref = statistics.median(times[next(iter(VARIANTS))])
    for label, ts in times.items():
        med = statistics.median(ts)
        print(f"| {label} | {med:.2f} | {med / ref:.2f} |")


if __name__ == "__main__":
    main()
