"""Clean and robust accuracy.

Both evaluate with every module in eval mode and put each module's ``training`` flag back as it
was afterwards (per module, so a model that was partly in eval mode stays that way). Batches are
moved to the device of the model's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError


@contextmanager
def eval_mode(model: nn.Module):
    """Put every module in eval mode; restore each module's own ``training`` flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


def _unpack(x: Any, y: Tensor | None) -> tuple[Tensor, Tensor]:
    if y is None:
        if hasattr(x, "x") and hasattr(x, "y"):  # a data Split
            return x.x, x.y
        if isinstance(x, (tuple, list)) and len(x) == 2:
            return x[0], x[1]
        raise ConfigError("accuracy needs labels: pass (model, x, y), (model, (x, y)) or (model, split)")
    return x, y


def _check(x: Tensor, y: Tensor, batch_size: int) -> None:
    if len(x) != len(y):
        raise ConfigError(f"inputs and labels differ in length ({len(x)} vs {len(y)})")
    if len(x) == 0:
        raise ConfigError("cannot measure accuracy on an empty set; pass at least one example")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted labels (argmax of the logits) for ``x``, in eval mode, on ``x``'s device."""
    dev = _model_device(model, x.device)
    out = []
    with eval_mode(model), torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i : i + batch_size].to(dev)).argmax(dim=1).to(x.device))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)


def accuracy(model: nn.Module, x: Any, y: Tensor | None = None, batch_size: int = 512) -> float:
    """Fraction of ``x`` classified as ``y``.

    Call as ``accuracy(model, x, y)``, ``accuracy(model, (x, y))`` or ``accuracy(model, split)``
    (anything with ``.x`` and ``.y``); ``accuracy(model, split, 256)`` reads 256 as the batch size.
    """
    if isinstance(y, int) and not isinstance(y, bool):  # accuracy(model, split, 256), as in the contract
        y, batch_size = None, y
    x, y = _unpack(x, y)
    _check(x, y, batch_size)
    pred = predict(model, x, batch_size)
    return float((pred == y.to(pred.device)).float().mean())


def correct_under_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack_fn: Callable[..., Tensor],
    *,
    batch_size: int = 256,
    **attack_kwargs: Any,
) -> Tensor:
    """Bool per example: still classified correctly on ``attack_fn(model, xb, yb, **attack_kwargs)``.

    The attack runs batch by batch with the model in eval mode (gradients enabled, so the attack
    can take input gradients); the adversarial batch is then classified under ``inference_mode``.
    Per-example results let a caller take the worst case over several attacks.
    """
    _check(x, y, batch_size)
    dev = _model_device(model, x.device)
    out = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(dev)
            yb = y[i : i + batch_size].to(dev)
            x_adv = attack_fn(model, xb, yb, **attack_kwargs)
            with torch.inference_mode():
                out.append((model(x_adv.detach()).argmax(dim=1) == yb).to(x.device))
    return torch.cat(out)


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack_fn: Callable[..., Tensor],
    *,
    batch_size: int = 256,
    **attack_kwargs: Any,
) -> float:
    """Accuracy on the adversarial examples ``attack_fn(model, x, y, **attack_kwargs)``
    (see :func:`correct_under_attack`)."""
    return float(
        correct_under_attack(model, x, y, attack_fn, batch_size=batch_size, **attack_kwargs).float().mean()
    )
