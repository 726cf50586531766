"""Cutting pruned units out: :func:`slim_model` builds a smaller dense model (see the package docstring)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.sparsity.slim.check import check_equivalent
from robustprune.sparsity.slim.fold import _check_vector, _fold_unit_factors
from robustprune.sparsity.slim.trace import _BN, example_input, unit_sites


class SelectLinear(nn.Linear):
    """``Linear`` applied to ``x[:, in_index]``: the slim form of a Linear whose input features were pruned
    one by one (not as whole channels). ``in_index`` is a buffer, so it is saved with the weights."""

    def __init__(self, in_index: Tensor, out_features: int, bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__(int(in_index.numel()), out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("in_index", in_index.detach().clone().long())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.index_select(1, self.in_index), self.weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", selected inputs"



@dataclass
class SlimResult:
    """The slim model and what was kept.

    ``units[name] = (kept, total)`` output units of each gated layer; ``inputs[name] = (kept, total)`` input
    features of each Linear with input scales; ``order``: ``(label, kept, total)`` in the order of Madaan2020 (ANP)
    Appendix-2 (a Linear's kept inputs just before its outputs), see :meth:`units_string`.
    """

    model: nn.Module
    units: dict[str, tuple[int, int]]
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)
    order: list[tuple[str, int, int]] = field(default_factory=list)
    max_abs_diff: float | None = None

    def units_string(self, dense: bool = False) -> str:
        """``"7-21-147-46"`` (kept units per layer, Appendix-2 style); ``dense=True``: ``"20-50-800-500"``."""
        return "-".join(str(total if dense else kept) for _, kept, total in self.order)

    def unit_sparsity(self) -> float:
        """Fraction of pruned units over all counted units (Madaan2020 (ANP)'s "Sparsity (%)" / 100)."""
        tot = sum(t for _, _, t in self.order)
        return 1.0 - sum(k for _, k, _ in self.order) / tot if tot else 0.0


def _module_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr



@torch.no_grad()
def slim_model(
    model: nn.Module,
    unit_scales: Mapping[str, Any] | None = None,
    input_scales: Mapping[str, Any] | None = None,
    *,
    masks: Any = None,
    example: Tensor | None = None,
    check: bool = True,
    atol: float | None = None,
    reference: nn.Module | None = None,
) -> SlimResult:
    """A new, smaller dense model equal to ``model`` with ``unit_scales`` / ``input_scales`` applied (module
    docstring). ``model`` is not changed (it must carry no gates or hooks of its own: pass a plain copy).

    ``unit_scales``: ``{layer name: one factor per output unit}`` (bool masks work: True = 1); every named layer
    must be a supported site (:func:`unit_sites`), else ``ConfigError`` with the reason. ``input_scales``:
    ``{Linear name: one factor per input feature}`` for Linears fed through ``Flatten``.

    ``masks`` (a ``MaskSet`` or ``{layer: bool weight mask}``, instead of ``unit_scales``): slim a *pruned
    model as it is* -- every unit removed entirely in ``model`` (weights, bias and BatchNorm affine terms all zero,
    as ``MaskSet.apply`` leaves them) or never read by its consumer is cut; a unit whose weights are pruned but
    whose bias or BatchNorm is not is refused (``ConfigError``: apply the masks first), since cutting it would
    change the network. The check then compares with ``model`` itself.

    ``check``: compare the logits of the slim model with the reference -- ``reference`` when given, ``model``
    itself for ``masks``, else ``model`` with the scales applied by hooks -- on ``example`` (real inputs, up to
    64 rows) and random inputs shaped like it, and raise ``RobustPruneError`` when they differ by more than
    ``atol * max(1, |logits|_max)`` (``atol`` None: the strict-fp32 tolerance of
    :func:`~robustprune.sparsity.slim.check.equivalence_tolerance`; both sides run in IEEE fp32 with TF32 off
    whatever the device's defaults).
    """
    input_scales = dict(input_scales or {})
    x_ex = example_input(model, example)
    if masks is not None:
        if unit_scales:
            raise ConfigError("pass either masks= or unit_scales to slim_model, not both")
        unit_scales = _scales_from_masks(model, masks, unit_sites(model, x_ex))
        reference = model if reference is None else reference
    elif unit_scales is None:
        raise ConfigError("slim_model needs unit_scales (one factor per unit of each layer) or masks=")
    sites_all = unit_sites(model, x_ex)
    by_name = {s.name: s for s in sites_all}
    by_consumer = {s.consumer: s for s in sites_all if s.supported}
    scales: dict[str, Tensor] = {}
    for name, v in unit_scales.items():
        if name not in by_name:
            hidden = ", ".join(list(by_name)[:6])
            raise ConfigError(f"{name!r} is not a hidden Conv2d/Linear layer of the model; hidden layers: {hidden}")
        site = by_name[name]
        if not site.supported:
            raise ConfigError(f"cannot remove units of {name!r}: {site.reason}")
        scales[name] = _check_vector(v, site.num_units, f"unit scales of {name!r}")
    in_scales: dict[str, Tensor] = {}
    for name, v in input_scales.items():
        site = by_consumer.get(name)
        mod = dict(model.named_modules()).get(name)
        if site is None or not isinstance(mod, nn.Linear):
            raise ConfigError(f"input scales given for {name!r}, which is not a Linear fed by a supported hidden layer")
        in_scales[name] = _check_vector(v, mod.in_features, f"input scales of {name!r}")
        if site.name not in scales:
            scales[site.name] = torch.ones(site.num_units)

    slim = copy.deepcopy(model)
    mods = dict(slim.named_modules())
    out_keep: dict[str, Tensor] = {}
    in_keep: dict[str, Tensor] = {}
    select: dict[str, Tensor] = {}
    for name, s in scales.items():
        site = by_name[name]
        keep = s != 0
        cons = mods[site.consumer]
        t = in_scales.get(site.consumer)
        if t is not None:
            keep = keep & (t.view(site.num_units, site.positions) != 0).any(dim=1)
        if site.num_units and not bool(keep.any()):
            # never build a zero-width layer: a layer whose units are all pruned keeps one (its factor, 0 when it
            # is pruned, is folded in below, so it outputs exactly what the masked layer does)
            score = s.abs().to(torch.float32)
            if t is not None:
                score = score * t.view(site.num_units, site.positions).abs().sum(dim=1).to(torch.float32)
            keep = torch.zeros_like(keep)
            keep[int(torch.argmax(score))] = True
        prod = mods[name]
        dev = prod.weight.device
        s_d, keep_d = s.to(dev), keep.to(dev)
        _fold_unit_factors(mods, site, s_d)
        out_keep[name] = keep_d
        if site.bn is not None:
            out_keep[site.bn] = keep_d
        idx = keep_d.repeat_interleave(site.positions) if site.positions > 1 else keep_d
        in_keep[site.consumer] = idx.to(cons.weight.device)
        if t is not None:
            select[site.consumer] = t.to(cons.weight.device)[in_keep[site.consumer]]

    for name, keep in out_keep.items():
        _slice_out(mods[name], keep)
    for name, keep in in_keep.items():
        _slice_in(mods[name], keep)
    inputs: dict[str, tuple[int, int]] = {}
    for name, t_kept in select.items():
        lin = mods[name]
        lin.weight.mul_(t_kept.to(lin.weight.dtype).view(1, -1))
        nz = t_kept != 0
        total = model.get_submodule(name).in_features
        inputs[name] = (int(nz.sum()), total)
        if bool(nz.all()) or not bool(nz.any()):  # nothing to drop, or all dropped: keep the (zeroed) columns
            continue
        idx = torch.nonzero(nz).flatten()
        new = SelectLinear(idx, lin.out_features, bias=lin.bias is not None, device=lin.weight.device,
                           dtype=lin.weight.dtype)
        new.weight.copy_(lin.weight[:, idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
        new.train(lin.training)
        parent, attr = _module_parent(slim, name)
        setattr(parent, attr, new)

    units = {name: (int(out_keep[name].sum()), by_name[name].num_units) for name in scales}
    # Appendix-2 order: layers in execution order, a Linear's kept input features right before its outputs
    final: list[tuple[str, int, int]] = []
    for s in sites_all:
        if s.name in inputs:
            final.append((f"{s.name}:in", *inputs[s.name]))
        if s.name in units:
            final.append((s.name, *units[s.name]))
    for lab, (k, t) in inputs.items():  # the logits Linear (not a hidden site) with input scales
        if lab not in by_name:
            final.append((f"{lab}:in", k, t))
    res = SlimResult(model=slim, units=units, inputs=inputs, order=final)
    slim.rp_slim = True  # marks a model whose layer shapes differ from its architecture's (see checkpoint)
    if check:
        real = example if example is not None and example.dim() == x_ex.dim() else None
        res.max_abs_diff = check_equivalent(model, slim, by_name, scales, in_scales, x_ex, atol=atol,
                                            reference=reference, inputs=real)
    return res


def _scales_from_masks(model: nn.Module, masks: Any, sites: list) -> dict[str, Tensor]:
    """``{layer: 0/1 per unit}`` for :func:`slim_model` ``masks=``: 0 for a unit removed entirely in ``model`` or
    never read by its consumer (its consumer weights are all pruned); refuses half-removed units."""
    from robustprune.sparsity.units import dead_units, unit_removed

    md = {str(k): torch.as_tensor(v).bool() for k, v in dict(getattr(masks, "masks", masks)).items()}
    dead_rows = dead_units(md)
    scales: dict[str, Tensor] = {}
    for site in sites:
        if not site.supported:
            continue
        mod = model.get_submodule(site.name)
        gone = unit_removed(model, site.name, site.bn).cpu()
        if site.name in dead_rows:
            half = dead_rows[site.name].cpu() & ~gone
            if bool(half.any()):
                idx = torch.nonzero(half).flatten().tolist()
                raise ConfigError(
                    f"units {idx[:8]} of {site.name!r} have every weight pruned but a non-zero bias or BatchNorm, so "
                    "they still output a constant; apply the masks with MaskSet.apply(model) first (it removes "
                    "such units entirely)"
                )
        cons = model.get_submodule(site.consumer)
        cw = cons.weight.detach()
        cm = md.get(site.consumer)
        nz = cw != 0 if cm is None else (cw != 0) & cm.to(cw.device)
        read = nz.transpose(0, 1).reshape(site.num_units, -1).any(dim=1).cpu() if cw.dim() > 2 else \
            nz.reshape(cw.shape[0], site.num_units, site.positions).any(dim=2).any(dim=0).cpu()
        drop = gone | ~read
        if bool(drop.any()):
            scales[site.name] = (~drop).float().to(mod.weight.device)
    return scales



def _slice_out(mod: nn.Module, keep: Tensor) -> None:
    idx = torch.nonzero(keep.to(mod.weight.device)).flatten()
    if isinstance(mod, _BN):
        mod.weight = nn.Parameter(mod.weight.data[idx].clone(), requires_grad=mod.weight.requires_grad)
        mod.bias = nn.Parameter(mod.bias.data[idx].clone(), requires_grad=mod.bias.requires_grad)
        if mod.running_mean is not None:
            mod.running_mean = mod.running_mean[idx].clone()
            mod.running_var = mod.running_var[idx].clone()
        mod.num_features = int(idx.numel())
        return
    mod.weight = nn.Parameter(mod.weight.data[idx].clone(), requires_grad=mod.weight.requires_grad)
    if mod.bias is not None:
        mod.bias = nn.Parameter(mod.bias.data[idx].clone(), requires_grad=mod.bias.requires_grad)
    if isinstance(mod, nn.Conv2d):
        mod.out_channels = int(idx.numel())
    else:
        mod.out_features = int(idx.numel())


def _slice_in(mod: nn.Module, keep: Tensor) -> None:
    idx = torch.nonzero(keep.to(mod.weight.device)).flatten()
    mod.weight = nn.Parameter(mod.weight.data[:, idx].clone(), requires_grad=mod.weight.requires_grad)
    if isinstance(mod, nn.Conv2d):
        mod.in_channels = int(idx.numel())
    else:
        mod.in_features = int(idx.numel())

