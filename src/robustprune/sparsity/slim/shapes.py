"""The layer shapes of a slim model, so that a checkpoint can rebuild it from its (unslimmed) architecture."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustprune.errors import CheckpointError
from robustprune.sparsity.slim.cut import SelectLinear

_BN = nn.modules.batchnorm._BatchNorm


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {"type", "weight", "bias"}}`` for every Conv2d, Linear (incl. :class:`SelectLinear`) and
    BatchNorm of ``model``: what :func:`rebuild_layers` needs to resize a freshly built model to it."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, _BN)) and isinstance(getattr(m, "weight", None), torch.Tensor):
            out[name] = {"type": type(m).__name__, "weight": list(m.weight.shape), "bias": m.bias is not None}
        elif isinstance(m, _BN):
            out[name] = {"type": type(m).__name__, "weight": [int(m.num_features)], "bias": False}
    return out


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@torch.no_grad()
def rebuild_layers(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize the Conv2d / Linear / BatchNorm modules of ``model`` (in place) to ``shapes``
    (:func:`layer_shapes` of a slim model); the weights are left to ``load_state_dict``. Raises
    :class:`CheckpointError` when a named module is missing or of another kind."""
    mods = dict(model.named_modules())
    for name, spec in shapes.items():
        m = mods.get(name)
        kind = str(spec.get("type"))
        shape = [int(s) for s in spec.get("weight") or []]
        if m is None:
            raise CheckpointError(f"the checkpoint's slim layer {name!r} is not in the model; load it with the "
                                  "architecture it was slimmed from")
        dev = next((p.device for p in m.parameters()), torch.device("cpu"))
        dtype = next((p.dtype for p in m.parameters()), torch.float32)
        if isinstance(m, nn.Conv2d) and kind == type(m).__name__:
            if list(m.weight.shape) == shape:
                continue
            new = nn.Conv2d(shape[1] * m.groups, shape[0], m.kernel_size, stride=m.stride, padding=m.padding,
                            dilation=m.dilation, groups=m.groups, bias=bool(spec.get("bias")),
                            padding_mode=m.padding_mode, device=dev, dtype=dtype)
        elif isinstance(m, nn.Linear) and kind in ("Linear", "SelectLinear"):
            if list(m.weight.shape) == shape and kind == type(m).__name__:
                continue
            if kind == "SelectLinear":
                new = SelectLinear(torch.arange(shape[1], device=dev), shape[0], bias=bool(spec.get("bias")),
                                   device=dev, dtype=dtype)
            else:
                new = nn.Linear(shape[1], shape[0], bias=bool(spec.get("bias")), device=dev, dtype=dtype)
        elif isinstance(m, _BN) and kind == type(m).__name__:
            if int(m.num_features) == shape[0]:
                continue
            new = type(m)(shape[0], eps=m.eps, momentum=m.momentum, affine=m.affine,
                          track_running_stats=m.track_running_stats, device=dev, dtype=dtype)
        else:
            raise CheckpointError(f"the checkpoint's slim layer {name!r} is a {kind} but the model's is a "
                                  f"{type(m).__name__}; load it with the architecture it was slimmed from")
        new.train(m.training)
        _set(model, name, new)
    model.rp_slim = True
    return model
