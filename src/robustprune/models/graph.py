"""The dataflow between a model's Conv2d / Linear units, read with ``torch.fx`` symbolic tracing (no input needed).

Pruning a unit (a conv filter / a linear neuron) is only exact when everything coupled to it goes with it: its
bias, the BatchNorm that normalises it, and the input channels (or flattened input columns) of the layer that
reads it. :func:`unit_flows` finds these couplings for models written with modules (``nn.ReLU``, ``nn.Flatten``)
*and* in the common functional style (``torch.relu``, ``F.relu``, ``F.max_pool2d``, ``torch.flatten(x, 1)``,
``x.flatten(1)``, ``x.view(x.size(0), -1)``, ``x.reshape(x.shape[0], -1)``; not ``x.view(-1, 800)``,
whose hard-coded size breaks once units are cut). Every module without children
is a leaf (traced as one call, whatever its ``forward`` does).

A layer's chain is followed from its output through operations that act on each unit separately and map 0 to 0
(BatchNorm first, element-wise activations with ``f(0) = 0``, max/avg pooling, dropout, identity) and at most one
flatten, to the single Conv2d (groups = 1) or Linear that reads the units. Anything else ends the chain with a
``reason`` (a residual sum, a second reader, the model output, an unknown operation).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from robustprune.errors import ConfigError

#: element-wise activation modules with f(0) = 0 (a removed unit's zero stays zero)
ZERO_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
)
#: modules acting on each unit separately (pooling, dropout, identity)
PER_UNIT: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.Identity,
)
BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)

#: functions / tensor methods (by name) that act on each unit separately and keep 0 at 0
UNIT_FUNCTIONS = frozenset({
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "gelu", "silu",
    "mish", "hardswish", "tanh", "tanh_", "hardtanh", "hardtanh_", "softsign", "tanhshrink", "hardshrink",
    "softshrink", "max_pool1d", "max_pool2d", "_max_pool1d", "_max_pool2d", "avg_pool1d", "avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "_adaptive_max_pool1d", "_adaptive_max_pool2d", "dropout", "dropout1d", "dropout2d", "alpha_dropout",
    "feature_alpha_dropout", "contiguous", "clone", "detach",
})
_META_METHODS = frozenset({"size", "dim", "numel"})


@dataclass(frozen=True)
class Flow:
    """Where the output units of layer ``name`` go: ``norm`` (the BatchNorm right after it, or None),
    ``gate_at`` (the module whose output carries the units just before the activation: ``norm`` or the layer),
    ``consumer`` (the Conv2d/Linear that reads them), ``positions`` (consumer input features per unit: 1 for a conv
    consumer or a Linear fed directly, the flattened map size after a flatten), ``reason`` (None when the chain
    is supported, else why not)."""

    name: str
    kind: str  # "conv" | "linear"
    num_units: int
    norm: str | None
    gate_at: str
    consumer: str | None
    positions: int
    flattened: bool
    reason: str | None = None
    is_output: bool = False  # the layer's output is the model output (the logits layer)

    @property
    def supported(self) -> bool:
        return self.reason is None


class _LeafTracer(fx.Tracer):
    """Every module without children is a leaf: traced as one ``call_module``."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return next(iter(m.children()), None) is None


def trace_graph(model: nn.Module) -> fx.Graph:
    """The ``torch.fx`` graph of ``model`` (leaves: modules without children); ``ConfigError`` with what to change
    when the forward cannot be traced symbolically."""
    try:
        return _LeafTracer().trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"cannot trace {type(model).__name__}.forward with torch.fx ({type(exc).__name__}: {first}); "
            "write forward without Python control flow on tensor values (no `if x.sum() > 0`, no loops over "
            "x.shape), or use modules (nn.ReLU, nn.Flatten) so the layers can be followed"
        ) from None


def _name(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _is_meta_use(node: fx.Node) -> bool:
    """A use that reads only the tensor's metadata (``x.size(0)``, ``x.shape``, ``x.dim()``)."""
    if node.op == "call_method" and node.target in _META_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] in (
            "shape", "dtype", "device", "ndim"):
        return True
    return False


def _data_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if not _is_meta_use(u)]


def _other_nodes(user: fx.Node, node: fx.Node, *, allow_batch: bool = False) -> bool:
    """Whether ``user`` takes another tensor besides ``node`` (``allow_batch``: node-valued sizes from metadata
    are fine, as in ``x.view(x.size(0), -1)``)."""
    found = []
    fx.node.map_arg((user.args, user.kwargs), lambda n: found.append(n))
    for n in found:
        if n is node:
            continue
        if allow_batch and (_is_meta_use(n) or (n.op == "call_function" and n.target is operator.getitem
                                                and isinstance(n.args[0], fx.Node) and _is_meta_use(n.args[0]))):
            continue
        return True
    return False


def _flatten_call(user: fx.Node, node: fx.Node) -> bool | None:
    """True: ``user`` flattens ``node`` to (batch, features); False: a reshape that is not that; None: not a
    reshape at all."""
    name = _name(user.target)
    if name not in ("flatten", "view", "reshape"):
        return None
    if not user.args or user.args[0] is not node or _other_nodes(user, node, allow_batch=True):
        return False
    rest = list(user.args[1:])
    if name == "flatten":
        start = rest[0] if rest else user.kwargs.get("start_dim", 0)
        end = rest[1] if len(rest) > 1 else user.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    if len(rest) != 2:
        return False
    a, b = rest
    return b == -1  # (batch, -1); a hard-coded feature count (-1, 800) would break once units are cut


