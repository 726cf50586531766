"""The one-call Python entry: :func:`prune` any ``nn.Module`` with any registered method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods import PruneResult, PruneTask, get_method
from robustprune.objectives import Objective


def _as_split(data: Any, what: str) -> Split:
    if isinstance(data, Split):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.dim() != 4:
            raise ConfigError(f"{what}: x must be a float NCHW tensor in [0, 1], got shape {tuple(x.shape)}")
        if y.dim() != 1 or len(y) != len(x):
            raise ConfigError(f"{what}: y must hold one integer label per image ({len(x)}), got shape "
                              f"{tuple(y.shape)}")
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise ConfigError(f"{what}: inputs must lie in [0, 1] (normalise inside the model), got "
                              f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        return Split(x=x.float(), y=y.long())
    raise ConfigError(f"{what} must be a Split or a tuple (x, y) of tensors")


def carve_validation(train: Split, fraction: float = 0.1, max_size: int = 5000, seed: int = 0) -> tuple[Split, Split]:
    """A seeded validation split carved from ``train`` (``fraction`` of it, at most ``max_size``, at least one)."""
    n = len(train)
    if n < 2:
        raise ConfigError(f"need at least 2 training images to carve a validation split, got {n}")
    n_val = max(1, min(max_size, int(round(n * fraction))))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104729)).to(train.x.device)
    return Split(x=train.x[perm[n_val:]], y=train.y[perm[n_val:]]), Split(x=train.x[perm[:n_val]],
                                                                           y=train.y[perm[:n_val]])


def prune(
    model: nn.Module,
    method: str,
    *,
    rate: float | None = None,
    data: Split | tuple[Tensor, Tensor],
    val: Split | tuple[Tensor, Tensor] | None = None,
    eps: float | None = None,
    epochs: float = 1,
    objective: Objective | None = None,
    dataset: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    teacher: nn.Module | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = False,
    settings: Mapping[str, Any] | None = None,
    **more_settings: Any,
) -> PruneResult:
    """Prune ``model`` (any ``nn.Module`` taking float NCHW inputs in [0, 1] and returning logits) with ``method``.

    ``rate``: compression c (1/c of the prunable weights remain); None for methods that learn it. ``data``: training
    images as ``(x, y)`` tensors or a :class:`Split`; a validation split for checkpoint selection is carved from it
    when ``val`` is None. ``eps``: L∞ budget of adversarial training (required by adversarial methods). ``epochs``:
    per training phase unless the method's settings give the phase its own. Other keyword arguments (or
    ``settings``) are the method's settings, e.g. ``alpha=1.0`` or ``**{"admm.lr": 1e-3}``; see
    ``robustprune list methods --settings NAME``. The model is pruned in place (except for learned-rate methods,
    which return a folded copy as ``result.model``). ``precision``: of every training phase, ``auto`` (``tf32``
    on CUDA, ``fp32`` on the CPU), ``fp32`` (IEEE, TF32 off), ``tf32`` or ``bf16`` (autocast; see :mod:`robustprune.precision`); ``channels_last``: the memory layout
    of a convolutional model while it trains (None: channels_last for bf16 on CUDA); ``compile``: ``torch.compile``
    the forward passes of training.
    """
    from robustprune.precision import check_precision

    precision = check_precision(precision)
    m = get_method(method)
    train = _as_split(data, "data")
    val_split = _as_split(val, "val") if val is not None else None
    if val_split is None:
        train, val_split = carve_validation(train, seed=seed)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    train = Split(x=train.x.to(dev), y=train.y.to(dev))
    val_split = Split(x=val_split.x.to(dev), y=val_split.y.to(dev))
    s = m.settings({**dict(settings or {}), **more_settings})
    task = PruneTask(train=train, val=val_split, eps=eps, epochs=epochs, objective=objective, dataset=dataset,
                     seed=seed, progress=progress, teacher=teacher, precision=precision,
                     channels_last=channels_last, compile=bool(compile))
    return m.prune(model, task, rate, s)
