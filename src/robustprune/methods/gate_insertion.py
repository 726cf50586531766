"""Where gates go and how they come out: :func:`insert_gates` (forward hooks, the model's ``forward`` untouched),
:class:`GateSet` (a view of a model's gates: KL, masks, units), :func:`remove_gates`, :func:`fold_gates` (the gated
model as a plain checkpoint of the same architecture) and :func:`gate_param_groups` (a larger learning rate for the
masks)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.methods.gates import GATE_ATTR, BetaBernoulliGate, UnitGate
from robustprune.sparsity.slim import SlimResult, UnitSite, example_input, fold_unit_scales, slim_model, unit_sites

def _gate_factory(gate: str | type | Callable[..., UnitGate]) -> Callable[..., UnitGate]:
    if isinstance(gate, str):
        key = gate.lower()
        if key in ("bbd", "beta-bernoulli", "bb"):
            return BetaBernoulliGate
        if key == "vib":
            from robustprune.methods.vib import VIBGate  # vib imports only gates: no cycle

            return VIBGate
        raise ConfigError(f"unknown gate type {gate!r}; choose 'bbd' (Beta-Bernoulli dropout) or 'vib'")
    if callable(gate):
        return gate
    raise ConfigError(f"gate must be 'bbd', 'vib' or a UnitGate class, got {gate!r}")



@dataclass(frozen=True)
class GateInfo:
    """Where a gate acts: ``kind`` "output" (units of ``layer``, hooked on ``module``) or "input" (input features
    of the Linear ``layer``, a pre-hook on it); ``site`` the traced coupling of the producing layer."""

    key: str
    kind: str
    layer: str
    module: str
    site: UnitSite


class GateBank(nn.Module):
    """Holds the gates of a model so they are parameters of it. A pass-through: ``forward(x) = x``, because an
    ``nn.Sequential`` model calls every child (the gates themselves act through hooks, never as a module call)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = nn.ModuleDict()
        self.info: dict[str, GateInfo] = {}

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x

    def extra_repr(self) -> str:
        return "pass-through container of unit gates (applied by forward hooks)"


class _OutputGateHook:
    """Forward hook returning the gated output. A callable object (not a closure), so ``copy.deepcopy`` of the
    model maps it to the copied gate."""

    rp_gate_hook = True

    def __init__(self, gate: UnitGate) -> None:
        self.gate = gate

    def __call__(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        return self.gate.gate_tensor(output, 1)


class _InputGateHook:
    rp_gate_hook = True

    def __init__(self, gate: UnitGate) -> None:
        self.gate = gate

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.gate.gate_tensor(args[0], 1),) + tuple(args[1:])


def _key(prefix: str, name: str) -> str:
    return f"{prefix}_{name.replace('.', '_')}"


def insert_gates(
    model: nn.Module,
    gate: str | type | Callable[..., UnitGate] = "bbd",
    *,
    example: Tensor | None = None,
    layers: Sequence[str] | None = None,
    inputs: bool = True,
    **gate_kwargs: Any,
) -> GateSet:
    """Put a gate on the output units of every supported hidden Conv2d/Linear of ``model`` (in place).

    ``layers``: restrict to these layer names (each must be a supported site, else ``ConfigError`` with the
    reason). ``inputs``: also gate the input features of a Linear fed through ``Flatten`` of a spatial map
    (LeNet's 800 features). ``gate``: "bbd" (:class:`BetaBernoulliGate`), "vib"
    (:class:`robustprune.methods.vib.VIBGate`) or a :class:`UnitGate` class; ``gate_kwargs`` go to it.
    ``example``: a batch for tracing (default: from ``model.arch_config``). ResNets: only inner block convs.
    """
    if hasattr(model, GATE_ATTR):
        raise ConfigError("the model already has gates; remove them first (remove_gates(model))")
    factory = _gate_factory(gate)
    x = example_input(model, example)
    sites = unit_sites(model, x)
    by_name = {s.name: s for s in sites}
    if layers is not None:
        wanted = [str(n) for n in layers]
        for n in wanted:
            if n not in by_name:
                raise ConfigError(f"{n!r} is not a hidden Conv2d/Linear layer; hidden layers: {', '.join(by_name)}")
            if not by_name[n].supported:
                raise ConfigError(f"cannot gate {n!r}: {by_name[n].reason}")
        chosen = [s for s in sites if s.name in wanted]
    else:
        chosen = [s for s in sites if s.supported]
    if not chosen:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in sites[:3])
        raise ConfigError(f"no layer of this model can carry unit gates ({reasons or 'no hidden layers'})")
    bank = GateBank()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    mods = dict(model.named_modules())
    for s in chosen:
        key = _key("out", s.name)
        g = factory(s.num_units, s.out_positions, **gate_kwargs).to(dev)
        bank.gates[key] = g
        bank.info[key] = GateInfo(key, "output", s.name, s.gate_at, s)
        mods[s.gate_at].register_forward_hook(_OutputGateHook(g))
        if inputs and s.positions > 1 and s.consumer is not None:
            ikey = _key("in", s.consumer)
            lin = mods[s.consumer]
            gi = factory(lin.in_features, 1, **gate_kwargs).to(dev)
            bank.gates[ikey] = gi
            bank.info[ikey] = GateInfo(ikey, "input", s.consumer, s.consumer, s)
            lin.register_forward_pre_hook(_InputGateHook(gi))
    model.add_module(GATE_ATTR, bank)
    return GateSet(model)


