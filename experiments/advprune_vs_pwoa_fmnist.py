#!/usr/bin/env python3
"""AdvPrune (Ye2019) vs PwoA (Jian2022) on Fashion-MNIST: the two ADMM pruning methods side by side.

The registered methods ``admm-*`` (AdvPrune) and ``pwoa-*`` (PwoA) (``robustprune list methods``,
``robustprune.methods.get_method``) run these methods with their papers' defaults; this script calls the functions
behind them (``robustprune.methods.advprune``, ``pwoa``, ``admm_prune``) directly, to vary phases and objectives.

(a) PwoA at 4x and 8x vs pruning the same robust model with CE (the same ADMM + masked fine-tuning,
    natural cross-entropy instead of distillation + HBaR: Jian2022 Tables II-IV, row L_CE);
(b) AdvPrune irregular vs column vs filter at one rate (Ye2019 Sec. 5);
(c) lenet-mnist-w: a w_small net obtained by pruning a w_big net (AdvPrune, per-layer keep = the small
    layer's size / the big layer's size) vs the w_small net adversarially trained from scratch with the
    same total number of epochs (Ye2019 Sec. 4.1);
(d) training time of PwoA vs AdvPrune at the same rate and scheme (Jian2022 Fig. 3);
(e) Jian2022 Table II ablation at --advprune-rate (4x) with --pwoa-scheme (irregular) pruning of the same
    teacher: CE (ADMM + masked retraining with natural cross-entropy), CE+HBaR (HBaR around natural CE in
    both phases, Table IX MNIST lambdas), KD (PwoA without HBaR) and KD+HBaR (PwoA);
(f) Jian2022 Table V: PwoA loss + ce_weight * CE for each --ce-weights at --advprune-rate, --pwoa-scheme;
(g) Jian2022 Fig. 2: PwoA-pruned --arch at each --lite-rates vs a "Lite" --arch (width scaled so its
    Conv2d/Linear weight count is ~1/rate of the full one) PGD-AT from scratch for admm + retrain epochs;
(h) Ye2019 Tables 7-8: C&W-Linf (--cw-steps) next to PGD-20 for the teacher and the part-(b) AdvPrune models
    (from this run, else their checkpoints in --workdir), and PGD-20 transfer from each source (teacher,
    pruned models, the w-big PGD-AT net of (c)/(i) when its checkpoint exists) to each target;
(i) Ye2019 Table 5: the w-small net initialised from the first channels of the w-big PGD-AT net of (c)
    (inherited initialisation), then PGD-AT for the same epochs as (c)'s from-scratch net.

Every model is evaluated on the first --test-n test images: clean accuracy, PGD-20 (L∞, ε = --eps,
α = ε/4, one restart) and, when the ``autoattack`` package (pyautoattack) is importable, AutoAttack
(standard). Checkpoints are selected on the validation split (carved from training), never on test.
Results go to --out as Markdown. Defaults aim at ~2-4 minutes per trained model on 2 CPU cores;
``--tiny`` is a smoke test of the whole pipeline in about a minute.

    python experiments/advprune_vs_pwoa_fmnist.py --out runs/advprune_vs_pwoa_fmnist.md
    python experiments/advprune_vs_pwoa_fmnist.py --tiny --out /tmp/advprune_vs_pwoa_fmnist_tiny.md
    python experiments/advprune_vs_pwoa_fmnist.py --teacher runs/advprune_vs_pwoa_fmnist/teacher.safetensors \
        --out runs/advprune_vs_pwoa_fmnist.md
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.attacks import pgd_linf
from robustprune.checkpoint import save_checkpoint
from robustprune.data import load_splits
from robustprune.methods import admm_prune, advprune, load_teacher, pwoa
from robustprune.methods.pwoa import table_ix
from robustprune.metrics import accuracy, robust_accuracy
from robustprune.models import model_for_dataset
from robustprune.objectives import PGDAT, HBaR, Natural
from robustprune.sparsity import prunable_layers, sparsity_report
from robustprune.train import TrainConfig, fit
from robustprune.utils import seed_everything


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="Markdown file for the results tables")
    p.add_argument("--workdir", default=None, help="where checkpoints and JSON go (default: next to --out)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=10000, help="training images (after the validation split)")
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--val-n", type=int, default=500, help="validation points used for selection each epoch")
    p.add_argument("--test-n", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (quick runs)")
    p.add_argument("--parts", default="abcd", help="which experiments to run, e.g. 'ab'")
    # teacher (a, b, d)
    p.add_argument("--arch", default="lenet5-caffe")
    p.add_argument("--teacher", default=None, help="robust teacher checkpoint (.safetensors); trained if omitted")
    p.add_argument("--teacher-arch", default=None, help="architecture of a plain safetensors state dict teacher")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--teacher-lr", type=float, default=1e-3)
    # pruning phases (shared by all methods, so the comparison is fair)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--admm-epochs", type=int, default=5)
    p.add_argument("--admm-lr", type=float, default=1e-3)
    p.add_argument("--retrain-epochs", type=int, default=3)
    p.add_argument("--retrain-lr", type=float, default=5e-4)
    p.add_argument("--rho", type=float, default=0.01, help="Jian2022 App. B: 0.01")
    p.add_argument("--rho-factor", type=float, default=1.35, help="Jian2022 App. B: x1.35 per update")
    p.add_argument("--rho-max", type=float, default=1.0, help="Jian2022 App. B: cap 1")
    p.add_argument("--update-every", type=int, default=25,
                   help="Z/U update period; Jian2022 uses 3 epochs of ~470 steps over 50 epochs, scaled down here")
    p.add_argument("--update-unit", default="step", choices=["step", "epoch"])
    p.add_argument("--pgd-steps", type=int, default=10, help="PGD steps of adversarial training")
    # (a) PwoA
    p.add_argument("--pwoa-rates", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--pwoa-scheme", default="irregular")
    p.add_argument("--mix-ratio", type=float, default=0.0)
    p.add_argument("--no-hbar", action="store_true")
    p.add_argument("--no-balance", action="store_true")
    # (b) AdvPrune schemes
    p.add_argument("--advprune-rate", type=float, default=4.0)
    p.add_argument("--schemes", nargs="+", default=["irregular", "column", "filter"])
    # (c) width
    p.add_argument("--w-big", type=float, default=4.0)
    p.add_argument("--w-small", type=float, default=1.0)
    p.add_argument("--c-scheme", default="irregular")
    # (f) CE-weight sweep, (g) Lite, (h) C&W + transfer
    p.add_argument("--ce-weights", type=float, nargs="+", default=[0.0, 0.01, 0.1, 1.0])
    p.add_argument("--lite-rates", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    p.add_argument("--cw-steps", type=int, default=50)
    p.add_argument("--aa-n", type=int, default=None,
                   help="AutoAttack on the first aa-n test images only (default: all --test-n; 0: skip AutoAttack)")
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny data and one short epoch everywhere")
    a = p.parse_args(argv)
    if a.tiny:
        a.train_limit, a.val_size, a.val_n, a.test_n = 512, 200, 100, 100
        a.teacher_epochs, a.admm_epochs, a.retrain_epochs = 1, 1, 1
        a.max_steps = a.max_steps or 3
        a.update_every, a.update_unit = 1, "step"
        a.pgd_steps = 2
        a.pwoa_rates = a.pwoa_rates[:2]
        a.lite_rates = a.lite_rates[:2]
        a.cw_steps = 5
        a.aa_n = min(a.aa_n or 20, 20)
    return a


# ---------------------------------------------------------------------------------------- helpers
def train_cfg(a: argparse.Namespace, *, epochs: int, lr: float, select: str = "val_robust") -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=lr, weight_decay=0.0,
                       schedule="cosine", seed=a.seed, select=select, val_size=a.val_n, progress=False,
                       max_steps_per_epoch=a.max_steps)


def _autoattack():
    """The library's AutoAttack adapter when the extra is installed (pip install -e ".[autoattack]"), else None."""
    try:
        import pyautoattack  # noqa: F401 -- the official implementation, packaged
    except ImportError:
        return None
    from robustprune.attacks import get_attack_info

    return get_attack_info("autoattack").fn


