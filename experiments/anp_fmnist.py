#!/usr/bin/env python3
"""ANP (Madaan2020) on Fashion-MNIST: Table 1 / Appendix-1 with LeNet-5-Caffe on subsets.

BP, ANP and ANP-VS are the registered methods ``bp-bbd``, ``anp-bbd``, ``anp-vs-bbd`` (and ``*-vib``), HYDRA
(Sehwag2020) is ``hydra`` (``robustprune list methods``, ``robustprune.methods.get_method``); this script calls
the functions behind them (``robustprune.methods.bayesian_prune``, ``hydra``) directly, with its own budgets.

Methods (every pruning / fine-tuning phase starts from the same standard-trained network, as Madaan2020 App. C:
"we pretrain all the networks using the standard-training procedure followed by network sparsification"):

* Standard -- natural training;
* BP -- Beta-Bernoulli dropout masks on clean data (gamma/N KL);
* AT -- adversarial training on ``beta CE(x) + (1 - beta) CE(x_adv)`` (the ANP reference code's AT loss,
  beta = 1/3; ``--at-beta 0`` gives Madry's PGD-AT);
* AT-VS -- AT + lambda * vulnerability (Eq. 4);
* ANP -- masks on the adversarial loss, weights on the same clean/adversarial mix (Eq. 6);
* ANP-VS -- ANP + lambda * vulnerability on the weights (ANP and ANP-VS use their own KL scale ``--anp-gamma``,
  default 2: at BP's gamma 4 the adversarially trained masks prune every unit within this short budget, see the
  option's help; ANP-VS's lambda is ``--anp-lam``, default 0.1, for the same reason);
* HYDRA -- from the AT network: score optimisation (weights frozen, PGD-AT), then fine-tuning; per-layer keep
  fraction chosen so that HYDRA keeps as many prunable weights as the slim ANP network (``--hydra-keep``
  overrides).

Evaluation on the first ``--test-n`` test images: clean accuracy; white-box PGD (L-inf ``--eps``,
``--eval-steps`` steps of eps/4, random start); black-box transfer PGD crafted on a separately trained source
(a standard network for Standard/BP, an AT network for the adversarially trained ones, as Madaan2020 Sec. 4.1;
``--bb-source at`` reuses the AT model instead of training a second one); the network vulnerability (Eq. 2) on
the white-box and on the black-box examples; xFLOPs, run-time memory (hidden feature maps, % of Standard) and
sparsity (units pruned, and weights pruned) of the *slim* networks -- the gated networks with their pruned units
removed physically (their logits are checked equal to the gated networks'); and the measured latency of the
slim ANP network against the dense one. Checkpoints are selected on the validation split, never on test.

    python experiments/anp_fmnist.py --out runs/anp_fmnist.md              # ~10-15 min on 2 CPU cores
    python experiments/anp_fmnist.py --tiny --out /tmp/anp_fmnist_tiny.md  # smoke test, ~1-2 min
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
from robustprune.data import load_splits
from robustprune.methods import bayesian_prune, hydra
from robustprune.metrics import compare_latency, efficiency_report, latent_vulnerability
from robustprune.metrics.accuracy import eval_mode
from robustprune.models import model_for_dataset
from robustprune.objectives import ATVS, PGDAT, Mix, Natural
from robustprune.sparsity import prunable_layers
from robustprune.train import TrainConfig, fit
from robustprune.utils import make_generator, seed_everything

ORDER = ["Standard", "BP", "AT", "AT-VS", "ANP", "ANP-VS", "HYDRA"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="Markdown file for the results")
    p.add_argument("--json", default=None, help="also write every number as JSON (default: --out with .json)")
    p.add_argument("--figures", default=None, help="folder for Fig. 4 (histograms) and Fig. 5 (loss surfaces)")
    p.add_argument("--sweep-gammas", default="",
                   help="comma-separated KL scales for the Fig. 3 sparsity sweep of BP and ANP (with --figures; "
                        "each gamma trains two more networks); empty: no sweep")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="lenet5-caffe")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--train-limit", type=int, default=5000, help="training images (after the validation split)")
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--val-n", type=int, default=500, help="validation points used for selection each epoch")
    p.add_argument("--test-n", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.1, help="L-inf radius (pixel units), training and evaluation")
    p.add_argument("--train-steps", type=int, default=5, help="PGD steps for training examples (Madaan2020: 10)")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="Madaan2020 App. C: 64")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of standard / AT / AT-VS / HYDRA")
    p.add_argument("--prune-lr", type=float, default=2e-3,
                   help="Adam learning rate of the weights in BP / ANP / ANP-VS; the masks get 10x (App. C)")
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimiser steps per epoch (quick runs)")
    p.add_argument("--std-epochs", type=int, default=3)
    p.add_argument("--at-epochs", type=int, default=2, help="AT, AT-VS and the AT black-box source (from Standard)")
    p.add_argument("--prune-epochs", type=int, default=3, help="BP, ANP, ANP-VS")
    p.add_argument("--hydra-prune-epochs", type=int, default=1)
    p.add_argument("--hydra-ft-epochs", type=int, default=1)
    p.add_argument("--hydra-keep", type=float, default=None, help="per-layer keep fraction (default: match ANP)")
    p.add_argument("--gamma", type=float, default=4.0, help="KL scale of BP (App. C: 1, 4, 8, 10, 12 for LeNet-5)")
    p.add_argument("--anp-gamma", type=float, default=2.0,
                   help="KL scale of ANP / ANP-VS. At --gamma 4 they collapse in this short budget (every unit "
                        "pruned): the gated network starts nearly dead (a_uc = -1: E[pi] = 0.24 per layer) and the "
                        "masks, seeing only the adversarial loss, get no signal to revive it before the KL shuts the "
                        "units; a 234-step (3-epoch) calibration gave collapse at gamma >= 3, 42%% unit sparsity at "
                        "2, 15%% at 1")
    p.add_argument("--anp-lam", type=float, default=0.1,
                   help="vulnerability weight of ANP-VS (--lam is AT-VS's). At 1.0, from the nearly dead gated start, "
                        "the weights' V term (whose trivial minimiser is all-zero features) outweighs the vanishing "
                        "CE gradient and kills the network within 40 steps even at gamma 2")
    p.add_argument("--mask-lr-factor", type=float, default=10.0, help="mask learning rate / weight learning rate")
    p.add_argument("--beta", type=float, default=1 / 3, help="clean weight of the weights' loss (reference: 1/3)")
    p.add_argument("--at-beta", type=float, default=None, help="clean weight of AT / AT-VS (default: --beta)")
    p.add_argument("--lam", type=float, default=1.0, help="vulnerability suppression weight of AT-VS")
    p.add_argument("--a-uc-init", type=float, default=-1.0, help="initial a_uc of the gates (reference: -1)")
    p.add_argument("--vib", action="store_true", help="also BP (VIB) and ANP (VIB) rows (Madaan2020 App. B)")
    p.add_argument("--vib-gamma", type=float, default=0.005,
                   help="KL scale of the VIB rows (x 1/N; 0.005 at N = 5000 is the VIBNet code's factor 1e-6)")
    p.add_argument("--bb-source", default="separate", choices=["separate", "at"])
    p.add_argument("--latency-batch", type=int, default=256)
    p.add_argument("--latency-rounds", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny data and one short epoch everywhere")
    a = p.parse_args(argv)
    if a.tiny:
        a.train_limit, a.val_size, a.val_n, a.test_n = 256, 128, 64, 64
        a.max_steps, a.eval_steps, a.train_steps = 4, 3, 2
        a.std_epochs = a.at_epochs = a.prune_epochs = a.hydra_prune_epochs = a.hydra_ft_epochs = 1
        a.latency_batch, a.latency_rounds = 64, 1
    if a.at_beta is None:
        a.at_beta = a.beta
    return a


def cfg_for(a: argparse.Namespace, epochs: int, seed: int, select: str = "val_robust") -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=a.batch_size, optimizer="adam", lr=a.lr, weight_decay=0.0,
                       schedule="cosine", seed=seed, select=select, val_size=a.val_n, val_attack_steps=a.train_steps,
                       max_steps_per_epoch=a.max_steps, progress=False)


def prune_cfg(a: argparse.Namespace, seed: int) -> TrainConfig:
    """BP / ANP / ANP-VS: constant learning rate and the last epoch (as the ANP code, which keeps its final model;
    selecting on validation robustness would favour the least pruned epoch)."""
    return cfg_for(a, a.prune_epochs, seed, "last").model_copy(update={"lr": a.prune_lr, "schedule": "constant"})


def at_objective(a: argparse.Namespace):
    pgd = PGDAT(eps=a.eps, steps=a.train_steps)
    return pgd if a.at_beta == 0 else Mix(inner=pgd, beta=a.at_beta)


# ----------------------------------------------------------------------------------------------- evaluation
def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, a: argparse.Namespace, seed: int) -> torch.Tensor:
    g = make_generator(seed, x.device)
    out = []
    with eval_mode(model):
        for i in range(0, len(x), 500):
            out.append(pgd_linf(model, x[i:i + 500], y[i:i + 500], eps=a.eps, steps=a.eval_steps, generator=g))
    return torch.cat(out)


@torch.no_grad()
def acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with eval_mode(model):
        return float(torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).eq(y).float().mean())


def evaluate(model: nn.Module, source: nn.Module, x: torch.Tensor, y: torch.Tensor, a: argparse.Namespace,
             bb_cache: dict[int, torch.Tensor]) -> dict[str, Any]:
    x_wb = craft(model, x, y, a, a.seed + 101)
    if id(source) not in bb_cache:
        bb_cache[id(source)] = craft(source, x, y, a, a.seed + 202)
    x_bb = bb_cache[id(source)]
    return {
        "clean": acc(model, x, y),
        "white_box": acc(model, x_wb, y),
        "black_box": acc(model, x_bb, y),
        "vul_white": latent_vulnerability(model, x, x_wb).network,
        "vul_black": latent_vulnerability(model, x, x_bb).network,
    }


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    t_start = time.perf_counter()
    seed_everything(a.seed)
    splits = load_splits("fashion-mnist", data_dir=a.data_dir, val_size=a.val_size, seed=a.seed, device=a.device,
                         train_limit=a.train_limit, test_limit=a.test_n)
    train, val, spec = splits.train, splits.val, splits.spec
    x_test, y_test = splits.test.x[:a.test_n], splits.test.y[:a.test_n]
    shape = spec.shape
    order = ORDER + (["BP (VIB)", "ANP (VIB)"] if a.vib else [])
    models: dict[str, nn.Module] = {}
    info: dict[str, dict[str, Any]] = {name: {} for name in order}
    log = lambda msg: print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)  # noqa: E731

    def new_model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return model_for_dataset(a.arch, spec, width=a.width).to(train.x.device)

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        info[name]["train_s"] = info[name].get("train_s", 0.0) + time.perf_counter() - t0
        return out

    # Standard + black-box sources --------------------------------------------------------------------
    std = new_model(a.seed)
    timed("Standard", lambda: fit(std, Natural(), train, val, cfg_for(a, a.std_epochs, a.seed, "val_clean"),
                                  desc="standard"))
    models["Standard"] = std
    log(f"Standard trained ({info['Standard']['train_s']:.0f}s)")
    src_std = new_model(a.seed + 1)
    fit(src_std, Natural(), train, val, cfg_for(a, a.std_epochs, a.seed + 1, "val_clean"), desc="source-std")

    # BP / ANP / ANP-VS (from the standard network) ----------------------------------------------------------
    gate_kw = {"a_uc_init": a.a_uc_init}
    bayes: dict[str, Any] = {}
    runs = [("BP", "bp", "bbd"), ("ANP", "anp", "bbd"), ("ANP-VS", "anp-vs", "bbd")]
    if a.vib:
        runs += [("BP (VIB)", "bp", "vib"), ("ANP (VIB)", "anp", "vib")]
    for name, method, gate in runs:
        m = copy.deepcopy(std)
        res = timed(name, lambda: bayesian_prune(
            m, method, train=train, val=val, cfg=prune_cfg(a, a.seed + 3), eps=a.eps,
            gamma=(a.gamma if method == "bp" else a.anp_gamma) if gate == "bbd" else a.vib_gamma, beta=a.beta,
            lam=a.anp_lam if method == "anp-vs" else None, steps=a.train_steps, gate=gate,
            gate_kwargs=gate_kw if gate == "bbd" else None, mask_lr_factor=a.mask_lr_factor))
        bayes[name] = res
        models[name] = m
        log(f"{name}: units {res.units_string()} of {res.units_string(dense=True)} ({info[name]['train_s']:.0f}s)")

    # AT / AT-VS (from the standard network) and the AT source ------------------------------------------
    at = copy.deepcopy(std)
    timed("AT", lambda: fit(at, at_objective(a), train, val, cfg_for(a, a.at_epochs, a.seed + 4), val_eps=a.eps,
                            desc="at"))
    models["AT"] = at
    log(f"AT trained ({info['AT']['train_s']:.0f}s)")
    atvs = copy.deepcopy(std)
    obj = ATVS(eps=a.eps, steps=a.train_steps, lam=a.lam, beta=a.at_beta)
    timed("AT-VS", lambda: fit(atvs, obj, train, val, cfg_for(a, a.at_epochs, a.seed + 4), val_eps=a.eps,
                               desc="at-vs"))
    models["AT-VS"] = atvs
    log(f"AT-VS trained ({info['AT-VS']['train_s']:.0f}s)")
    if a.bb_source == "separate":
        src_at = copy.deepcopy(src_std)
        fit(src_at, at_objective(a), train, val, cfg_for(a, a.at_epochs, a.seed + 5), val_eps=a.eps, desc="source-at")
    else:
        src_at = at

    # Slim networks and compression ------------------------------------------------------------------------
    slims = {}
    for name, res in bayes.items():
        sl = res.slim(example=x_test[:2])
        slims[name] = sl
        eff = efficiency_report(std, sl.model, shape)
        info[name].update(eff, unit_sparsity=sl.unit_sparsity(), units=sl.units_string(),
                          dense_units=sl.units_string(dense=True), slim_check=sl.max_abs_diff)
    for name in ("Standard", "AT", "AT-VS"):
        info[name].update(efficiency_report(std, models[name], shape), unit_sparsity=0.0)

    # HYDRA at a similar sparsity (prunable weights kept = the slim ANP network's) -----------------------
    dense_prunable = sum(mm.weight.numel() for mm in prunable_layers(std).values())
    anp_prunable = sum(mm.weight.numel() for mm in prunable_layers(slims["ANP"].model).values())
    keep = a.hydra_keep if a.hydra_keep is not None else min(1.0, max(anp_prunable / dense_prunable, 0.005))
    hy = copy.deepcopy(at)
    hres = timed("HYDRA", lambda: hydra(hy, train=train, val=val, eps=a.eps, keep=keep, steps=a.train_steps,
                                        prune_cfg=cfg_for(a, a.hydra_prune_epochs, a.seed + 6).model_copy(
                                            update={"lr": 10 * a.lr}),
                                        finetune_cfg=cfg_for(a, a.hydra_ft_epochs, a.seed + 7), loss="pgd-at"))
    info["HYDRA"]["train_s"] += info["AT"]["train_s"]  # HYDRA starts from the AT network
    models["HYDRA"] = hy
    info["HYDRA"].update(efficiency_report(std, hy, shape), unit_sparsity=0.0, hydra_keep=keep,
                         hydra_topk_max=max(hres.topk_calls.values()), hydra_score_steps=hres.score_steps)
    log(f"HYDRA keep={keep:.4f} ({info['HYDRA']['train_s']:.0f}s incl. AT)")

    # Robustness ---------------------------------------------------------------------------------------
    bb_cache: dict[int, torch.Tensor] = {}
    for name in order:
        natural = name in ("Standard", "BP", "BP (VIB)")
        source = src_std if natural else src_at
        info[name].update(evaluate(models[name], source, x_test, y_test, a, bb_cache))
        info[name]["bb_source"] = "standard" if natural else "adversarial"
        log(f"{name}: " + ", ".join(f"{k}={info[name][k]:.3f}" for k in ("clean", "white_box", "black_box",
                                                                          "vul_white")))
    # the slim ANP network answers like the gated one
    sl_anp = slims["ANP"].model
    info["ANP"]["slim_clean"] = acc(sl_anp, x_test, y_test)

    # Latency of the slim ANP network vs the dense one ------------------------------------------------------
    lat = compare_latency(std, sl_anp, shape, batch_size=a.latency_batch, rounds=a.latency_rounds)
    log(f"latency: dense {lat['dense_ms']:.2f} ms, slim ANP {lat['slim_ms']:.2f} ms, x{lat['speedup']:.2f}")

    sweep: dict[str, list] = {}
    if a.figures:
        make_figures(a, models, x_test, y_test)
        if a.sweep_gammas.strip():
            from robustprune.analysis import gamma_sweep, plot_sweep

            gammas = [float(g) for g in a.sweep_gammas.split(",") if g.strip()]
            for name, method, source in (("BP", "bp", src_std), ("ANP", "anp", src_at)):
                def ev(model, _res, source=source):
                    r = evaluate(model, source, x_test, y_test, a, bb_cache)
                    return {k: r[k] for k in ("clean", "white_box", "black_box")}

                sweep[name] = gamma_sweep(lambda: copy.deepcopy(std), gammas, method=method, evaluate=ev, train=train,
                                          val=val, cfg=prune_cfg(a, a.seed + 3), eps=a.eps, beta=a.beta,
                                          steps=a.train_steps, gate_kwargs=gate_kw)
                log(f"sweep {name}: " + ", ".join(f"gamma {p.gamma:g} -> {100 * p.unit_sparsity:.1f}%"
                                                  for p in sweep[name]))
            refs = {k: {m: info[k][m] for m in ("clean", "white_box", "black_box")} for k in ("Standard", "AT")}
            plot_sweep(sweep, Path(a.figures) / "fig3_sparsity_sweep.png", references=refs,
                       title="accuracy vs sparsity over the KL scale gamma")
        log(f"figures written to {a.figures}")

    total = time.perf_counter() - t_start
    write_outputs(a, info, lat, slims, total, sweep, order)
    log(f"done; wrote {a.out}")
    return 0


def make_figures(a: argparse.Namespace, models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor) -> None:
    from robustprune.analysis import (loss_surface, plot_loss_surfaces, plot_vulnerability_histograms,
                                      vulnerability_histogram)

    names = ["Standard", "BP", "AT", "ANP", "ANP-VS"]
    n = min(len(x), 200)
    hists = {}
    for name in names:
        x_adv = craft(models[name], x[:n], y[:n], a, a.seed + 303)
        hists[name] = vulnerability_histogram(models[name], x[:n], x_adv)
    plot_vulnerability_histograms(hists, Path(a.figures) / "fig4_vulnerability_hist.png",
                                  title=f"vulnerability of the features of {hists[names[0]].layer}")
    surf = {name: loss_surface(models[name], x[:1], y[:1], radius=a.eps, steps=21) for name in names}
    plot_loss_surfaces(surf, Path(a.figures) / "fig5_loss_surface.png", title="loss along sign(grad) and random")


def fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def write_outputs(a: argparse.Namespace, info: dict[str, dict[str, Any]], lat: dict[str, float],
                  slims: dict[str, Any], total: float, sweep: dict[str, list] | None = None,
                  order: list[str] | None = None) -> None:
    lines = [
        f"# ANP (Madaan2020): Table 1 / Appendix-1 on Fashion-MNIST ({a.arch}, width {a.width:g})",
        "",
        f"Train {a.train_limit} images (validation {a.val_size}, {a.val_n} used per epoch for selection), test "
        f"{a.test_n}. L-inf eps = {a.eps:g}; training PGD-{a.train_steps}, evaluation PGD-{a.eval_steps} "
        f"(step eps/4, random start). KL scale gamma = {a.gamma:g} for BP, {a.anp_gamma:g} for ANP/ANP-VS "
        f"(/N = {a.train_limit}), beta = {a.beta:.3g}, "
        f"AT beta = {a.at_beta:.3g}, lambda = {a.lam:g} (AT-VS) / {a.anp_lam:g} (ANP-VS), gate a_uc init = "
        f"{a.a_uc_init:g}. Adam, lr {a.lr:g} "
        f"(cosine, best validation epoch); BP/ANP/ANP-VS weights {a.prune_lr:g}, masks "
        f"{a.mask_lr_factor * a.prune_lr:g} (constant, last epoch); batch {a.batch_size}."
        + (f" VIB rows: gamma = {a.vib_gamma:g}." if a.vib else "")
        + f" Epochs: standard {a.std_epochs}, AT/AT-VS {a.at_epochs}, BP/ANP/ANP-VS {a.prune_epochs}, "
        f"HYDRA {a.hydra_prune_epochs}+{a.hydra_ft_epochs}"
        + (f", at most {a.max_steps} steps per epoch" if a.max_steps else "") + (" (--tiny)" if a.tiny else "") + ".",
        "",
        "| Model | Clean acc. (%) | xFLOPs | Memory (%) | Sparsity: units (%) | Sparsity: weights (%) "
        "| White-box acc. (%) | Black-box acc. (%) | Vulnerability white | Vulnerability black | Train (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in order or ORDER:
        r = info[name]
        xf = fmt(r.get("xflops"), ".2f")
        if name == "HYDRA":
            xf += f" ({fmt(r.get('xflops_nonzero'), '.2f')} non-zero)"
        lines.append(
            f"| {name} | {fmt(r['clean'], '.2f', 100)} | {xf} | {fmt(r.get('memory_pct'), '.2f')} "
            f"| {fmt(r.get('unit_sparsity'), '.2f', 100)} | {fmt(r.get('weight_sparsity'), '.2f', 100)} "
            f"| {fmt(r['white_box'], '.2f', 100)} | {fmt(r['black_box'], '.2f', 100)} "
            f"| {fmt(r['vul_white'], '.4f')} | {fmt(r['vul_black'], '.4f')} | {fmt(r.get('train_s'), '.0f')} |")
    lines += [
        "",
        "Black box: PGD examples crafted on a separately trained standard network (Standard, BP) or "
        f"{'a separately trained' if a.bb_source == 'separate' else 'the'} AT network (the others). xFLOPs and "
        "memory are measured on the *slim* networks (pruned units removed; logits checked equal to the gated "
        "networks', max |diff| "
        + ", ".join(f"{k} {fmt(info[k].get('slim_check'), '.1e')}" for k in slims) + "); memory = hidden feature "
        "maps, % of Standard (the ANP code's im2col+weights count: "
        + ", ".join(f"{k} {fmt(info[k].get('memory_pct_anp_code'), '.2f')}%" for k in slims) + "). Sparsity: units "
        "= gated units pruned (Madaan2020's 'Sparsity'); weights = prunable weights removed (HYDRA: zeros, no speed-up "
        f"on dense kernels; per-layer keep {info['HYDRA'].get('hydra_keep', 0):.4f}; its top-k masks were recomputed "
        f"{info['HYDRA'].get('hydra_topk_max')} times per layer for {info['HYDRA'].get('hydra_score_steps')} "
        "score-optimisation steps, i.e. once per step plus once per validation pass).",
        "",
        "## Units per layer (Appendix-2)",
        "",
        "| Model | Units |",
        "|---|---|",
        f"| Standard | {slims['ANP'].units_string(dense=True)} |",
    ]
    for name, sl in slims.items():
        lines.append(f"| {name} | {sl.units_string()} |")
    lines += [
        "",
        "## Latency (slim ANP vs dense)",
        "",
        f"Forward pass of a batch of {lat['batch_size']} on {lat['device']} ({lat['threads']} CPU threads), median of "
        f"{lat['rounds']} alternating rounds of torch.utils.benchmark: dense {lat['dense_ms']:.2f} ms, slim ANP "
        f"{lat['slim_ms']:.2f} ms, speed-up x{lat['speedup']:.2f} (xFLOPs {info['ANP'].get('xflops', 0):.2f}). "
        f"Slim ANP clean accuracy {100 * info['ANP']['slim_clean']:.2f}% (gated: {100 * info['ANP']['clean']:.2f}%).",
    ]
    if sweep:
        lines += ["", "## Sparsity sweep over gamma (Fig. 3)", "",
                  "| Model | gamma | Units | Sparsity: units (%) | Clean (%) | White-box (%) | Black-box (%) |",
                  "|---|---|---|---|---|---|---|"]
        for name, pts in sweep.items():
            for p in pts:
                lines.append(f"| {name} | {p.gamma:g} | {p.units} | {100 * p.unit_sparsity:.2f} "
                             f"| {100 * p.metrics['clean']:.2f} | {100 * p.metrics['white_box']:.2f} "
                             f"| {100 * p.metrics['black_box']:.2f} |")
    if a.figures:
        lines += ["", f"Figures in {a.figures}: fig4_vulnerability_hist.png (vulnerability of the first layer's "
                  "features; zeros in orange), fig5_loss_surface.png (loss along sign(grad) and a random direction)"
                  + (", fig3_sparsity_sweep.png" if sweep else "") + "."]
    lines += ["", f"Total wall time {total:.0f} s."]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    js = Path(a.json) if a.json else out.with_suffix(".json")
    js.write_text(json.dumps({"args": vars(a), "results": info, "latency": lat, "wall_time": total,
                              "sweep": {k: [vars(p) for p in v] for k, v in (sweep or {}).items()}}, indent=1,
                             default=str))


if __name__ == "__main__":
    sys.exit(main())
