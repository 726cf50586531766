"""The one training loop.

Every method trains through :func:`fit`; method-specific work (ADMM updates, mask refreshes, ...) plugs in
through :class:`Hook`. Checkpoint selection uses the validation split only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustprune.attacks import pgd_linf
from robustprune.data import Batches, Split
from robustprune.errors import ConfigError, DivergenceError
from robustprune.objectives import Objective
from robustprune.sparsity import MaskSet
from robustprune.train.config import TrainConfig
from robustprune.precision import (
    autocast,
    check_precision,
    effective_precision,
    evaluation_precision,
    in_layout,
    to_contiguous,
    training_math,
    use_channels_last,
)
from robustprune.utils import make_generator


class Hook:
    """Per-step / per-epoch callbacks. Override what you need; all are optional.

    A hook that sets ``stop_training = True`` (e.g. in ``on_epoch_end``) ends the phase after that epoch (its
    selection still counts); the learning-rate schedule stays the one of the full ``epochs`` budget."""

    stop_training: bool = False

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:  # noqa: D401
        pass

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """An extra term added to the objective's loss at each step (e.g. ADMM's ρ/2‖W − Z + U‖²)."""
        return None

    def on_step_end(self, model: nn.Module, step: int) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        pass


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_metric: float = float("nan")
    selected_by: str = "last"
    wall_time: float = 0.0
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "selected_by": self.selected_by,
            "wall_time": self.wall_time,
            "steps": self.steps,
        }


def build_optimizer(model: nn.Module, cfg: TrainConfig, param_groups: Sequence[dict] | None = None):
    params = list(param_groups) if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) out of ``total_steps``."""
    if total_steps <= 0:
        return 1.0
    steps_per_epoch = total_steps / max(cfg.epochs, 1)
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    t = step / total_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(t >= m for m in cfg.milestones)
    # cosine annealing to zero over the post-warm-up steps
    t = (step - warm) / max(total_steps - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


@torch.no_grad()
def _clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> int:
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch_size):
        correct += (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum()
    return int(correct)


def evaluate_split(
    model: nn.Module,
    split: Split,
    *,
    n: int,
    eps: float | None,
    steps: int,
    batch_size: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Clean (and, with ``eps``, PGD-``steps``) accuracy on the first ``n`` points of ``split``; eval mode, strict
    fp32 (TF32 off, no autocast) whatever precision the model trains in."""
    with evaluation_precision("fp32"), torch.autocast(split.x.device.type, enabled=False):
        return _evaluate_split(model, split, n=n, eps=eps, steps=steps, batch_size=batch_size, seed=seed)


def _evaluate_split(model: nn.Module, split: Split, *, n: int, eps: float | None, steps: int, batch_size: int,
                    seed: int) -> dict[str, float]:
    was_training = model.training
    model.eval()
    x, y = split.x[:n], split.y[:n]
    out = {"clean": _clean_correct(model, x, y, batch_size) / max(len(x), 1)}
    if eps is not None and eps > 0:
        g = make_generator(seed, x.device)
        correct = 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            xa = pgd_linf(model, xb, yb, eps=eps, steps=steps, generator=g)
            with torch.no_grad():
                correct += int((model(xa).argmax(1) == yb).sum())
        out["robust"] = correct / max(len(x), 1)
    model.train(was_training)
    return out


_CHECK_EVERY = 20
"""Steps between two reads of the non-finite-loss flag (it is also read at every epoch end)."""


_MAX_LOSS = 1e6
"""An epoch's mean training loss above this means training has blown up (cross-entropy at chance is ln C)."""
_MAX_WEIGHT = 1e6
"""A parameter entry larger than this in magnitude means training has blown up (healthy weights are O(1))."""


def _bad_weights(model: nn.Module) -> str | None:
    """What is wrong with the weights, or None: a NaN / infinity in a parameter or floating-point buffer, or a
    parameter entry above ``_MAX_WEIGHT`` in magnitude. One device synchronisation in all."""
    params = [(n, p.detach()) for n, p in model.named_parameters() if p.is_floating_point() and p.numel()]
    buffers = [(n, b) for n, b in model.named_buffers() if b.is_floating_point() and b.numel()]
    if not params and not buffers:
        return None
    dev = (params or buffers)[0][1].device
    big = [p.abs().max().to(dev) for _, p in params]  # NaN propagates through max
    fin = [torch.isfinite(b).all().to(dev) for _, b in buffers]
    big_t = torch.stack(big) if big else torch.zeros(0, device=dev)
    fin_t = torch.stack(fin) if fin else torch.ones(0, dtype=torch.bool, device=dev)
    bad_p = ~torch.isfinite(big_t) | (big_t > _MAX_WEIGHT)
    if not bool(bad_p.any() | ~fin_t.all()):
        return None
    if bool(bad_p.any()):
        i = int(bad_p.nonzero()[0])
        v = float(big_t[i])
        if math.isfinite(v):
            return f"the weights exploded ({params[i][0]}: |w| up to {v:.3g}, above {_MAX_WEIGHT:g})"
        return f"the weights became NaN or infinite ({params[i][0]})"
    i = int((~fin_t).nonzero()[0])
    return f"the weights became NaN or infinite ({buffers[i][0]})"


def _diverged(model: nn.Module, result: TrainResult, good: tuple[int, dict[str, torch.Tensor]] | None, epoch: int,
              cfg: TrainConfig, step: int, what: str, t0: float) -> None:
    """Stop training: restore the last good state (the best epoch so far, or the last finite epoch when selecting
    the last one), if any, and raise a one-line :class:`DivergenceError`."""
    restored = None
    if good is not None:
        restored, state = good
        model.load_state_dict(state)
    model.eval()
    result.wall_time = time.perf_counter() - t0
    result.steps = step
    how = f"the best by {result.selected_by}" if result.selected_by != "last" else "the last finite one"
    kept = (f"the model was restored to epoch {restored}, {how} before that" if restored is not None
            else "no epoch finished before it, so there is no good state to keep")
    where = f"in epoch {epoch + 1}/{cfg.epochs} (step {step}): {what}"
    advice = f"lower the learning rate (lr={cfg.lr:g} with {cfg.optimizer}), e.g. by 10x, or add warm-up"
    raise DivergenceError(f"training diverged {where}; {kept}; {advice}", result=result, restored_epoch=restored,
                          where=where, advice=advice)


def fit(
    model: nn.Module,
    objective: Objective,
    train: Split,
    val: Split | None,
    cfg: TrainConfig,
    *,
    hooks: Sequence[Hook] = (),
    masks: MaskSet | None = None,
    val_eps: float | None = None,
    param_groups: Sequence[dict] | None = None,
    augment: str | None = None,
    desc: str = "train",
    precision: str | None = None,
) -> TrainResult:
    """Train ``model`` in place with ``objective`` and return the history.

    - ``masks``: pruned weights are held at exactly zero (gradients masked, weights re-masked after every
      optimiser step, so momentum and weight decay cannot revive them).
    - Selection (``cfg.select``): the weights of the best validation epoch are restored at the end
      (robust accuracy under PGD at ``val_eps`` for "val_robust"). The test split is never seen here.
    - ``augment``: on-device augmentation name for the training batches (the dataset spec's ``augment``).
    - ``param_groups``: optional optimiser parameter groups (e.g. a 10x learning rate for mask parameters);
      each group's ``lr`` is scaled by the schedule.
    - Divergence: a non-finite loss (checked every few steps), or at an epoch's end a mean training loss above
      ``_MAX_LOSS``, non-finite weights or weights above ``_MAX_WEIGHT`` in magnitude, stop training with
      :class:`~robustprune.errors.DivergenceError`; the model is first restored to the last good state (the best
      epoch so far, or the last finite epoch with ``select="last"``; ``exc.restored_epoch``; ``exc.result`` holds
      the history).
    - Precision (``cfg.precision``, see :mod:`robustprune.precision`): ``auto`` is ``tf32`` on CUDA and ``fp32``
      on the CPU; ``fp32`` trains with TF32 off,
      ``tf32`` with TF32 on (CUDA), ``bf16`` under bfloat16 autocast (the objective's forward passes, the attacks
      that make its adversarial examples and the hooks' extra losses; the backward pass and the optimiser step
      outside it, in float32). Convolutional models train in ``channels_last`` on CUDA with ``bf16`` (or as
      ``cfg.channels_last`` says) and are returned in the default layout. Validation selection is measured in
      strict fp32. An objective with ``full_precision = True`` (distillation, whose tau = 30 signal bf16 logits drown)
      runs without autocast in a bf16 phase. ``cfg.compile`` compiles the model's forward (``nn.Module.compile``) for the phase only.
      ``precision`` (keyword) overrides ``cfg.precision``.
    """
    if precision is not None:
        cfg = cfg.model_copy(update={"precision": check_precision(precision)})
    _check_fit_inputs(model, train, val, cfg)
    device = train.x.device
    cfg = cfg.model_copy(update={"precision": effective_precision(cfg.precision, device)})  # "auto" resolved
    model.to(device)
    _check_fit_logits(model, train, val)
    channels_last = use_channels_last(model, cfg.precision, device, cfg.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        _compile(model)
    try:
        with training_math(cfg.precision):
            return _fit(model, objective, train, val, cfg, hooks=hooks, masks=masks, val_eps=val_eps,
                        param_groups=param_groups, augment=augment, desc=desc, channels_last=channels_last)
    finally:
        if cfg.compile:
            _uncompile(model)
        if channels_last:
            to_contiguous(model)


def _check_fit_inputs(model: nn.Module, train: Split, val: Split | None, cfg: TrainConfig) -> None:
    """What the CLI checks before it trains, checked where every training passes (a one-line ConfigError before the
    first step): a model, a TrainConfig, splits of float NCHW images in [0, 1] with integer labels within the model's
    outputs, validation images of the training images' size, and a forward pass that returns one logits tensor."""
    from robustprune.data import check_split

    if not isinstance(model, nn.Module):
        raise ConfigError(f"fit: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"fit: cfg must be a TrainConfig, got {type(cfg).__name__}")
    for split, what in ((train, "train"), (val, "val")):
        if split is None and what == "val":
            continue
        if not isinstance(split, Split):
            raise ConfigError(f"fit: {what} must be a Split (robustprune.data.Split(x=images, y=labels)), got "
                              f"{type(split).__name__}")
        if what == "train" or len(split):  # an empty validation split means no selection
            check_split(split.x, split.y, what)
    if val is not None and len(val) and tuple(val.x.shape[1:]) != tuple(train.x.shape[1:]):
        raise ConfigError(f"fit: val images are {tuple(val.x.shape[1:])}, the training images "
                          f"{tuple(train.x.shape[1:])}; give validation images of the same size")


def _check_fit_logits(model: nn.Module, train: Split, val: Split | None) -> None:
    """One forward pass (eval mode, no gradient): one logits tensor, and labels within its outputs."""
    from robustprune.metrics.accuracy import eval_mode
    from robustprune.utils import check_logits

    with eval_mode(model):
        classes = check_logits(model, train.x[:2], "model", "train")
    for split, what in ((train, "train"), (val, "val")):
        if split is not None and len(split) and int(split.y.max()) >= classes:
            raise ConfigError(f"{what}: labels must lie in 0..{classes - 1} (the model has {classes} outputs), got "
                              f"{int(split.y.min())}..{int(split.y.max())}")


def _compile(model: nn.Module) -> None:
    """Compile ``model``'s forward in place (names of submodules and hooks stay as they are)."""
    if not hasattr(model, "compile"):
        raise ConfigError(f"compile needs torch >= 2.2 with nn.Module.compile (this is torch {torch.__version__}); "
                          "drop compile")
    model.compile()


def _uncompile(model: nn.Module) -> None:
    """Back to the eager forward after a compiled phase (what is saved, evaluated and exported)."""
    if getattr(model, "_compiled_call_impl", None) is not None:
        model._compiled_call_impl = None


def _fit(model: nn.Module, objective: Objective, train: Split, val: Split | None, cfg: TrainConfig, *,
         hooks: Sequence[Hook], masks: MaskSet | None, val_eps: float | None, param_groups: Sequence[dict] | None,
         augment: str | None, desc: str, channels_last: bool) -> TrainResult:
    device = train.x.device
    # an objective whose signal bf16 would drown (``full_precision``, e.g. distillation at tau = 30) runs in float32
    # (TF32 as the phase allows) even in a bf16 phase
    amp_precision = "tf32" if cfg.precision == "bf16" and getattr(objective, "full_precision", False) else cfg.precision
    gen = make_generator(cfg.seed, device)  # the objective's randomness (attack starts, dropout masks), on the device
    # Data order and augmentation come from a CPU generator of their own, so one seed gives the same batches on every
    # device (a CUDA generator draws other numbers than a CPU one) whatever the objective draws in between.
    data_gen = make_generator(cfg.seed, "cpu")
    optimizer = build_optimizer(model, cfg, param_groups)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    batches = Batches(train, cfg.batch_size, shuffle=True, augment=augment, generator=data_gen,
                      drop_last=len(train) >= 2 * cfg.batch_size)
    steps_per_epoch = len(batches) if cfg.max_steps_per_epoch is None else min(len(batches), cfg.max_steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    if masks is not None:
        masks = masks.to(device)
        masks.apply(model)
        masks.attach(model)
    for h in hooks:
        h.on_train_start(model, optimizer)

    select = cfg.select if (val is not None and len(val) > 0 and cfg.val_size > 0) else "last"
    if select == "val_robust" and not val_eps:
        select = "val_clean"
    result = TrainResult(selected_by=select)
    best_state: dict[str, torch.Tensor] | None = None
    best = -float("inf")
    t0 = time.perf_counter()
    step = 0
    # non-finite loss seen since the last check: a device flag, read every ``_CHECK_EVERY`` steps and at epoch end
    # (reading it each step would synchronise the device at every step)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    last_good: tuple[int, dict[str, torch.Tensor]] | None = None  # for select == "last" only

    def diverged(what: str) -> None:
        good = (result.best_epoch, best_state) if best_state is not None else last_good
        _diverged(model, result, good, epoch, cfg, step, what, t0)

    try:
        from tqdm.auto import tqdm

        for epoch in range(cfg.epochs):
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            bar = tqdm(total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                       leave=False, dynamic_ncols=True)
            for i, (x, y) in enumerate(batches):
                if i >= steps_per_epoch:
                    break
                f = lr_factor(cfg, step, total)
                for g, lr0 in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = lr0 * f
                x = in_layout(x, channels_last)
                with autocast(amp_precision, device):
                    out = objective(model, x, y, generator=gen)
                    loss = out.loss
                    for h in hooks:
                        extra = h.extra_loss(model)
                        if extra is not None:
                            loss = loss + extra
                loss = loss.float()
                nonfinite |= ~torch.isfinite(loss.detach())
                if i % _CHECK_EVERY == 0 and bool(nonfinite):
                    shown = "" if bool(torch.isfinite(loss.detach())) else f" ({float(loss.detach()):g})"
                    diverged(f"the loss became NaN or infinite{shown}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if masks is not None:
                    masks.apply(model)
                step += 1
                for h in hooks:
                    h.on_step_end(model, step)
                loss_sum += out.loss.detach() * len(y)
                correct += (out.logits.detach().argmax(1) == y).sum()
                seen += len(y)
                bar.update(1)
                if cfg.progress and i % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.3f}")
            bar.close()
            if bool(nonfinite):
                diverged("the loss became NaN or infinite")
            mean_loss = float(loss_sum) / max(seen, 1)
            if mean_loss > _MAX_LOSS:
                diverged(f"the mean training loss exploded to {mean_loss:.3g} (above {_MAX_LOSS:g})")
            bad = _bad_weights(model)
            if bad is not None:
                diverged(bad)
            metrics: dict[str, float] = {
                "epoch": epoch + 1,
                "train_loss": mean_loss,
                "train_acc": float(correct) / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
            }
            if val is not None and len(val) > 0 and cfg.val_size > 0:
                ev = evaluate_split(model, val, n=cfg.val_size, eps=val_eps if select == "val_robust" else None,
                                    steps=cfg.val_attack_steps, seed=cfg.seed)
                metrics["val_clean"] = ev["clean"]
                if "robust" in ev:
                    metrics["val_robust"] = ev["robust"]
            result.history.append(metrics)
            for h in hooks:
                h.on_epoch_end(model, epoch, metrics)
            if select != "last":
                score = metrics[select]
                if score > best:
                    best = score
                    result.best_epoch = epoch + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch + 1 < cfg.epochs:  # the last finite epoch is the state to fall back to if a later one diverges
                last_good = (epoch + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
            if any(getattr(h, "stop_training", False) for h in hooks):
                break
    finally:
        if masks is not None:
            masks.detach()
    if best_state is not None:
        model.load_state_dict(best_state)
        result.best_metric = best
    else:
        result.best_epoch = len(result.history)
        if result.history:
            result.best_metric = result.history[-1].get("val_clean", float("nan"))
    if masks is not None:
        masks.apply(model)
    model.eval()
    result.wall_time = time.perf_counter() - t0
    result.steps = step
    return result