def _strip_hooks(model: nn.Module) -> None:
    for mod in model.modules():
        for d in (mod._forward_hooks, mod._forward_pre_hooks):
            for hid in [k for k, h in d.items() if getattr(h, "rp_gate_hook", False)]:
                del d[hid]


def remove_gates(model: nn.Module) -> None:
    """Remove the gates (hooks and ``model.rp_gates``) from ``model`` in place; the weights are unchanged
    (the masks are *not* folded in -- use :meth:`GateSet.slim` for that)."""
    _strip_hooks(model)
    if hasattr(model, GATE_ATTR):
        delattr(model, GATE_ATTR)


class GateSet:
    """A view of the gates of ``model`` (made by :func:`insert_gates`; ``GateSet(model)`` finds them again, e.g.
    on a deep copy)."""

    def __init__(self, model: nn.Module) -> None:
        bank = getattr(model, GATE_ATTR, None)
        if not isinstance(bank, GateBank):
            raise ConfigError("the model has no unit gates; add them with insert_gates(model)")
        self.model = model
        self.bank = bank

    # ------------------------------------------------------------------ access
    def items(self) -> Iterator[tuple[GateInfo, UnitGate]]:
        for key, info in self.bank.info.items():
            yield info, self.bank.gates[key]

    @property
    def gates(self) -> list[UnitGate]:
        return [g for _, g in self.items()]

    def parameters(self) -> list[nn.Parameter]:
        return list(self.bank.parameters())

    def __len__(self) -> int:
        return len(self.bank.info)

    # ------------------------------------------------------------------ KL and masks
    def kl(self) -> Tensor:
        """Sum of the gates' KL terms (unscaled)."""
        return torch.stack([g.kl() for g in self.gates]).sum()

    @torch.no_grad()
    def output_scales(self) -> dict[str, Tensor]:
        """``{layer: test-time multiplier per output unit}`` (0 = pruned)."""
        return {i.layer: g.test_scale().detach().clone() for i, g in self.items() if i.kind == "output"}

    @torch.no_grad()
    def input_scales(self) -> dict[str, Tensor]:
        """``{Linear: test-time multiplier per input feature}`` for the input gates."""
        return {i.layer: g.test_scale().detach().clone() for i, g in self.items() if i.kind == "input"}

    @torch.no_grad()
    def units(self) -> list[tuple[str, int, int]]:
        """``(label, kept, total)`` per gate in Appendix-2 order (an input gate is labelled ``<linear>:in``)."""
        return [(i.layer + (":in" if i.kind == "input" else ""), int(g.keep().sum()), g.num_units)
                for i, g in self.items()]

    def units_string(self, dense: bool = False) -> str:
        return "-".join(str(t if dense else k) for _, k, t in self.units())

    def unit_sparsity(self) -> float:
        """Fraction of gated units the test-time masks prune (Madaan2020's "Sparsity")."""
        u = self.units()
        tot = sum(t for _, _, t in u)
        return 1.0 - sum(k for _, k, _ in u) / tot if tot else 0.0

    # ------------------------------------------------------------------ training state
    def freeze(self, frozen: bool = True) -> None:
        """Freeze the masks (deterministic test-time masks in training too, no gradients): PAT's second phase."""
        for g in self.gates:
            g.freeze(frozen)

    def set_generator(self, generator: torch.Generator | None) -> None:
        for g in self.gates:
            g.generator = generator

    # ------------------------------------------------------------------ export
    def plain_copy(self) -> nn.Module:
        """A deep copy of the model without gates (weights as they are)."""
        m = copy.deepcopy(self.model)
        remove_gates(m)
        return m

    def slim(self, *, example: Tensor | None = None, check: bool = True, atol: float | None = None) -> SlimResult:
        """The physically smaller dense model equal to the gated model in eval mode
        (:func:`robustprune.sparsity.slim.slim_model` with the test-time masks folded in)."""
        return slim_model(self.plain_copy(), self.output_scales(), self.input_scales(), example=example,
                          check=check, atol=atol)


def fold_gates(model: nn.Module, *, example: Tensor | None = None, check: bool = True,
               atol: float | None = None) -> tuple[nn.Module, dict[str, Tensor]]:
    """The gated ``model`` (eval mode: test-time masks) as a plain model of the same architecture, with the masks
    folded into the weights and pruned units' weights exactly zero, plus the weight masks
    (:func:`robustprune.sparsity.slim.fold_unit_scales`); what a study stores as the pruned checkpoint."""
    gates = GateSet(model)
    return fold_unit_scales(gates.plain_copy(), gates.output_scales(), gates.input_scales(), example=example,
                            check=check, atol=atol)


def gate_param_groups(model: nn.Module, gates: GateSet, lr: float, factor: float = 10.0,
                      gate_weight_decay: float = 0.0) -> list[dict]:
    """Optimiser groups for ``fit(param_groups=...)``: the weights at ``lr``, the (trainable) mask parameters at
    ``factor * lr`` without weight decay (Madaan2020 App. C: variational parameters learn 10x faster)."""
    gate_ids = {id(p) for p in gates.parameters()}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
    masks = [p for p in gates.parameters() if p.requires_grad]
    groups: list[dict] = [{"params": weights, "lr": float(lr)}]
    if masks:
        groups.append({"params": masks, "lr": float(lr) * float(factor), "weight_decay": float(gate_weight_decay)})
    return groups


