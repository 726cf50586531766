"""Physical removal of pruned output units: a smaller *dense* model whose logits equal the masked model's.

Structured pruning methods (Beta-Bernoulli dropout, VIB, filter pruning) switch off whole output units of a
layer (a Conv2d filter / a Linear neuron). Zeros in a mask save nothing on dense hardware; this module cuts the
units out so that the FLOPs, activation memory and latency of the smaller model can be *measured*.

**What can be cut (who is coupled).** :func:`unit_sites` traces one forward pass (forward hooks, eval mode) and
follows each hidden ``Conv2d`` / ``Linear`` output by tensor identity through modules that act on each unit
separately -- BatchNorm (sliced), element-wise activations with ``f(0) = 0`` (ReLU, LeakyReLU, ELU, GELU,
SiLU, Tanh, ...), max/avg pooling, Dropout, Identity, ``Flatten(1)`` -- to the single ``Conv2d`` (groups = 1)
or ``Linear`` that consumes them. Such a *site* is supported: the producer's output units, its BatchNorm and
the consumer's input channels (or, after a ``Flatten``, the consumer's input columns ``c*P .. c*P+P-1`` for a
unit with ``P`` positions) are cut together. Anything else breaks the chain and makes the site unsupported, with
the reason: an output used by two modules (a residual shortcut), used by no module (a functional residual sum
``out + shortcut``), or passing through a module we cannot reason about. On the sequential models
(``lenet5-caffe``, ``cnn5``, ``vgg*``, ``lenet-*-w``) every hidden layer is supported; on ResNets only the inner
conv of each block (``layerX.Y.conv1``) is, whose output feeds ``bn1 -> relu1 -> conv2`` alone.

**What the masked model is (how to cut).** ``unit_scales[name]`` is a vector with one factor per output unit of
layer ``name``: the masked model multiplies the unit *after* its BatchNorm (or after the layer itself when no
BatchNorm follows), before the activation -- where :mod:`robustprune.methods.bayesian` puts its gates. A factor
0 removes the unit; a non-zero factor is folded into the BatchNorm's affine parameters (``gamma, beta``) or into
the layer's weight row and bias, which is exact. ``input_scales[name]`` multiplies the *input features* of a
``Linear`` fed by a ``Flatten`` (the Beta-Bernoulli gate on LeNet's 800 flattened features); non-zero factors
are folded into the weight columns, zero ones dropped with :class:`SelectLinear` (an ``nn.Linear`` that first
picks the kept input features), and a unit whose every flattened feature is dropped is removed upstream too.

:func:`slim_model` checks by default that the slim model's logits equal the masked model's on random inputs
(``atol`` relative to the logit scale) and raises when they do not -- so a structure the tracer misread can never
produce a silently wrong model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from robustprune.errors import ConfigError, RobustPruneError

#: element-wise activations with f(0) = 0 (a removed unit's zero stays zero)
ZERO_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
)
PER_UNIT: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.Identity,
)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


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


# ----------------------------------------------------------------------------------------------- tracing
@dataclass(frozen=True)
class UnitSite:
    """How the output units of hidden layer ``name`` are coupled.

    ``gate_at``: the module whose output carries the units just before the activation (the BatchNorm right
    after ``name`` when there is one, else ``name``) -- where a unit mask multiplies them. ``consumer``: the
    Conv2d/Linear that reads them; ``positions``: how many consumer input features one unit becomes (1 for a
    conv consumer, ``H*W`` of the pooled map for a Linear after ``Flatten``); ``out_positions``: spatial size of
    the unit at ``gate_at`` (``H*W`` for a conv output, 1 for a linear one). ``reason`` is None when the site is
    supported, else why it is not.
    """

    name: str
    kind: str  # "conv" | "linear"
    num_units: int
    gate_at: str
    bn: str | None
    consumer: str | None
    positions: int
    out_positions: int
    reason: str | None = None

    @property
    def supported(self) -> bool:
        return self.reason is None


@dataclass
class _Call:
    name: str
    module: nn.Module
    inp: Tensor | None
    out: Tensor | None


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], Tensor):
        return obj[0]
    return None


def example_input(model: nn.Module, example: Tensor | None = None, n: int = 2) -> Tensor:
    """``example`` (its first ``n`` rows), else a random batch shaped from ``model.arch_config`` (set by
    :func:`robustprune.models.create_model`); raises when neither is available."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    if example is not None:
        return example[:n].to(dev)
    cfg = getattr(model, "arch_config", None)
    if not cfg:
        raise ConfigError("cannot infer the input shape of this model; pass example=<a batch of inputs>")
    size = cfg["input_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, int(cfg["in_channels"]), h, w), generator=g).to(dev)


class _FunctionalUses(TorchFunctionMode):
    """Records the tensor inputs of every torch operation run *outside* leaf-module calls (e.g. the residual
    sum ``out + shortcut`` in a block's ``forward``), so a tensor also used that way is not cut."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.inputs: list[tuple[Tensor, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth == 0:
            found: list[Tensor] = []
            for a in list(args) + list(kwargs.values()):
                if isinstance(a, Tensor):
                    found.append(a)
                elif isinstance(a, (tuple, list)):
                    found.extend(v for v in a if isinstance(v, Tensor))
            if found:
                self.inputs.append(tuple(found))
        return func(*args, **kwargs)


def _trace(model: nn.Module, x: Tensor) -> tuple[list[_Call], Tensor, dict[str, int], _FunctionalUses]:
    calls: list[_Call] = []
    counts: dict[str, int] = {}
    handles = []
    mode = _FunctionalUses()

    def pre(_m: nn.Module, _args: Any) -> None:
        mode.depth += 1

    def make(name: str):
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            mode.depth -= 1
            counts[name] = counts.get(name, 0) + 1
            calls.append(_Call(name, mod, _first_tensor(inputs), _first_tensor(output)))
        return hook

    for name, mod in model.named_modules():
        if name and next(iter(mod.children()), None) is None:
            handles.append(mod.register_forward_pre_hook(pre, prepend=True))
            handles.append(mod.register_forward_hook(make(name)))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), mode:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        for m, t in flags:
            m.training = t
    return calls, out, counts, mode


def unit_sites(model: nn.Module, example: Tensor | None = None) -> list[UnitSite]:
    """Every hidden Conv2d/Linear of ``model`` (not the logits layer) with how its units are coupled (see
    :class:`UnitSite`), in execution order. One forward pass in eval mode on ``example`` (2 rows)."""
    x = example_input(model, example)
    calls, out, counts, funcs = _trace(model, x)
    weight_idx = [i for i, c in enumerate(calls) if isinstance(c.module, (nn.Conv2d, nn.Linear))]
    sites: list[UnitSite] = []
    for i in weight_idx:
        c = calls[i]
        if c.out is out:
            continue  # the logits layer
        kind = "conv" if isinstance(c.module, nn.Conv2d) else "linear"
        units = c.module.out_channels if kind == "conv" else c.module.out_features
        out_pos = int(math.prod(c.out.shape[2:])) if c.out is not None and c.out.dim() > 2 else 1
        site = _follow(calls, i, out, counts, funcs, kind, units, out_pos)
        sites.append(site)
    return sites


def _follow(calls: list[_Call], i: int, out: Tensor, counts: dict[str, int], funcs: _FunctionalUses, kind: str,
            units: int, out_pos: int) -> UnitSite:
    c = calls[i]
    name = c.name

    def bad(reason: str, bn: str | None = None, gate_at: str | None = None) -> UnitSite:
        return UnitSite(name, kind, units, gate_at or name, bn, None, 1, out_pos, reason)

    if counts.get(name, 0) > 1:
        return bad("the layer is called more than once per forward pass")
    if isinstance(c.module, nn.Conv2d) and c.module.groups != 1:
        return bad("grouped convolution")
    t, j = c.out, i
    bn: str | None = None
    gate_at = name
    positions = 1
    flattened = False
    seen_other = False  # anything after the layer but BN (BN must come first to take the gate)
    while True:
        if t is None:
            return bad("the layer's output is not a tensor", bn, gate_at)
        if t is out:
            return bad("its output reaches the model output without another weight layer", bn, gate_at)
        if any(a is t for args in funcs.inputs for a in args):
            return bad("its output is used by an operation outside any module (e.g. a residual sum)", bn, gate_at)
        users = [k for k in range(j + 1, len(calls)) if calls[k].inp is t]
        if len(users) != 1:
            why = ("its output is used by no module (e.g. a residual sum)" if not users
                   else f"its output is used by {len(users)} modules (e.g. a residual shortcut)")
            return bad(why, bn, gate_at)
        k = users[0]
        u = calls[k]
        if counts.get(u.name, 0) > 1:
            return bad(f"module {u.name!r} is called more than once per forward pass", bn, gate_at)
        m = u.module
        if isinstance(m, _BN) and not seen_other and bn is None and not flattened:
            if m.num_features != units:
                return bad(f"BatchNorm {u.name!r} has {m.num_features} features for {units} units", bn, gate_at)
            bn, gate_at = u.name, u.name
        elif isinstance(m, ZERO_PRESERVING + PER_UNIT):
            seen_other = True
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1 or u.inp is None or u.inp.shape[1] != units:
                return bad(f"Flatten {u.name!r} does not keep units on dim 1", bn, gate_at)
            positions = int(math.prod(u.inp.shape[2:])) if u.inp.dim() > 2 else 1
            flattened = True
            seen_other = True
        elif isinstance(m, nn.Conv2d):
            if flattened or m.groups != 1 or m.in_channels != units:
                return bad(f"consumer conv {u.name!r} does not read the units as input channels", bn, gate_at)
            return UnitSite(name, kind, units, gate_at, bn, u.name, 1, out_pos, None)
        elif isinstance(m, nn.Linear):
            if m.in_features != units * positions or (u.inp is not None and u.inp.dim() != 2):
                return bad(f"consumer linear {u.name!r} does not read the units as input features", bn, gate_at)
            return UnitSite(name, kind, units, gate_at, bn, u.name, positions, out_pos, None)
        else:
            return bad(f"{type(m).__name__} {u.name!r} between the layer and its consumer", bn, gate_at)
        t, j = u.out, k


def supported_sites(model: nn.Module, example: Tensor | None = None) -> dict[str, UnitSite]:
    """The supported sites of :func:`unit_sites`, keyed by layer name."""
    return {s.name: s for s in unit_sites(model, example) if s.supported}


# ----------------------------------------------------------------------------------------------- slimming
@dataclass
class SlimResult:
    """The slim model and what was kept.

    ``units[name] = (kept, total)`` output units of each gated layer; ``inputs[name] = (kept, total)`` input
    features of each Linear with input scales; ``order``: ``(label, kept, total)`` in the order of seed 000
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
        """Fraction of pruned units over all counted units (seed 000's "Sparsity (%)" / 100)."""
        tot = sum(t for _, _, t in self.order)
        return 1.0 - sum(k for _, k, _ in self.order) / tot if tot else 0.0


def _module_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _check_vector(v: Any, n: int, what: str) -> Tensor:
    if not isinstance(v, Tensor):
        v = torch.as_tensor(v)
    v = v.detach().flatten().float()
    if v.numel() != n:
        raise ConfigError(f"{what} has {v.numel()} entries but the layer has {n}; use a mask computed for this model")
    if not bool(torch.isfinite(v).all()):
        raise ConfigError(f"{what} has non-finite entries")
    return v


def masked_forward_hooks(model: nn.Module, sites: Mapping[str, UnitSite], unit_scales: Mapping[str, Tensor],
                         input_scales: Mapping[str, Tensor] | None = None) -> list[Any]:
    """Register hooks that apply ``unit_scales`` / ``input_scales`` to ``model`` (the *masked* reference model
    of :func:`slim_model`); returns the handles (call ``.remove()`` on each)."""
    handles = []
    for name, s in unit_scales.items():
        site = sites[name]
        mod = model.get_submodule(site.gate_at)

        def hook(_m, _i, out, s=s):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * s.to(out.device, out.dtype).view(shape)

        handles.append(mod.register_forward_hook(hook))
    for name, t in (input_scales or {}).items():
        mod = model.get_submodule(name)

        def pre(_m, args, t=t):
            return (args[0] * t.to(args[0].device, args[0].dtype).view(1, -1),) + tuple(args[1:])

        handles.append(mod.register_forward_pre_hook(pre))
    return handles


@torch.no_grad()
def slim_model(
    model: nn.Module,
    unit_scales: Mapping[str, Any],
    input_scales: Mapping[str, Any] | None = None,
    *,
    example: Tensor | None = None,
    check: bool = True,
    atol: float = 1e-5,
) -> SlimResult:
    """A new, smaller dense model equal to ``model`` with ``unit_scales`` / ``input_scales`` applied (module
    docstring). ``model`` is not changed (it must carry no gates or hooks of its own: pass a plain copy).

    ``unit_scales``: ``{layer name: one factor per output unit}`` (bool masks work: True = 1); every named layer
    must be a supported site (:func:`unit_sites`), else ``ConfigError`` with the reason. ``input_scales``:
    ``{Linear name: one factor per input feature}`` for Linears fed through ``Flatten``. ``check``: compare the
    logits of the slim and the masked model on random inputs shaped like ``example`` and raise
    ``RobustPruneError`` when they differ by more than ``atol * max(1, |logits|_max)``.
    """
    input_scales = dict(input_scales or {})
    x_ex = example_input(model, example)
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
    if check:
        res.max_abs_diff = check_equivalent(model, slim, by_name, scales, in_scales, x_ex, atol=atol)
    return res


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
    atol: float = 1e-5,
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
        if prod.bias is not None and site.bn is None:
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


@torch.no_grad()
def check_equivalent(model: nn.Module, slim: nn.Module, sites: Mapping[str, UnitSite],
                     unit_scales: Mapping[str, Tensor], input_scales: Mapping[str, Tensor], example: Tensor,
                     *, atol: float = 1e-5, n: int = 8) -> float:
    """Max |logits(slim) - logits(masked model)| on ``n`` random inputs shaped like ``example`` (eval mode);
    raises ``RobustPruneError`` above ``atol * max(1, max |logits|)``."""
    g = torch.Generator().manual_seed(1234)
    x = torch.rand((n, *example.shape[1:]), generator=g).to(example.device, example.dtype)
    ref_model = copy.deepcopy(model)
    handles = masked_forward_hooks(ref_model, sites, unit_scales, input_scales)
    try:
        ref_model.eval()
        ref = ref_model(x)
    finally:
        for h in handles:
            h.remove()
    flags = [(m, m.training) for m in slim.modules()]
    slim.eval()
    try:
        got = slim(x)
    finally:
        for m, t in flags:
            m.training = t
    diff = float((got - ref).abs().max())
    tol = atol * max(1.0, float(ref.abs().max()))
    if not diff <= tol:
        raise RobustPruneError(
            f"the slim model's logits differ from the masked model's by {diff:.3g} (> {tol:.3g}); this model's "
            "structure is not supported for physical removal -- report unit counts from the masks instead"
        )
    return diff


def units_per_layer(sites: Sequence[UnitSite], keep: Mapping[str, Tensor]) -> dict[str, tuple[int, int]]:
    """``{layer: (kept, total)}`` from boolean keep vectors (no model surgery)."""
    out = {}
    for s in sites:
        if s.name in keep:
            out[s.name] = (int(torch.as_tensor(keep[s.name]).bool().sum()), s.num_units)
    return out
