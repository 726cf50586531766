"""Folding one factor per unit into the weights (exact), keeping the architecture: :func:`fold_unit_scales`."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.sparsity.slim.check import check_equivalent
from robustprune.sparsity.slim.trace import UnitSite, example_input, unit_sites


def _check_vector(v: Any, n: int, what: str) -> Tensor:
    if not isinstance(v, Tensor):
        v = torch.as_tensor(v)
    v = v.detach().flatten().float()
    if v.numel() != n:
        raise ConfigError(f"{what} has {v.numel()} entries but the layer has {n}; use a mask computed for this model")
    if not bool(torch.isfinite(v).all()):
        raise ConfigError(f"{what} has non-finite entries")
    return v



def _fold_unit_factors(mods: Mapping[str, nn.Module], site: UnitSite, s: Tensor) -> None:
    """Fold one factor per output unit of ``site`` into the model (exact): into BN's affine parameters when the
    gate sits after a BatchNorm, else into the layer's weight rows and bias."""
    if site.bn is not None:
        bn = mods[site.bn]
        if not bn.affine:
            raise ConfigError(f"BatchNorm {site.bn!r} has no affine parameters to fold unit scales into")
        bn.weight.mul_(s.to(bn.weight.dtype))
        bn.bias.mul_(s.to(bn.bias.dtype))
        return
    prod = mods[site.name]
    shape = (-1,) + (1,) * (prod.weight.dim() - 1)
    prod.weight.mul_(s.to(prod.weight.dtype).view(shape))
    if prod.bias is not None:
        prod.bias.mul_(s.to(prod.bias.dtype))


@torch.no_grad()
def fold_unit_scales(
    model: nn.Module,
    unit_scales: Mapping[str, Any],
    input_scales: Mapping[str, Any] | None = None,
    *,
    example: Tensor | None = None,
    check: bool = True,
    atol: float | None = None,
) -> tuple[nn.Module, dict[str, Tensor]]:
    """The masked model (``unit_scales`` / ``input_scales`` as in :func:`slim_model`) as a copy of ``model`` with
    the *same architecture*: every factor folded into the weights (exact), the weights of removed units and of
    the consumer inputs they fed set to exactly zero. Returns ``(model, masks)`` with ``masks[module name]`` the
    bool mask of the remaining weights of every layer touched -- what a pruned checkpoint stores -- so that
    sparsity, FLOPs and every attack see the pruned network without gates or hooks. ``check`` compares the
    logits with the masked model's (as :func:`slim_model`)."""
    input_scales = dict(input_scales or {})
    x_ex = example_input(model, example)
    by_name = {s.name: s for s in unit_sites(model, x_ex)}
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    masks: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    in_scales: dict[str, Tensor] = {}

    def mask_of(name: str) -> Tensor:
        if name not in masks:
            masks[name] = torch.ones_like(mods[name].weight, dtype=torch.bool)
        return masks[name]

    for name, v in unit_scales.items():
        site = by_name.get(name)
        if site is None:
            raise ConfigError(f"{name!r} is not a hidden Conv2d/Linear layer of the model; hidden layers: "
                              f"{', '.join(list(by_name)[:6])}")
        s = _check_vector(v, site.num_units, f"unit scales of {name!r}")
        scales[name] = s
        prod = mods[name]
        s_d = s.to(prod.weight.device)
        keep = s_d != 0
        _fold_unit_factors(mods, site, s_d)
        # a removed unit outputs exactly 0 (its BN affine or its row and bias are 0): zero its row as well, and
        # the consumer's inputs it feeds (they only ever multiply zeros, so both are exact)
        shape = (-1,) + (1,) * (prod.weight.dim() - 1)
        m = mask_of(name)
        m &= keep.view(shape)
        prod.weight.mul_(keep.to(prod.weight.dtype).view(shape))
        if prod.bias is not None:  # with a BatchNorm after it the unit is already 0 (its affine terms are 0)
            prod.bias.mul_(keep.to(prod.bias.dtype))
        if site.supported and site.consumer is not None:
            cons = mods[site.consumer]
            idx = keep.repeat_interleave(site.positions) if site.positions > 1 else keep
            cshape = (1, -1) + (1,) * (cons.weight.dim() - 2)
            idx = idx.to(cons.weight.device)
            mask_of(site.consumer).__iand__(idx.view(cshape))
            cons.weight.mul_(idx.to(cons.weight.dtype).view(cshape))
    for name, v in input_scales.items():
        lin = mods.get(name)
        if not isinstance(lin, nn.Linear):
            raise ConfigError(f"input scales given for {name!r}, which is not a Linear layer of the model")
        t = _check_vector(v, lin.in_features, f"input scales of {name!r}").to(lin.weight.device)
        in_scales[name] = t
        lin.weight.mul_(t.to(lin.weight.dtype).view(1, -1))
        mask_of(name).__iand__((t != 0).view(1, -1))
    if check:
        check_equivalent(model, out, by_name, scales, in_scales, x_ex, atol=atol)
    return out, masks

