"""A pruned unit is removed entirely: its weights, its bias and the affine terms of the BatchNorm that normalises it.

A *unit* is an output channel of a ``Conv2d`` or an output neuron of a ``Linear``. When a mask prunes every weight of
a unit (a filter under ``filter`` pruning, a filter whose every kernel is pruned under ``kernel`` pruning, a fully
pruned row under any group), the unit would still emit ``act(bias)`` -- or ``act(beta - gamma * mean / std)``
after a BatchNorm -- if only its weights were zeroed: a "pruned" filter that is still alive, and a slim model that
differs from the masked one. :func:`unit_param_masks` derives from weight masks the masks of those other
parameters (``{parameter name: bool tensor}``, ``True`` = kept); :class:`robustprune.sparsity.MaskSet` applies them
with the weight masks (``apply``) and zeroes their gradients (``attach``), so a pruned unit's output is exactly 0
and stays 0 through masked fine-tuning.

Which BatchNorm follows a layer is read from the ``torch.fx`` graph (:func:`robustprune.models.graph.norm_after`),
or, for a model fx cannot trace, from one traced forward pass (needs ``model.arch_config``).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.models.graph import BATCHNORMS, has_batchnorm, norm_after

_NORM_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict[str, str]]] = weakref.WeakKeyDictionary()


def dead_units(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{layer: bool vector}`` of the output units whose every weight is pruned (only layers with such units)."""
    out: dict[str, Tensor] = {}
    for name, m in masks.items():
        if m.dim() < 2 or m.shape[0] == 0:
            continue
        dead = ~m.reshape(m.shape[0], -1).any(dim=1)
        if bool(dead.any()):
            out[name] = dead
    return out


def _signature(model: nn.Module) -> tuple:
    return tuple((n, type(m).__name__) for n, m in model.named_modules())


def norms_of(model: nn.Module) -> dict[str, str]:
    """``{layer: BatchNorm module name}`` (cached per model and structure)."""
    sig = _signature(model)
    hit = _NORM_CACHE.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    if not has_batchnorm(model):
        found: dict[str, str] = {}
    else:
        try:
            found = norm_after(model)
        except ConfigError as exc:
            found = _norms_by_hooks(model, str(exc))
    _NORM_CACHE[model] = (sig, found)
    return found


def _norms_by_hooks(model: nn.Module, fx_error: str) -> dict[str, str]:
    from robustprune.sparsity.slim.trace import _trace, example_input

    try:
        x = example_input(model)
    except ConfigError:
        raise ConfigError(
            f"cannot tell which BatchNorm normalises each pruned unit: {fx_error[:1].lower()}{fx_error[1:]}"
        ) from None
    calls, _out, _counts, _funcs = _trace(model, x)
    found: dict[str, str] = {}
    for i, c in enumerate(calls):
        if not isinstance(c.module, (nn.Conv2d, nn.Linear)) or c.out is None:
            continue
        users = [u for u in calls[i + 1:] if u.inp is c.out]
        if len(users) == 1 and isinstance(users[0].module, BATCHNORMS):
            found[c.name] = users[0].name
    return found


def unit_param_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{parameter name: bool mask}`` (``True`` = kept) for the biases of the fully pruned units of ``masks`` and
    the affine weight and bias of the BatchNorm right after their layer. Empty when no unit is fully pruned."""
    dead = dead_units(masks)
    if not dead:
        return {}
    mods = dict(model.named_modules())
    out: dict[str, Tensor] = {}
    norms: dict[str, str] | None = None
    for name, d in dead.items():
        mod = mods.get(name)
        if mod is None:
            continue
        keep = ~d
        bias = getattr(mod, "bias", None)
        if isinstance(bias, Tensor) and bias.shape == keep.shape:
            out[f"{name}.bias"] = keep.to(bias.device)
        if norms is None:
            norms = norms_of(model)
        bn_name = norms.get(name)
        if bn_name is None:
            continue
        bn = mods[bn_name]
        if not getattr(bn, "affine", False):
            raise ConfigError(
                f"BatchNorm {bn_name!r} after {name!r} has no affine parameters, so a pruned unit of {name!r} would "
                "still output -mean/std; use BatchNorm with affine=True to prune its units"
            )
        out[f"{bn_name}.weight"] = keep.to(bn.weight.device)
        out[f"{bn_name}.bias"] = keep.to(bn.bias.device)
    return out


def unit_removed(model: nn.Module, layer: str, norm: str | None = None) -> Tensor:
    """Bool vector: which output units of ``layer`` are removed entirely in ``model`` as it is (weight row, bias
    and the ``norm`` BatchNorm's affine terms all exactly zero)."""
    mod = model.get_submodule(layer)
    w = mod.weight.detach()
    gone = ~(w.reshape(w.shape[0], -1) != 0).any(dim=1)
    if getattr(mod, "bias", None) is not None:
        gone &= mod.bias.detach() == 0
    if norm is not None:
        bn = model.get_submodule(norm)
        if not getattr(bn, "affine", False):
            return torch.zeros_like(gone)
        gone &= (bn.weight.detach() == 0) & (bn.bias.detach() == 0)
    return gone
