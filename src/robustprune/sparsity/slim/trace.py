"""Which output units of a model can be cut, and what is coupled to them (producer, BatchNorm, consumer).

:func:`unit_sites` reads the couplings from the ``torch.fx`` graph (:mod:`robustprune.models.graph`; functional
ops such as ``torch.relu`` or ``torch.flatten(x, 1)`` included) and measures each unit's spatial size in one forward
pass; for a model fx cannot trace it follows each hidden ``Conv2d`` / ``Linear`` output by tensor identity
through forward hooks instead -- through modules that act on each unit separately -- BatchNorm (sliced),
element-wise activations with ``f(0) = 0`` (ReLU, LeakyReLU, ELU, GELU, SiLU, Tanh, ...), max/avg pooling,
Dropout, Identity, ``Flatten(1)`` -- to the single ``Conv2d`` (groups = 1) or ``Linear`` that consumes them.
Such a *site* is supported: the producer's output units, its BatchNorm and the consumer's input channels (or,
after a ``Flatten``, the consumer's input columns ``c*P .. c*P+P-1`` for a unit with ``P`` positions) are cut
together. Anything else breaks the chain and makes the site unsupported, with the reason: an output used by two
modules (a residual shortcut), used by no module (a functional residual sum ``out + shortcut``), or passing
through a module we cannot reason about. On the sequential models (``lenet5-caffe``, ``cnn5``, ``vgg*``,
``lenet-*-w``) every hidden layer is supported; on ResNets only the inner conv of each block
(``layerX.Y.conv1``) is, whose output feeds ``bn1 -> relu1 -> conv2`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from robustprune.errors import ConfigError
from robustprune.models.graph import BATCHNORMS as _BN
from robustprune.models.graph import PER_UNIT, ZERO_PRESERVING, trace_graph, unit_flows
from robustprune.utils import first_tensor

__all__ = ["PER_UNIT", "ZERO_PRESERVING", "UnitSite", "example_input", "supported_sites", "unit_sites",
           "units_per_layer"]


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
            calls.append(_Call(name, mod, first_tensor(inputs), first_tensor(output)))
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
    :class:`UnitSite`), in execution order.

    The couplings are read from the ``torch.fx`` graph (:func:`robustprune.models.graph.unit_flows`), so models
    written in the functional style (``torch.relu``, ``torch.flatten``, ``x.view(x.size(0), -1)``) work; one
    forward pass in eval mode on ``example`` (2 rows) measures the spatial size of each unit. A model that
    ``torch.fx`` cannot trace falls back to following tensors through forward hooks (modules only)."""
    x = example_input(model, example)
    try:
        graph = trace_graph(model)
    except ConfigError as exc:
        return _hook_sites(model, x, fx_error=str(exc))
    flows = unit_flows(model, graph)
    sizes = _output_positions(model, x, [f.name for f in flows])
    sites: list[UnitSite] = []
    for f in flows:
        if f.is_output:
            continue  # the logits layer
        if f.name not in sizes:
            continue  # not run in the forward pass
        sites.append(UnitSite(f.name, f.kind, f.num_units, f.gate_at, f.norm, f.consumer if f.supported else None,
                              f.positions if f.supported else 1, sizes[f.name], f.reason))
    return sites


def _output_positions(model: nn.Module, x: Tensor, names: Sequence[str]) -> dict[str, int]:
    """``{layer: spatial positions of one output unit}`` from one forward pass (eval mode, modes restored)."""
    sizes: dict[str, int] = {}
    handles = []
    for name in names:
        def hook(_m, _i, out, name=name):
            t = first_tensor(out)
            sizes[name] = int(math.prod(t.shape[2:])) if t is not None and t.dim() > 2 else 1
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, t in flags:
            m.training = t
    return sizes


def _hook_sites(model: nn.Module, x: Tensor, fx_error: str | None = None) -> list[UnitSite]:
    """:func:`unit_sites` by following tensors through forward hooks (for models torch.fx cannot trace)."""
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
        if fx_error and site.reason is not None and "outside any module" in site.reason:
            site = replace(site, reason=f"{site.reason}; and {fx_error[:1].lower()}{fx_error[1:]}")
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


def units_per_layer(sites: Sequence[UnitSite], keep: Mapping[str, Tensor]) -> dict[str, tuple[int, int]]:
    """``{layer: (kept, total)}`` from boolean keep vectors (no model surgery)."""
    out = {}
    for s in sites:
        if s.name in keep:
            out[s.name] = (int(torch.as_tensor(keep[s.name]).bool().sum()), s.num_units)
    return out
