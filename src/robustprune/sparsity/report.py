"""Sparsity as it is *actually present* in the weights, in both usual meanings.

Papers use "sparsity" for pruned weights in one place and pruned units in another; the report
gives both, named:

* ``pruned_weights`` / ``weight_sparsity``: weights equal to zero among the prunable weights
  (``weight`` of every Conv2d and Linear; biases and normalisation layers are not prunable);
* ``pruned_units`` / ``unit_sparsity``: filters (Conv2d output channels) and neurons (Linear output
  rows) whose weights are all zero, among all such units;
  (per layer ``zero_filters`` for Conv2d, ``zero_neurons`` for Linear);
* ``zero_kernels`` (Conv2d only): ``k x k`` kernels whose weights are all zero;
* ``compression``: prunable weights / non-zero prunable weights (``inf`` if all are zero).

Counts come from the weights, never from the masks: a mask that was not applied does not count.
When ``masks`` is given, each masked layer also reports ``masked`` (entries the mask prunes) and
``mask_violations`` (entries the mask prunes that are not zero in the weights; should be 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustprune.sparsity.groups import prunable_layers


def sparsity_report(model: nn.Module, masks: Any = None) -> dict[str, Any]:
    """Per-layer rows under ``"layers"`` (every Conv2d/Linear weight, model order) and the totals
    at the top level: ``prunable``, ``nonzero``, ``pruned_weights``, ``weight_sparsity``,
    ``compression``, ``units``, ``pruned_units``, ``unit_sparsity``, ``pruned_filters``,
    ``pruned_neurons``, ``kernels``, ``zero_kernels`` (+ ``mask_violations`` with ``masks``)."""
    mask_dict = getattr(masks, "masks", masks) or {}
    layers: dict[str, dict[str, Any]] = {}
    tot = {"weights": 0, "zeros": 0, "units": 0, "zero_units": 0, "kernels": 0, "zero_kernels": 0,
           "zero_filters": 0, "zero_neurons": 0}
    with torch.no_grad():
        for name, mod in prunable_layers(model, "unstructured").items():
            w = mod.weight.detach()
            zero = w == 0
            n = w.numel()
            z = int(zero.sum())
            units = w.shape[0]
            zero_units = int(zero.reshape(units, -1).all(dim=1).sum()) if units else 0
            row: dict[str, Any] = {
                "type": "conv" if isinstance(mod, nn.Conv2d) else "linear",
                "shape": tuple(w.shape),
                "weights": n,
                "zeros": z,
                "nonzero": n - z,
                "weight_sparsity": z / n if n else 0.0,
                "units": units,
                "zero_units": zero_units,
            }
            if isinstance(mod, nn.Conv2d):
                row["zero_filters"] = zero_units
                tot["zero_filters"] += zero_units
                kern = zero.reshape(w.shape[0] * w.shape[1], -1).all(dim=1)
                row["kernels"] = int(kern.numel())
                row["zero_kernels"] = int(kern.sum())
                tot["kernels"] += row["kernels"]
                tot["zero_kernels"] += row["zero_kernels"]
            else:
                row["zero_neurons"] = zero_units
                tot["zero_neurons"] += zero_units
            if name in mask_dict:
                m = mask_dict[name].to(w.device)
                row["masked"] = int((~m).sum())
                row["mask_violations"] = int(((~m) & ~zero).sum())
            layers[name] = row
            tot["weights"] += n
            tot["zeros"] += z
            tot["units"] += units
            tot["zero_units"] += zero_units

    nonzero = tot["weights"] - tot["zeros"]
    total = {
        "prunable": tot["weights"],
        "nonzero": nonzero,
        "pruned_weights": tot["zeros"],
        "weight_sparsity": tot["zeros"] / tot["weights"] if tot["weights"] else 0.0,
        "compression": (tot["weights"] / nonzero) if nonzero else float("inf"),
        "units": tot["units"],
        "pruned_units": tot["zero_units"],
        "unit_sparsity": tot["zero_units"] / tot["units"] if tot["units"] else 0.0,
        "pruned_filters": tot["zero_filters"],
        "pruned_neurons": tot["zero_neurons"],
        "kernels": tot["kernels"],
        "zero_kernels": tot["zero_kernels"],
    }
    if mask_dict:
        total["mask_violations"] = sum(r.get("mask_violations", 0) for r in layers.values())
    return {"layers": layers, **total}
