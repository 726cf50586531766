"""The one-call Python entry: :func:`prune` any ``nn.Module`` with any registered method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods import PruneResult, PruneTask, get_method
from robustprune.objectives import Objective


def _as_split(data: Any, what: str) -> Split:
    """``data`` as a checked :class:`Split`: float NCHW in [0, 1], finite, one integer label >= 0 per image."""
    from robustprune.data import check_split

    if isinstance(data, Split):
        check_split(data.x, data.y, what)
        return data if data.y.dtype == torch.long else Split(x=data.x, y=data.y.long(), index=data.index)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, (Tensor, np.ndarray)) for t in data):
        x, y = (torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t for t in data)
        check_split(x, y, what)
        return Split(x=x.float(), y=y.long())
    raise ConfigError(f"{what} must be a Split or a tuple (x, y) of tensors (or NumPy arrays), got "
                      f"{type(data).__name__}")


def _num_classes(model: nn.Module, x: Tensor, what: str = "data") -> int:
    """The model's number of outputs (one forward pass of two images in eval mode); a model that cannot run on the
    data, or that does not return one logits tensor, is a one-line error naming what it returned."""
    from robustprune.metrics.accuracy import eval_mode
    from robustprune.utils import check_logits

    with eval_mode(model):
        return check_logits(model, x, "model", what)


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
    sparsity: float | str | None = None,
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

    ``rate``: compression c (1/c of the prunable weights remain); None for methods that learn it. ``sparsity``: the
    same in the field's words, s in [0, 1) (the fraction of the prunable weights removed; ``sparsity=0.99`` is
    ``rate=100``); given both, they must agree. ``data``: training
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
    from robustprune.utils import check_device, check_flag, check_number

    # every argument before any work, as the CLI checks its options
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    precision = check_precision(precision)
    m = get_method(method)
    compile = check_flag(compile, "compile")
    progress = check_flag(progress, "progress")
    if channels_last is not None:
        channels_last = check_flag(channels_last, "channels_last (True, False or None)")
    if eps is not None:
        eps = check_number(eps, "eps (the L-inf budget)", low=0, high=1, low_open=True)
    epochs = check_number(epochs, "epochs", low=0)
    seed = check_number(seed, "seed", integer=True, low=0)
    if rate is not None:
        rate = check_number(rate, "rate (compression c: 1/c of the prunable weights remain)", low=1, low_open=True)
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ConfigError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    if device is not None:
        device = check_device(device)
    if sparsity is not None:
        from robustprune.rates import merge_rates

        if isinstance(sparsity, (list, tuple)):
            raise ConfigError("sparsity= takes one value, e.g. sparsity=0.99 (prune once per sparsity)")
        rate = merge_rates(None if rate is None else [rate], [sparsity], rate_what="rate=",
                           sparsity_what="sparsity=", example="sparsity=0.99 (rate=100)")[0]
        if rate is not None and rate <= 1:
            raise ConfigError(f"sparsity={sparsity!r} removes no weight (compression rate 1, the unpruned model); give "
                              "a sparsity above 0, e.g. sparsity=0.5")
    train = _as_split(data, "data")
    val_split = _as_split(val, "val") if val is not None else None
    if val_split is None:
        train, val_split = carve_validation(train, seed=seed)
    elif tuple(val_split.x.shape[1:]) != tuple(train.x.shape[1:]):
        raise ConfigError(f"val: images are {'x'.join(map(str, val_split.x.shape[1:]))}, the training images "
                          f"{'x'.join(map(str, train.x.shape[1:]))}; give validation images of the same size")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    if dataset is not None:
        from robustprune.data import get_spec

        get_spec(dataset)  # an unknown name: one line listing the datasets (dataset-dependent defaults use it)
    classes = _num_classes(model, train.x[:2].to(dev))
    for split, what in ((train, "data"), (val_split, "val")):  # labels within the model's outputs, in both splits
        if int(split.y.max()) >= classes:
            raise ConfigError(f"{what}: labels must lie in 0..{classes - 1} (the model has {classes} outputs), "
                              f"got {int(split.y.min())}..{int(split.y.max())}")
    train = Split(x=train.x.to(dev), y=train.y.to(dev))
    val_split = Split(x=val_split.x.to(dev), y=val_split.y.to(dev))
    s = m.settings({**dict(settings or {}), **more_settings})
    task = PruneTask(train=train, val=val_split, eps=eps, epochs=epochs, objective=objective, dataset=dataset,
                     seed=seed, progress=progress, teacher=teacher, precision=precision,
                     channels_last=channels_last, compile=bool(compile))
    return m.prune(model, task, rate, s)
