"""Parameter counts and dense / effective FLOPs (multiply-accumulates, MACs).

*Prunable* weights are the ``weight`` tensors of every ``nn.Conv2d`` and ``nn.Linear`` (the same
set ``robustprune.sparsity.prunable_layers(model, "unstructured")`` returns; this module does not
import ``sparsity`` so that any layer may use it). Counts are of zeros *actually present* in the
weights; when ``masks`` is given (a ``MaskSet`` or a ``{module name: bool tensor}`` dict) the
weights are counted as if the masks were applied (``weight * mask``), without changing the model.

FLOPs are MACs for one input of shape ``(C, H, W)``, counted for Conv2d and Linear layers only
(activations, normalisation, pooling and biases are not counted):

* Conv2d: dense ``out_h * out_w * weight.numel()`` (``weight.numel() = out * in/groups * kh * kw``,
  so grouped convolutions are handled), effective ``out_h * out_w * nonzero(weight)``;
* Linear: dense ``weight.numel()`` per output position (1 for a flat input), effective
  ``nonzero(weight)`` per position.

A weight that reads a *removed* unit of the layer before (a conv filter / linear neuron whose weights, bias
and following BatchNorm affine terms are all zero, so its output is exactly 0) multiplies a zero and is not
effective either. A unit counts as removed only then: a filter with zero weights but a live bias or BatchNorm
still emits a constant, and the weights reading it still count. The producer -> (BatchNorm) -> consumer coupling
comes from :func:`robustprune.models.graph.unit_flows` (torch.fx); a model fx cannot trace is counted by its
non-zero weights alone.

A module called several times in one forward pass is counted each time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError, RobustPruneError
from robustprune.metrics.accuracy import _model_device, eval_mode
from robustprune.models.graph import unit_flows

_PRUNABLE = (nn.Conv2d, nn.Linear)


def _mask_dict(masks: Any) -> dict[str, Tensor]:
    if masks is None:
        return {}
    d = getattr(masks, "masks", masks)
    if not isinstance(d, dict):
        raise ConfigError(f"masks must be a MaskSet or a dict of bool tensors, got {type(masks).__name__}")
    return d


def _nonzero(weight: Tensor, mask: Tensor | None) -> Tensor:
    nz = weight.detach() != 0
    if mask is not None:
        if mask.shape != weight.shape:
            raise ConfigError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
        nz = nz & mask.to(nz.device).bool()
    return nz


def _nonzero_weight(weight: Tensor, mask: Tensor | None) -> int:
    return int(_nonzero(weight, mask).sum())


@torch.no_grad()
def removed_inputs(model: nn.Module, masks: Any = None) -> dict[str, Tensor]:
    """``{consumer layer: bool tensor shaped like its weight}``: the weights that read a unit removed entirely from
    the layer before (weights under ``masks``, bias and BatchNorm affine terms all zero). Empty when the model
    cannot be traced with torch.fx."""
    md = _mask_dict(masks)
    try:
        flows = unit_flows(model)
    except RobustPruneError:
        return {}
    mods = dict(model.named_modules())
    out: dict[str, Tensor] = {}
    for f in flows:
        if not f.supported or f.consumer is None:
            continue
        prod = mods[f.name]
        w = prod.weight
        gone = ~_nonzero(w, md.get(f.name)).reshape(w.shape[0], -1).any(dim=1)
        if getattr(prod, "bias", None) is not None:
            gone &= prod.bias.detach() == 0
        if f.norm is not None:
            bn = mods[f.norm]
            if not getattr(bn, "affine", False):
                continue
            gone &= (bn.weight.detach() == 0) & (bn.bias.detach() == 0)
        if not bool(gone.any()):
            continue
        cw = mods[f.consumer].weight
        if cw.dim() > 2:
            cols = gone.view(1, -1, *([1] * (cw.dim() - 2))).expand(cw.shape)
        else:
            cols = gone.repeat_interleave(f.positions).view(1, -1).expand(cw.shape)
        cols = cols.to(cw.device)
        out[f.consumer] = out[f.consumer] | cols if f.consumer in out else cols
    return out


def count_params(model: nn.Module, masks: Any = None) -> dict[str, int]:
    """``{"total", "prunable", "nonzero", "nonzero_prunable"}`` over the model's (unique) parameters."""
    md = _mask_dict(masks)
    prunable_ids: dict[int, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, _PRUNABLE) and isinstance(getattr(mod, "weight", None), Tensor):
            prunable_ids.setdefault(id(mod.weight), name)
    total = prunable = nonzero = nonzero_prunable = 0
    with torch.no_grad():
        for p in model.parameters():  # parameters() already de-duplicates shared tensors
            n = p.numel()
            name = prunable_ids.get(id(p))
            nz = _nonzero_weight(p, md.get(name) if name is not None else None)
            total += n
            nonzero += nz
            if name is not None:
                prunable += n
                nonzero_prunable += nz
    return {"total": total, "prunable": prunable, "nonzero": nonzero, "nonzero_prunable": nonzero_prunable}


def _input_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a tuple of ints like (3, 32, 32), got {input_shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"input_shape must be positive sizes like (3, 32, 32), got {input_shape!r}")
    return shape


def layer_flops(model: nn.Module, input_shape: Any, masks: Any = None) -> dict[str, dict[str, int]]:
    """Per Conv2d/Linear module name: ``{"dense", "effective"}`` MACs for one input of
    ``input_shape`` = ``(C, H, W)`` (runs one forward pass on zeros, in eval mode, restoring the
    modules' modes)."""
    shape = _input_shape(input_shape)
    md = _mask_dict(masks)
    positions: dict[str, int] = {}
    handles = []

    def make_hook(name: str, mod: nn.Module):
        out_units = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features

        def hook(_m: nn.Module, _inp: Any, out: Tensor) -> None:
            # batch of one: positions = output elements per output unit (out_h * out_w for conv)
            positions[name] = positions.get(name, 0) + out.numel() // max(1, out_units)

        return hook

    mods = {n: m for n, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    for name, mod in mods.items():
        handles.append(mod.register_forward_hook(make_hook(name, mod)))
    try:
        dev = _model_device(model, torch.device("cpu"))
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        x = torch.zeros((1, *shape), device=dev, dtype=dtype)
        with eval_mode(model), torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()

    out: dict[str, dict[str, int]] = {}
    dead_in = removed_inputs(model, md)
    with torch.no_grad():
        for name, mod in mods.items():
            pos = positions.get(name, 0)
            if pos == 0:
                continue  # not used in the forward pass
            nz = _nonzero(mod.weight, md.get(name))
            if name in dead_in:
                nz = nz & ~dead_in[name]
            out[name] = {"dense": pos * mod.weight.numel(), "effective": pos * int(nz.sum())}
    return out


def flops(model: nn.Module, input_shape: Any, masks: Any = None) -> dict[str, int]:
    """``{"dense": MACs, "effective": MACs that multiply a non-zero weight}`` for one input of
    shape ``(C, H, W)`` (Conv2d and Linear layers)."""
    per = layer_flops(model, input_shape, masks)
    return {
        "dense": int(sum(v["dense"] for v in per.values())),
        "effective": int(sum(v["effective"] for v in per.values())),
    }
