"""What a pruned model actually lost, counted one way for every method, so that "90 %" means the same thing
whichever method made the model.

* ``achieved_sparsity``: zeros among the weights of every ``Conv2d`` and ``Linear`` (first layer, shortcuts and
  classifier included; BatchNorm and biases excluded) -- exactly ``1 - 1/achieved_compression(model)`` of
  :mod:`robustprune.methods.interface`;
* ``filters_removed``: the fraction of the unpruned base's conv filters (output channels of every ``Conv2d``) that
  are gone: cut out by slimming (:func:`robustprune.sparsity.slim.slim_model` removes every unit whose weights,
  bias and BatchNorm terms are all zero, and every unit nothing reads), or still there with all-zero weights;
* ``flops_removed``: ``1 - dense MACs of the slim model / dense MACs of the unpruned base`` (Conv2d and Linear
  multiply-accumulates for one input, :func:`robustprune.metrics.flops`): what dense hardware saves. Unstructured
  zeros save nothing here, whole units do. None when the model cannot be slimmed (the slim model's logits must
  equal the model's; a structure the tracer cannot follow is refused, never guessed).

The unpruned base defaults to the model itself taken densely (every registry model keeps its shapes when pruned:
pruned weights are zeros); pass ``base=`` for a model whose layers were already cut (a slim checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustprune.errors import RobustPruneError
from robustprune.metrics.complexity import flops
from robustprune.sparsity.report import sparsity_report


def conv_filters(model: nn.Module) -> tuple[int, int]:
    """``(filters, filters with all-zero weights)`` over every ``Conv2d`` (one filter = one output channel)."""
    total = zero = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                w = mod.weight.detach()
                total += int(w.shape[0])
                zero += int((w.reshape(w.shape[0], -1) == 0).all(dim=1).sum())
    return total, zero


def structure_metrics(model: nn.Module, input_shape: Sequence[int], *, base: nn.Module | None = None,
                      example: torch.Tensor | None = None) -> dict[str, Any]:
    """``{"achieved_sparsity", "filters_removed", "flops_removed", "filters_base", "filters_left", "macs_base",
    "macs_slim", "slim_error"}`` of ``model`` against its unpruned ``base`` (default: ``model`` itself, densely;
    see the module docstring). ``example``: inputs for the slim model's equivalence check (default: two fixed
    random images of ``input_shape``). The model is not changed."""
    from robustprune.sparsity.slim import slim_model

    shape = tuple(int(s) for s in input_shape)
    ref = model if base is None else base
    filters_base, _ = conv_filters(ref)
    macs_base = int(flops(ref, shape)["dense"])
    if example is None:
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        example = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0)).to(dev)
    slim_error = None
    try:
        slim = slim_model(model, masks={}, example=example).model
    except RobustPruneError as exc:  # a structure the tracer cannot follow, or a slim model that differs: refused
        slim, slim_error = None, " ".join(str(exc).split())
    except Exception as exc:  # noqa: BLE001  (a model torch.fx / the hooks cannot handle at all: not slimmable)
        slim, slim_error = None, f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if slim is not None:
        total, zero = conv_filters(slim)
        macs_slim: int | None = int(flops(slim, shape)["dense"])
    else:  # nothing cut: what is all-zero still counts as removed
        total, zero = conv_filters(model)
        macs_slim = None
    left = total - zero
    return {
        "achieved_sparsity": float(sparsity_report(model)["weight_sparsity"]),
        "filters_removed": (1.0 - left / filters_base) if filters_base else 0.0,
        "flops_removed": (1.0 - macs_slim / macs_base) if macs_slim is not None and macs_base else None,
        "filters_base": filters_base,
        "filters_left": left,
        "macs_base": macs_base,
        "macs_slim": macs_slim,
        "slim_error": slim_error,
    }
