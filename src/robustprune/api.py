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
    """``data`` as a checked :class:`Split`: float NCHW in [0, 1], finite, one integer label >= 0 per image."""
    from robustprune.data import check_split

    if isinstance(data, Split):
        check_split(data.x, data.y, what)
        return data if data.y.dtype == torch.long else Split(x=data.x, y=data.y.long(), index=data.index)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        check_split(x, y, what)
        return Split(x=x.float(), y=y.long())
    raise ConfigError(f"{what} must be a Split or a tuple (x, y) of tensors")


def _num_classes(model: nn.Module, x: Tensor) -> int | None:
    """The model's number of outputs (one forward pass of one image in eval mode), None when it is not a 2-D
    logit tensor."""
    from robustprune.metrics.accuracy import eval_mode

    with eval_mode(model), torch.no_grad():
        out = model(x[:1])
    return int(out.shape[-1]) if isinstance(out, Tensor) and out.dim() == 2 else None


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

    precision = check_precision(precision)
    m = get_method(method)
    if sparsity is not None:
        from robustprune.rates import merge_rates

        if isinstance(sparsity, (list, tuple)):
            raise ConfigError("sparsity= takes one value, e.g. sparsity=0.99 (prune once per sparsity)")
        rate = merge_rates(None if rate is None else [rate], [sparsity], rate_what="rate=",
                           sparsity_what="sparsity=", example="sparsity=0.99 (rate=100)")[0]
    train = _as_split(data, "data")
    val_split = _as_split(val, "val") if val is not None else None
    if val_split is None:
        train, val_split = carve_validation(train, seed=seed)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    if dataset is not None:
        from robustprune.data import get_spec

        get_spec(dataset)  # an unknown name: one line listing the datasets (dataset-dependent defaults use it)
    classes = _num_classes(model, train.x[:1].to(dev))
    if classes is not None:
        for split, what in ((train, "data"), (val_split, "val")):
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