def unit_flows(model: nn.Module, graph: fx.Graph | None = None) -> list[Flow]:
    """One :class:`Flow` per Conv2d/Linear call of ``model``, in graph order (see the module docstring). Raises
    ``ConfigError`` when the model cannot be traced."""
    g = graph if graph is not None else trace_graph(model)
    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    for n in g.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    flows: list[Flow] = []
    for n in g.nodes:
        if n.op != "call_module" or not isinstance(mods.get(str(n.target)), (nn.Conv2d, nn.Linear)):
            continue
        flows.append(_follow(n, mods, calls))
    return flows


def _follow(start: fx.Node, mods: dict[str, nn.Module], calls: dict[str, int]) -> Flow:
    name = str(start.target)
    layer = mods[name]
    kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
    units = layer.out_channels if kind == "conv" else layer.out_features
    norm: str | None = None
    flattened = False
    seen_other = False

    def flow(reason: str | None, consumer: str | None = None, positions: int = 1, is_output: bool = False) -> Flow:
        return Flow(name, kind, units, norm, norm or name, consumer, positions, flattened, reason, is_output)

    if calls.get(name, 0) > 1:
        return flow("the layer is called more than once per forward pass")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return flow("grouped convolution")
    node = start
    while True:
        users = _data_users(node)
        if any(u.op == "output" for u in users):
            return flow("its output reaches the model output without another weight layer", is_output=node is start)
        if len(users) != 1:
            if not users:
                return flow("its output is used by no operation")
            if any(u.op == "call_function" for u in users):
                return flow(f"its output is used by {len(users)} operations (e.g. a residual sum or shortcut)")
            return flow(f"its output is used by {len(users)} modules (e.g. a residual shortcut)")
        u = users[0]
        if u.op == "call_module":
            target = str(u.target)
            m = mods[target]
            if calls.get(target, 0) > 1:
                return flow(f"module {target!r} is called more than once per forward pass")
            if isinstance(m, BATCHNORMS) and norm is None and not seen_other and not flattened:
                if m.num_features != units:
                    return flow(f"BatchNorm {target!r} has {m.num_features} features for {units} units")
                norm = target
            elif isinstance(m, ZERO_PRESERVING + PER_UNIT):
                seen_other = True
            elif isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1 or flattened:
                    return flow(f"Flatten {target!r} does not keep units on dim 1")
                flattened = seen_other = True
            elif isinstance(m, nn.Conv2d):
                if flattened or m.groups != 1 or m.in_channels != units:
                    return flow(f"consumer conv {target!r} does not read the units as input channels")
                return flow(None, target, 1)
            elif isinstance(m, nn.Linear):
                in_f = m.in_features
                if not flattened and kind == "conv":
                    return flow(f"linear {target!r} reads a conv output without a flatten")
                if in_f % units or (not flattened and in_f != units):
                    return flow(f"consumer linear {target!r} does not read the units as input features")
                return flow(None, target, in_f // units)
            else:
                return flow(f"{type(m).__name__} {target!r} between the layer and its consumer")
        elif u.op in ("call_function", "call_method"):
            fname = _name(u.target)
            flat = _flatten_call(u, node)
            if flat is not None:
                if not flat or flattened:
                    return flow(f"`{fname}` in forward does not flatten to (batch, -1) (a hard-coded size breaks "
                                "once units are removed); write torch.flatten(x, 1) or x.view(x.size(0), -1)")
                flattened = seen_other = True
            elif fname in UNIT_FUNCTIONS and u.args and u.args[0] is node and not _other_nodes(u, node):
                seen_other = True
            elif fname in ("add", "iadd", "__add__", "cat", "sub", "mul"):
                return flow(f"its output is used by an operation outside any module ({fname}, e.g. a residual sum)")
            else:
                return flow(f"`{fname}` in forward between the layer and its consumer is not known to act on each "
                            "unit separately; use a module (e.g. nn.ReLU, nn.MaxPool2d) or a torch.nn.functional "
                            "activation/pooling")
        else:
            return flow(f"{u.op} {u.target} between the layer and its consumer")
        node = u


def norm_after(model: nn.Module, graph: fx.Graph | None = None) -> dict[str, str]:
    """``{layer: BatchNorm}`` for every Conv2d/Linear whose output goes (only) into a BatchNorm with one feature per
    unit: the normalisation a pruned unit must lose with its weights and bias. Raises ``ConfigError`` when the
    model cannot be traced."""
    g = graph if graph is not None else trace_graph(model)
    mods = dict(model.named_modules())
    out: dict[str, str] = {}
    for n in g.nodes:
        if n.op != "call_module" or not isinstance(mods.get(str(n.target)), (nn.Conv2d, nn.Linear)):
            continue
        layer = mods[str(n.target)]
        users = _data_users(n)
        if len(users) == 1 and users[0].op == "call_module":
            bn = mods.get(str(users[0].target))
            units = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            if isinstance(bn, BATCHNORMS) and bn.num_features == units:
                out[str(n.target)] = str(users[0].target)
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