AA_N: int | None = None  # set from --aa-n in main


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, masks: Any = None) -> dict[str, Any]:
    model.train(False)
    g = torch.Generator(device=x.device).manual_seed(1234)
    out: dict[str, Any] = {
        "clean": accuracy(model, x, y),
        "pgd20": robust_accuracy(model, x, y, pgd_linf, eps=eps, steps=20, generator=g),
        "aa": None,
    }
    aa_cls = _autoattack()
    if aa_cls is not None and AA_N != 0:  # --aa-n 0: no AutoAttack (AA column n/a)
        xa, ya = (x, y) if AA_N is None else (x[:AA_N], y[:AA_N])
        t0 = time.perf_counter()
        x_adv = aa_cls(model, xa, ya, eps=eps, version="standard", batch_size=250)
        with torch.no_grad():
            out["aa"] = float((model(x_adv).argmax(1) == ya).float().mean())
        out["aa_n"], out["aa_s"] = len(ya), time.perf_counter() - t0
    rep = sparsity_report(model, masks)  # zeros actually present in the Conv2d/Linear weights
    out["params_nonzero"], out["params_prunable"] = rep["nonzero"], rep["prunable"]
    return out


def pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def secs(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def teacher_model(a, splits, workdir: Path) -> tuple[nn.Module, float | None]:
    if a.teacher:
        t = load_teacher(a.teacher, a.teacher_arch, splits.spec if a.teacher_arch else None,
                         device=splits.train.x.device)
        return t, None
    torch.manual_seed(a.seed)
    model = model_for_dataset(a.arch, splits.spec).to(splits.train.x.device)
    t0 = time.perf_counter()
    fit(model, PGDAT(eps=a.eps, steps=a.pgd_steps), splits.train, splits.val,
        train_cfg(a, epochs=a.teacher_epochs, lr=a.teacher_lr), val_eps=a.eps, desc="teacher")
    dt = time.perf_counter() - t0
    save_checkpoint(workdir / "teacher.safetensors", model, meta={
        "architecture": a.arch, "dataset": splits.spec.name, "num_classes": splits.spec.num_classes,
        "input_shape": splits.spec.shape, "width": 1.0, "mean": splits.spec.mean, "std": splits.spec.std,
        "config": {"objective": "pgd-at", "eps": a.eps, "epochs": a.teacher_epochs}})
    return load_teacher(workdir / "teacher.safetensors", device=splits.train.x.device), dt


def save_model(path: Path, model: nn.Module, spec: Any, *, arch: str, width: float = 1.0, masks: Any = None,
               config: dict | None = None) -> None:
    """Checkpoint (safetensors + JSON sidecar) of a model of this script, masks included."""
    save_checkpoint(path, model, masks=masks, meta={
        "architecture": arch, "dataset": spec.name, "num_classes": spec.num_classes, "input_shape": spec.shape,
        "width": width, "mean": spec.mean, "std": spec.std, "config": config or {}})


def admm_kwargs(a) -> dict[str, Any]:
    return dict(rho=a.rho, rho_factor=a.rho_factor, rho_max=a.rho_max, update_every=a.update_every,
                update_unit=a.update_unit)


def row_for(exp: str, method: str, scheme: str, rate: str, ev: dict, times: dict | None) -> list[Any]:
    t = times or {}
    return [exp, method, scheme, rate, f"{ev['params_nonzero']}/{ev['params_prunable']}", pct(ev["clean"]),
            pct(ev["pgd20"]), pct(ev["aa"]), secs(t.get("admm")), secs(t.get("retrain")), secs(t.get("total"))]


def run_pwoa(a, teacher, splits, rate: float, admm_cfg: TrainConfig, retrain_cfg: TrainConfig, *,
             use_hbar: bool, mix_ratio: float, ce_weight: float = 0.0):
    """PwoA (``use_hbar=False``: distillation only) on a copy of ``teacher``; returns the ADMMResult."""
    return pwoa(None, teacher, train=splits.train, val=splits.val, scheme=a.pwoa_scheme, rate=rate,
                dataset="fashion-mnist", admm_cfg=admm_cfg, retrain_cfg=retrain_cfg, use_hbar=use_hbar,
                balance=not a.no_balance, mix_ratio=mix_ratio, eps=a.eps if mix_ratio > 0 else None,
                val_eps=a.eps, ce_weight=ce_weight, **admm_kwargs(a))


def lite_width(arch: str, spec: Any, rate: float) -> tuple[float, int]:
    """Width at which ``arch``'s Conv2d/Linear weight count is closest to 1/rate of width 1 (bisection)."""
    def n(w: float) -> int:
        return sparsity_report(model_for_dataset(arch, spec, width=w))["prunable"]
    target = n(1.0) / rate
    lo, hi = 1e-3, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if n(mid) < target else (lo, mid)
    w = min((lo, hi), key=lambda v: abs(n(v) - target))
    return w, n(w)


def inherit_first_channels(small: nn.Module, big: nn.Module) -> None:
    """Ye2019 Table 5: copy the leading slice of each of ``big``'s tensors into ``small`` (same architecture,
    smaller width: first output channels / units, first input channels / features)."""
    sd_big = big.state_dict()
    new = {}
    for k, v in small.state_dict().items():
        b = sd_big[k]
        new[k] = b[tuple(slice(0, d) for d in v.shape)].clone()
    small.load_state_dict(new)


def w_big_net(a, splits, workdir: Path, cache: dict) -> tuple[nn.Module, float | None]:
    """The lenet-mnist-w w=--w-big PGD-AT net of (c) (trained once per run, saved to --workdir)."""
    if "big" in cache:
        return cache["big"], cache["t_big"]
    torch.manual_seed(a.seed)
    big = model_for_dataset("lenet-mnist-w", splits.spec, width=a.w_big).to(splits.train.x.device)
    t0 = time.perf_counter()
    fit(big, PGDAT(eps=a.eps, steps=a.pgd_steps), splits.train, splits.val,
        train_cfg(a, epochs=a.teacher_epochs, lr=a.teacher_lr), val_eps=a.eps, desc=f"w{a.w_big:g}")
    t_big = time.perf_counter() - t0
    save_model(workdir / f"lenet-mnist-w{a.w_big:g}-at.safetensors", big, splits.spec, arch="lenet-mnist-w",
               width=a.w_big, config={"objective": "pgd-at", "eps": a.eps, "epochs": a.teacher_epochs})
    cache["big"], cache["t_big"] = big, t_big
    return big, t_big


def run_ce(a, teacher, splits, rate: float, admm_cfg: TrainConfig, retrain_cfg: TrainConfig, objective: Any):
    """ADMM + masked retraining of a copy of ``teacher`` with ``objective`` in both phases; (model, result)."""
    model = copy.deepcopy(teacher)
    for p_ in model.parameters():
        p_.requires_grad_(True)
    res = admm_prune(model, objective=objective, train=splits.train, val=splits.val, admm_cfg=admm_cfg,
                     retrain_cfg=retrain_cfg, scheme=a.pwoa_scheme, rate=rate, val_eps=a.eps, **admm_kwargs(a))
    return model, res


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    global AA_N
    a = parse_args(argv)
    AA_N = a.aa_n
    out = Path(a.out)
    workdir = Path(a.workdir) if a.workdir else out.with_suffix("")
    workdir.mkdir(parents=True, exist_ok=True)
    seed_everything(a.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    splits = load_splits("fashion-mnist", data_dir=a.data_dir, val_size=a.val_size, seed=a.seed,
                         device=a.device or "cpu", train_limit=a.train_limit, test_limit=a.test_n)
    xt, yt = splits.test.x, splits.test.y
    log(f"train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}; eps {a.eps}; "
        f"AutoAttack {'available' if _autoattack() else 'not installed (AA column n/a)'}")
    headers = ["exp", "method", "scheme", "rate", "nonzero/prunable", "clean %", "PGD-20 %", "AA %",
               "ADMM s", "retrain s", "total s"]
    rows: list[list[Any]] = []
    raw: dict[str, Any] = {"args": vars(a)}
    admm_cfg = train_cfg(a, epochs=a.admm_epochs, lr=a.admm_lr, select="last")
    retrain_cfg = train_cfg(a, epochs=a.retrain_epochs, lr=a.retrain_lr)
    times: dict[str, dict] = {}
    extra: list[str] = []  # tables of parts f-i
    models: dict[str, Any] = {}  # models kept for later parts of this run: name -> (model, masks, eval)
    cache: dict[str, Any] = {}
    t_start = time.perf_counter()

    def aa_note() -> str:
        return ("AA skipped (--aa-n 0)" if a.aa_n == 0 else
                f"AA on the first {a.aa_n} test images" if a.aa_n else "AA on all test images")

    def write_out(final: bool = False) -> list[str]:
        text = [f"# AdvPrune (Ye2019) vs PwoA (Jian2022) on Fashion-MNIST (eps {a.eps:g}, "
                f"{len(splits.train)} train / {len(xt)} test images)", "",
                "Accuracies on the first test images; PGD-20 L∞ with α = ε/4; AA = AutoAttack standard "
                f"({aa_note()}; n/a where it did not run). nonzero/prunable: non-zero Conv2d/Linear weights. "
                "Times: wall seconds per phase, including each epoch's validation (PGD-10 on --val-n points). "
                f"Settings: `{' '.join(sys.argv[1:]) or '(defaults)'}`.", "", table(headers, rows), "", *extra,
                f"Wall time of this run{'' if final else ' so far'}: {time.perf_counter() - t_start:.0f} s.", ""]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(text))
        (workdir / "results.json").write_text(json.dumps(raw, indent=2, default=str))
        return text

    teacher = None
    if set(a.parts) & set("abdefgh"):
        teacher, t_time = teacher_model(a, splits, workdir)
        ev = evaluate(teacher, xt, yt, a.eps)
        models["teacher"] = (teacher, None, ev)
        raw["teacher"] = {"eval": ev}
        rows.append(row_for("teacher", f"teacher checkpoint {Path(a.teacher).name}" if a.teacher else
                            f"PGD-{a.pgd_steps} AT ({a.arch})", "-", "1", ev,
                            {"total": t_time} if t_time else None))
        log(f"teacher: clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])}")

    if "a" in a.parts or "d" in a.parts:
        for rate in a.pwoa_rates if "a" in a.parts else [a.advprune_rate]:
            res = run_pwoa(a, teacher, splits, rate, admm_cfg, retrain_cfg, use_hbar=not a.no_hbar,
                           mix_ratio=a.mix_ratio)
            ev = evaluate(res.extras["student"], xt, yt, a.eps, res.masks)
            rows.append(row_for("a", "PwoA" + ("" if not a.no_hbar else " (no HBaR)") +
                                (f" mix {a.mix_ratio:g}" if a.mix_ratio else ""), a.pwoa_scheme, f"{rate:g}", ev, res.times))
            times[f"pwoa-{rate:g}"] = res.times
            models[f"pwoa-{rate:g}"] = (res.extras["student"], res.masks, ev, res.times)
            raw[f"pwoa-{rate:g}"] = {"eval": ev, "alpha": res.extras["alpha"], **res.to_dict()}
            log(f"PwoA {rate:g}x: clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])} time {res.times['total']:.1f}s "
                f"alpha {res.extras['alpha']:.3g} lx {res.extras['lambda_x']} ly {res.extras['lambda_y']}")
            if "a" in a.parts:
                model, res_ce = run_ce(a, teacher, splits, rate, admm_cfg, retrain_cfg, Natural())
                ev = evaluate(model, xt, yt, a.eps, res_ce.masks)
                rows.append(row_for("a", "ADMM + CE (no adversarial examples)", a.pwoa_scheme, f"{rate:g}", ev, res_ce.times))
                raw[f"ce-{rate:g}"] = {"eval": ev, **res_ce.to_dict()}
                log(f"CE {rate:g}x: clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])}")
            write_out()

    if "b" in a.parts or "d" in a.parts:
        schemes = a.schemes if "b" in a.parts else [a.pwoa_scheme]
        for scheme in schemes:
            model = copy.deepcopy(teacher)
            for p_ in model.parameters():
                p_.requires_grad_(True)
            res = advprune(model, eps=a.eps, steps=a.pgd_steps, train=splits.train, val=splits.val, scheme=scheme,
                           rate=a.advprune_rate, admm_cfg=admm_cfg, retrain_cfg=retrain_cfg, **admm_kwargs(a))
            ev = evaluate(model, xt, yt, a.eps, res.masks)
            rows.append(row_for("b", f"AdvPrune (PGD-{a.pgd_steps})", scheme, f"{a.advprune_rate:g}", ev, res.times))
            save_model(workdir / f"advprune-{scheme}-{a.advprune_rate:g}x.safetensors", model, splits.spec,
                       arch=a.arch, masks=res.masks, config={"method": "advprune", "scheme": scheme,
                                                             "rate": a.advprune_rate, "eps": a.eps})
            times[f"advprune-{scheme}"] = res.times
            raw[f"advprune-{scheme}"] = {"eval": ev, **res.to_dict()}
            models[f"advprune-{scheme}"] = (model, res.masks, ev)
            write_out()
            log(f"AdvPrune {scheme} {a.advprune_rate:g}x: clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])} "
                f"time {res.times['total']:.1f}s")

    if "c" in a.parts:
        spec = splits.spec
        big0, t_big = w_big_net(a, splits, workdir, cache)
        big = copy.deepcopy(big0)
        ev = evaluate(big, xt, yt, a.eps)
        rows.append(row_for("c", f"lenet-mnist-w w={a.w_big:g} (PGD-AT)", "-", "1", ev, {"total": t_big}))
        small_ref = model_for_dataset("lenet-mnist-w", spec, width=a.w_small)
        group = "unstructured" if a.c_scheme == "irregular" else a.c_scheme
        big_layers, small_layers = prunable_layers(big, group), prunable_layers(small_ref, group)
        keep = {n: min(1.0, small_layers[n].weight.numel() / m.weight.numel()) for n, m in big_layers.items()}
        res = advprune(big, eps=a.eps, steps=a.pgd_steps, train=splits.train, val=splits.val, scheme=a.c_scheme,
                       keep=keep, admm_cfg=admm_cfg, retrain_cfg=retrain_cfg, **admm_kwargs(a))
        ev = evaluate(big, xt, yt, a.eps, res.masks)
        rows.append(row_for("c", f"AdvPrune w={a.w_big:g} -> size of w={a.w_small:g}", a.c_scheme,
                            "per layer " + ",".join(f"{1 / k:.0f}" for k in keep.values()), ev, res.times))
        raw["c-pruned"] = {"eval": ev, "keep": keep, **res.to_dict()}
        torch.manual_seed(a.seed)
        small = small_ref.to(xt.device)
        scratch_epochs = a.teacher_epochs + a.admm_epochs + a.retrain_epochs  # same epoch budget
        t0 = time.perf_counter()
        fit(small, PGDAT(eps=a.eps, steps=a.pgd_steps), splits.train, splits.val,
            train_cfg(a, epochs=scratch_epochs, lr=a.teacher_lr), val_eps=a.eps, desc=f"w{a.w_small:g}")
        ev = evaluate(small, xt, yt, a.eps)
        rows.append(row_for("c", f"lenet-mnist-w w={a.w_small:g} from scratch ({scratch_epochs} ep)", "-", "1", ev,
                            {"total": time.perf_counter() - t0}))
        raw["c-scratch"] = {"eval": ev}
        log("(c) pruned vs scratch done")
        write_out()

    if "e" in a.parts:
        rate = a.advprune_rate
        t9 = table_ix("fashion-mnist")
        for name in ("CE", "CE+HBaR", "KD", "KD+HBaR"):
            if name.startswith("CE"):
                obj: Any = Natural()
                if name == "CE+HBaR":
                    obj = HBaR(obj, lambda_x=t9["lambda_x"], lambda_y=t9["lambda_y"])
                model, res = run_ce(a, teacher, splits, rate, admm_cfg, retrain_cfg, obj)
            else:
                res = run_pwoa(a, teacher, splits, rate, admm_cfg, retrain_cfg, use_hbar=name == "KD+HBaR",
                               mix_ratio=0.0)
                model = res.extras["student"]
            ev = evaluate(model, xt, yt, a.eps, res.masks)
            rows.append(row_for("e", f"Table II {name}", a.pwoa_scheme, f"{rate:g}", ev, res.times))
            raw[f"e-{name}"] = {"eval": ev, **res.to_dict()}
            log(f"(e) {name} {rate:g}x: clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])} AA {pct(ev['aa'])} "
                f"time {res.times['total']:.1f}s")
            write_out()

    if "f" in a.parts:  # Jian2022 Table V
        rate = a.advprune_rate
        f_rows = []
        for cw in a.ce_weights:
            key = f"pwoa-{rate:g}"
            reused = cw == 0 and key in models and not a.mix_ratio
            if reused:  # identical run: part (a) at this rate
                _, _, ev, tms = models[key]
                alpha = raw[key].get("alpha")
            else:
                res = run_pwoa(a, teacher, splits, rate, admm_cfg, retrain_cfg, use_hbar=not a.no_hbar,
                               mix_ratio=0.0, ce_weight=cw)
                ev, tms, alpha = evaluate(res.extras["student"], xt, yt, a.eps, res.masks), res.times, res.extras["alpha"]
                raw[f"f-ce{cw:g}"] = {"eval": ev, "alpha": alpha, **res.to_dict()}
            f_rows.append([f"{cw:g}", "yes" if cw > 0 else "no", pct(ev["clean"]), pct(ev["pgd20"]), pct(ev["aa"]),
                           "n/a" if alpha is None else f"{alpha:.3g}", secs(tms.get("total")) + (" (= part a)" if reused else "")])
            log(f"(f) ce_weight {cw:g}: clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])} AA {pct(ev['aa'])}")
            extra_f = [f"## (f) Jian2022 Table V: PwoA (KD{'' if a.no_hbar else ' + HBaR'}) + ce_weight * CE at "
                       f"{rate:g}x {a.pwoa_scheme}", "",
                       "alpha: the distillation weight after App. B balancing (ce_weight is not rebalanced).", "",
                       table(["ce_weight", "CE", "clean %", "PGD-20 %", "AA %", "alpha", "total s"], f_rows), ""]
            write_out_extra = extra + extra_f
            extra_backup = list(extra)
            extra[:] = write_out_extra
            write_out()
            extra[:] = extra_backup
        extra += extra_f

    if "g" in a.parts:  # Jian2022 Fig. 2
        g_rows = []
        lite_epochs = a.admm_epochs + a.retrain_epochs
        full_n = sparsity_report(teacher)["prunable"]
        for rate in a.lite_rates:
            key = f"pwoa-{rate:g}"
            if key in models and not a.mix_ratio:
                pm, _, ev, tms = models[key]
                note = " (= part a)"
            else:
                res = run_pwoa(a, teacher, splits, rate, admm_cfg, retrain_cfg, use_hbar=not a.no_hbar, mix_ratio=0.0)
                ev, tms, note = evaluate(res.extras["student"], xt, yt, a.eps, res.masks), res.times, ""
                raw[f"g-pwoa-{rate:g}"] = {"eval": ev, **res.to_dict()}
            g_rows.append([f"{rate:g}", "PwoA (pruned from the teacher)", "1", f"{ev['params_nonzero']}",
                           pct(ev["clean"]), pct(ev["pgd20"]), pct(ev["aa"]), secs(tms.get("total")) + note])
            log(f"(g) PwoA {rate:g}x: clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])} AA {pct(ev['aa'])}")
            w, n_w = lite_width(a.arch, splits.spec, rate)
            torch.manual_seed(a.seed)
            lite = model_for_dataset(a.arch, splits.spec, width=w).to(xt.device)
            t0 = time.perf_counter()
            fit(lite, PGDAT(eps=a.eps, steps=a.pgd_steps), splits.train, splits.val,
                train_cfg(a, epochs=lite_epochs, lr=a.teacher_lr), val_eps=a.eps, desc=f"lite{rate:g}")
            t_lite = time.perf_counter() - t0
            ev = evaluate(lite, xt, yt, a.eps)
            raw[f"g-lite-{rate:g}"] = {"eval": ev, "width": w, "time": t_lite}
            g_rows.append([f"{rate:g}", f"Lite {a.arch} (PGD-{a.pgd_steps} AT from scratch, {lite_epochs} ep)",
                           f"{w:.3f}", f"{ev['params_nonzero']}", pct(ev["clean"]), pct(ev["pgd20"]), pct(ev["aa"]),
                           secs(t_lite)])
            log(f"(g) Lite {rate:g}x (w {w:.3f}, {n_w} weights): clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])} "
                f"AA {pct(ev['aa'])} time {t_lite:.1f}s")
            extra_g = [f"## (g) Jian2022 Fig. 2: PwoA-pruned {a.arch} vs Lite {a.arch} trained from scratch", "",
                       f"Full model: {full_n} Conv2d/Linear weights. Lite: width chosen so its weight count is "
                       f"closest to full/rate; PGD-{a.pgd_steps} AT (eps {a.eps:g}, lr {a.teacher_lr:g}, Adam, cosine) "
                       f"for {lite_epochs} epochs = ADMM + retraining epochs of PwoA, same training images, "
                       "checkpoint selected on validation PGD accuracy.", "",
                       table(["rate", "model", "width", "non-zero weights", "clean %", "PGD-20 %", "AA %", "train s"],
                             g_rows), ""]
            extra_backup = list(extra)
            extra[:] = extra + extra_g
            write_out()
            extra[:] = extra_backup
        extra += extra_g

    if "i" in a.parts:  # Ye2019 Table 5
        big, t_big = w_big_net(a, splits, workdir, cache)
        if "c" not in a.parts:
            ev = evaluate(big, xt, yt, a.eps)
            rows.append(row_for("i", f"lenet-mnist-w w={a.w_big:g} (PGD-AT)", "-", "1", ev, {"total": t_big}))
        small = model_for_dataset("lenet-mnist-w", splits.spec, width=a.w_small).to(xt.device)
        inherit_first_channels(small, big)
        ev0 = evaluate(small, xt, yt, a.eps)
        rows.append(row_for("i", f"w={a.w_small:g} inherited from w={a.w_big:g} (first channels), before training",
                            "-", "1", ev0, None))
        scratch_epochs = a.teacher_epochs + a.admm_epochs + a.retrain_epochs
        torch.manual_seed(a.seed)
        t0 = time.perf_counter()
        fit(small, PGDAT(eps=a.eps, steps=a.pgd_steps), splits.train, splits.val,
            train_cfg(a, epochs=scratch_epochs, lr=a.teacher_lr), val_eps=a.eps, desc=f"inherit{a.w_small:g}")
        ev = evaluate(small, xt, yt, a.eps)
        rows.append(row_for("i", f"w={a.w_small:g} inherited from w={a.w_big:g}, PGD-AT ({scratch_epochs} ep)", "-",
                            "1", ev, {"total": time.perf_counter() - t0}))
        raw["i-inherited"] = {"eval": ev, "before": ev0}
        log(f"(i) inherited: clean {pct(ev['clean'])} PGD-20 {pct(ev['pgd20'])}")
        write_out()

    if "h" in a.parts:  # Ye2019 Tables 7-8
        from robustprune.attacks import get_attack_info
        from robustprune.checkpoint import load_checkpoint
        from robustprune.evaluation import transfer_attack

        cw_fn = get_attack_info("cw-linf").fn
        pruned: dict[str, nn.Module] = {}
        for scheme in a.schemes:
            key = f"advprune-{scheme}"
            if key in models:
                pruned[f"AdvPrune {scheme} {a.advprune_rate:g}x"] = models[key][0]
            else:
                ck = workdir / f"{key}-{a.advprune_rate:g}x.safetensors"
                if ck.exists():
                    m_, _, _ = load_checkpoint(ck, device=xt.device)
                    pruned[f"AdvPrune {scheme} {a.advprune_rate:g}x"] = m_
                else:
                    log(f"(h) no {ck}; run part b first")
        h7 = []
        all_models = {"teacher (unpruned)": teacher, **pruned}
        for name, m_ in all_models.items():
            m_.train(False)
            g = torch.Generator(device=xt.device).manual_seed(1234)
            clean = accuracy(m_, xt, yt)
            pgd = robust_accuracy(m_, xt, yt, pgd_linf, eps=a.eps, steps=20, generator=g)
            g = torch.Generator(device=xt.device).manual_seed(1234)
            t0 = time.perf_counter()
            cw = robust_accuracy(m_, xt, yt, cw_fn, eps=a.eps, steps=a.cw_steps, generator=g)
            h7.append([name, f"{sparsity_report(m_)['nonzero']}", pct(clean), pct(pgd), pct(cw),
                       secs(time.perf_counter() - t0)])
            raw[f"h7-{name}"] = {"clean": clean, "pgd20": pgd, "cw": cw}
            log(f"(h) {name}: clean {pct(clean)} PGD-20 {pct(pgd)} CW {pct(cw)}")
        sources = dict(all_models)
        big_ck = workdir / f"lenet-mnist-w{a.w_big:g}-at.safetensors"
        if "big" in cache:
            sources[f"lenet-mnist-w w={a.w_big:g} PGD-AT"] = cache["big"]
        elif big_ck.exists():
            sources[f"lenet-mnist-w w={a.w_big:g} PGD-AT"] = load_checkpoint(big_ck, device=xt.device)[0]
        targets = list(all_models)
        h8 = []
        for sname, src in sources.items():
            row = [sname]
            for tname in targets:
                g = torch.Generator(device=xt.device).manual_seed(1234)
                acc = transfer_attack(src, all_models[tname], xt, yt, pgd_linf, eps=a.eps, steps=20, generator=g)
                row.append(pct(acc))
                raw[f"h8-{sname}->{tname}"] = acc
            h8.append(row)
            log(f"(h) transfer from {sname}: {row[1:]}")
        extra += [f"## (h) Ye2019 Table 7: C&W-L∞ (eps {a.eps:g}, {a.cw_steps} steps) next to PGD-20", "",
                  table(["model", "non-zero weights", "clean %", "PGD-20 %", f"C&W-L∞ ({a.cw_steps} st) %", "C&W s"],
                        h7), "",
                  "## (h) Ye2019 Table 8: PGD-20 transfer, rows = source, columns = target (robust accuracy %, a "
                  "point counts when the target is right on it clean and on the transferred example; the source "
                  "attacks only points it classifies correctly; diagonal = white-box PGD-20)", "",
                  table(["source \\ target", *targets], h8), ""]
        write_out()

    if "d" in a.parts:
        d_rows = []
        p_key = f"pwoa-{a.advprune_rate:g}"
        adv_key = f"advprune-{a.pwoa_scheme}"
        if p_key in times and adv_key in times:
            tp, ta = times[p_key], times[adv_key]
            d_rows.append(["PwoA", secs(tp["admm"]), secs(tp["retrain"]), secs(tp["total"]), "1.00"])
            d_rows.append([f"AdvPrune (PGD-{a.pgd_steps})", secs(ta["admm"]), secs(ta["retrain"]), secs(ta["total"]),
                           f"{ta['total'] / max(tp['total'], 1e-9):.2f}"])
            extra += [f"## (d) training time at {a.advprune_rate:g}x, {a.pwoa_scheme}", "",
                     table(["method", "ADMM s", "retrain s", "total s", "x PwoA"], d_rows), ""]
        else:
            extra += ["(d) needs a PwoA run at --advprune-rate; add it to --pwoa-rates.", ""]
    text = write_out(final=True)
    print("\n".join(text))
    log(f"wrote {out} and {workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
