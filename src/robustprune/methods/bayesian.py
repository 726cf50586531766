"""Beta-Bernoulli dropout masks (Lee et al. 2019) and the recipes of seed 000: BP, ANP, ANP-VS, PAT, AT-VS.

**Gates.** A :class:`BetaBernoulliGate` multiplies each output unit (Conv2d filter / Linear neuron) of a hidden
layer by a mask ``z_k``. Generative model (seed 000 App. A, Eq. 8): ``pi_k ~ Beta(alpha/K, 1)``,
``z_nk | pi_k ~ Bernoulli(pi_k)``. Variational posterior: ``q(pi_k) = Kumaraswamy(a_k, b_k)``,
``q(pi) = a b pi^(a-1) (1 - pi^a)^(b-1)``, with ``q(z | pi) = p(z | pi)``, so the KL of the ELBO is over ``pi`` only
and has a closed form (Nalisnick & Smyth 2016; Lee et al. 2019; seed 000 Eq. 10 -- the Beta(alpha, beta) formula's
series term vanishes for beta = 1)::

    KL[q(pi_k) || p(pi_k)] = (a_k - alpha/K)/a_k * (-gamma_E - psi(b_k) - 1/b_k)
                             + log(a_k b_k / (alpha/K)) - (b_k - 1)/b_k

(``gamma_E`` Euler-Mascheroni, ``psi`` digamma; ``alpha/K = 1e-4``, seed 000 App. C). Training draws
``pi = (1 - u^(1/b))^(1/a)`` (inverse CDF, ``u ~ U(0, 1)``, one draw per unit and forward pass) and a relaxed
Bernoulli mask per example ``z = sigmoid((logit(pi) + logit(v)) / tau)`` (``v ~ U(0, 1)``, ``tau = 0.1``, Eq. 9).
At test time the mask is deterministic, ``E[pi_k] = b_k B(1 + 1/a_k, b_k)``, and units with ``E[pi_k] < 1e-3`` are
pruned (set to exactly 0) -- except that a layer always keeps at least one unit: when all its units fall below
the threshold, the one with the largest ``E[pi_k]`` stays (:func:`keep_at_least_one`; as magnitude pruning keeps
at least one group per layer), so no layer is removed whole. ``a = softplus(a_uc)``, ``b = softplus(b_uc)`` with
the reference initialisation ``a_uc = -1``, ``b_uc = 0.5413`` (``b = 1``) and the reference clamps.

**Where the gates go.** :func:`insert_gates` leaves the model's ``forward`` untouched: each gate is applied by a
forward hook on the layer (or on the BatchNorm right after it, so a pruned unit is exactly zero before the
activation -- the ANP VGG code gates before BN, where a pruned channel would become BN's constant shift) and,
for a Linear fed by ``Flatten`` (LeNet's 800 features), by a forward pre-hook on its input, as in the reference
LeNet-5 (units 20-50-800-500). The gates live in ``model.rp_gates`` (a pass-through module, so they are in
``parameters()`` and ``state_dict()``); :mod:`robustprune.sparsity.slim` maps the gated units to filters /
neurons and removes them physically.

**Objectives** (seed 000 Eq. 6-7; the ELBO per data point, KL scaled by ``gamma / N``, N = training set size;
``gamma`` in {1, 4, 8, 10, 12} for LeNet-5, App. C):

* BP: ``CE(x) + gamma/N KL`` for weights and masks alike;
* ANP: weights on ``L_theta = beta CE(x) + (1 - beta) CE(x_adv) + gamma/N KL``, masks on
  ``L_M = CE(x_adv) + gamma/N KL`` (:class:`ANPObjective` routes the two gradients, see there);
* ANP-VS: ANP with ``+ lambda V(x, x_adv)`` in ``L_theta`` only (masks still see ``L_M``);
* PAT: BP, then masks frozen (deterministic expected masks, no gradients), then PGD adversarial training;
* AT-VS: :class:`robustprune.objectives.ATVS` (no gates).

Mask parameters train with a 10x larger learning rate than the weights (App. C), via ``fit(param_groups=...)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.objectives import Natural, ObjectiveOutput, PGDAT, forward_pair
from robustprune.objectives.vulnerability import ATVS, forward_pair_features, vs_sources
from robustprune.sparsity.slim import (
    SlimResult,
    UnitSite,
    example_input,
    fold_unit_scales,
    slim_model,
    unit_sites,
)
from robustprune.train import TrainConfig, TrainResult, fit
from robustprune.utils import make_generator

EULER_GAMMA = 0.5772156649015329
#: attribute under which the gates are stored on the model
GATE_ATTR = "rp_gates"


# =============================================================================================== gates
class UnitGate(nn.Module):
    """A multiplicative mask on ``num_units`` units. Subclasses define :meth:`kl_per_unit`,
    :meth:`test_scale` (deterministic, pruned units exactly 0) and :meth:`sample_scale` (training).

    ``frozen``: the test-time mask is used in training too and the parameters get no gradients (PAT).
    ``generator``: optional ``torch.Generator`` (on the parameters' device) for the training noise.
    ``positions``: elements per unit at the gated site (``H*W`` for a conv map; VIB's KL counts them).
    """

    def __init__(self, num_units: int, positions: int = 1) -> None:
        super().__init__()
        if int(num_units) < 1:
            raise ConfigError(f"a gate needs at least one unit, got {num_units}")
        self.num_units = int(num_units)
        self.positions = int(positions)
        self.frozen = False
        self.generator: torch.Generator | None = None

    # -- to override
    def kl_per_unit(self) -> Tensor:
        raise NotImplementedError

    def test_scale(self) -> Tensor:
        raise NotImplementedError

    def sample_scale(self, batch: int) -> Tensor:
        raise NotImplementedError

    # -- shared
    def kl(self) -> Tensor:
        return self.kl_per_unit().sum()

    @torch.no_grad()
    def keep(self) -> Tensor:
        """Bool mask of the units the test-time mask keeps."""
        return self.test_scale() != 0

    def scale(self, batch: int) -> Tensor:
        """``(batch, units)`` multipliers: sampled in training mode, deterministic otherwise (or when frozen)."""
        if self.training and not self.frozen:
            return self.sample_scale(batch)
        return self.test_scale().unsqueeze(0).expand(batch, -1)

    def gate_tensor(self, x: Tensor, unit_dim: int = 1) -> Tensor:
        """``x`` with unit ``k`` (along ``unit_dim``) multiplied by its mask."""
        if x.shape[unit_dim] != self.num_units:
            raise ConfigError(f"gate for {self.num_units} units applied to a tensor of shape {tuple(x.shape)}")
        z = self.scale(x.shape[0]).to(x.dtype)
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        shape[unit_dim] = self.num_units
        return x * z.reshape(shape)

    def freeze(self, frozen: bool = True) -> None:
        self.frozen = bool(frozen)
        for p in self.parameters():
            p.requires_grad_(not frozen)

    def _uniform(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        g = self.generator
        if g is not None and g.device.type != like.device.type:
            g = None
        return torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)

    def extra_repr(self) -> str:
        return f"units={self.num_units}" + (", frozen" if self.frozen else "")


def keep_at_least_one(keep: Tensor, score: Tensor) -> Tensor:
    """``keep`` (bool per unit), or, when it keeps nothing, only the unit with the largest ``score``.

    The rule of every gate's test-time mask (and the same as magnitude pruning, which keeps at least one group per
    layer): a gated layer keeps at least one unit, so a too strong sparsity pressure (e.g. a large KL scale gamma)
    thins a layer down to its most important unit instead of removing it -- a zero-width layer would cut the
    network and cannot be built by :func:`robustprune.sparsity.slim.slim_model`."""
    if keep.numel() == 0 or bool(keep.any()):
        return keep
    out = torch.zeros_like(keep)
    out[int(torch.argmax(score.detach()))] = True
    return out


def kumaraswamy_beta_kl(a: Tensor, b: Tensor, prior_alpha: float) -> Tensor:
    """Closed-form ``KL[Kumaraswamy(a, b) || Beta(prior_alpha, 1)]`` per element (module docstring)."""
    return ((a - prior_alpha) / a * (-EULER_GAMMA - torch.digamma(b) - 1.0 / b)
            + torch.log(a * b / prior_alpha) - (b - 1.0) / b)


def kumaraswamy_mean(a: Tensor, b: Tensor) -> Tensor:
    """``E[pi] = b B(1 + 1/a, b)`` for ``pi ~ Kumaraswamy(a, b)``."""
    return b * torch.exp(torch.lgamma(1.0 + 1.0 / a) + torch.lgamma(b) - torch.lgamma(1.0 + 1.0 / a + b))


class BetaBernoulliGate(UnitGate):
    """Beta-Bernoulli dropout gate (module docstring). ``alpha`` is the prior's ``alpha/K`` (1e-4),
    ``temperature`` the concrete relaxation's (0.1), ``threshold`` the pruning threshold on ``E[pi]`` (1e-3)."""

    def __init__(self, num_units: int, positions: int = 1, *, alpha: float = 1e-4, a_uc_init: float = -1.0,
                 b_uc_init: float = 0.5413, temperature: float = 0.1, threshold: float = 1e-3) -> None:
        super().__init__(num_units, positions)
        for v, who in ((alpha, "alpha"), (temperature, "temperature")):
            if not (math.isfinite(float(v)) and float(v) > 0):
                raise ConfigError(f"Beta-Bernoulli {who} must be > 0, got {v!r}")
        if not 0 <= float(threshold) < 1:
            raise ConfigError(f"Beta-Bernoulli threshold must be in [0, 1), got {threshold!r}")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.a_uc = nn.Parameter(torch.full((self.num_units,), float(a_uc_init)))
        self.b_uc = nn.Parameter(torch.full((self.num_units,), float(b_uc_init)))

    def ab(self) -> tuple[Tensor, Tensor]:
        """``a = softplus(max(a_uc, -10))``, ``b = softplus(clip(b_uc, -10, 50))`` (the reference clamps)."""
        return F.softplus(self.a_uc.clamp(min=-10.0)), F.softplus(self.b_uc.clamp(-10.0, 50.0))

    def kl_per_unit(self) -> Tensor:
        a, b = self.ab()
        return kumaraswamy_beta_kl(a, b, self.alpha)

    def expected_pi(self) -> Tensor:
        a, b = self.ab()
        return kumaraswamy_mean(a, b)

    def test_scale(self) -> Tensor:
        """``E[pi_k]`` where ``E[pi_k] >= threshold``, else 0 -- but never 0 for every unit: when all of a layer's
        units fall below the threshold, the one with the largest ``E[pi]`` is kept (:func:`keep_at_least_one`),
        so a layer is never removed whole and slimming never builds a zero-width layer."""
        e = self.expected_pi()
        keep = keep_at_least_one(e >= self.threshold, e)
        return torch.where(keep, e, torch.zeros_like(e))

    def sample_pi(self) -> Tensor:
        a, b = self.ab()
        u = self._uniform((self.num_units,), a).clamp(1e-6, 1 - 1e-6)
        return (1 - u.pow(1.0 / b)).pow(1.0 / a)

    def sample_scale(self, batch: int) -> Tensor:
        pi = self.sample_pi()
        eps = torch.finfo(pi.dtype).eps
        pi = pi.clamp(eps, 1 - eps)
        v = self._uniform((batch, self.num_units), pi).clamp(eps, 1 - eps)
        logits = (torch.log(pi) - torch.log1p(-pi)) + (torch.log(v) - torch.log1p(-v))
        return torch.sigmoid(logits / self.temperature)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha/K={self.alpha:g}, tau={self.temperature:g}, thres={self.threshold:g}"


def _gate_factory(gate: str | type | Callable[..., UnitGate]) -> Callable[..., UnitGate]:
    if isinstance(gate, str):
        key = gate.lower()
        if key in ("bbd", "beta-bernoulli", "bb"):
            return BetaBernoulliGate
        if key == "vib":
            from robustprune.methods.vib import VIBGate

            return VIBGate
        raise ConfigError(f"unknown gate type {gate!r}; choose 'bbd' (Beta-Bernoulli dropout) or 'vib'")
    if callable(gate):
        return gate
    raise ConfigError(f"gate must be 'bbd', 'vib' or a UnitGate class, got {gate!r}")


# =============================================================================================== insertion
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
        """Fraction of gated units the test-time masks prune (seed 000's "Sparsity")."""
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

    def slim(self, *, example: Tensor | None = None, check: bool = True, atol: float = 1e-5) -> SlimResult:
        """The physically smaller dense model equal to the gated model in eval mode
        (:func:`robustprune.sparsity.slim.slim_model` with the test-time masks folded in)."""
        return slim_model(self.plain_copy(), self.output_scales(), self.input_scales(), example=example,
                          check=check, atol=atol)


def fold_gates(model: nn.Module, *, example: Tensor | None = None, check: bool = True,
               atol: float = 1e-5) -> tuple[nn.Module, dict[str, Tensor]]:
    """The gated ``model`` (eval mode: test-time masks) as a plain model of the same architecture, with the masks
    folded into the weights and pruned units' weights exactly zero, plus the weight masks
    (:func:`robustprune.sparsity.slim.fold_unit_scales`); what a study stores as the pruned checkpoint."""
    gates = GateSet(model)
    return fold_unit_scales(gates.plain_copy(), gates.output_scales(), gates.input_scales(), example=example,
                            check=check, atol=atol)


def gate_param_groups(model: nn.Module, gates: GateSet, lr: float, factor: float = 10.0,
                      gate_weight_decay: float = 0.0) -> list[dict]:
    """Optimiser groups for ``fit(param_groups=...)``: the weights at ``lr``, the (trainable) mask parameters at
    ``factor * lr`` without weight decay (seed 000 App. C: variational parameters learn 10x faster)."""
    gate_ids = {id(p) for p in gates.parameters()}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
    masks = [p for p in gates.parameters() if p.requires_grad]
    groups: list[dict] = [{"params": weights, "lr": float(lr)}]
    if masks:
        groups.append({"params": masks, "lr": float(lr) * float(factor), "weight_decay": float(gate_weight_decay)})
    return groups


# =============================================================================================== objectives
@dataclass
class GatedObjective:
    """``inner`` loss ``+ kl_scale * KL(gates)``, for weights and masks alike (BP with ``inner = Natural()``).
    ``kl_scale = gamma / N`` (the ELBO per data point, scaled by gamma)."""

    inner: Any
    gates: GateSet
    kl_scale: float

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
                 ) -> ObjectiveOutput:
        out = self.inner(model, x, y, generator=generator)
        return ObjectiveOutput(out.loss + self.kl_scale * self.gates.kl(), out.logits, adv_logits=out.adv_logits)


def route_gradients(loss_weights: Tensor, loss_masks: Tensor, mask_params: Sequence[Tensor]) -> Tensor:
    """A scalar whose gradient is ``d loss_weights / d theta`` for every parameter *not* in ``mask_params`` and
    ``d loss_masks / d M`` for those in it; its value is ``loss_weights``.

    ``loss_weights + <g, M> - <g, M>.detach()`` with ``g = d(loss_masks - loss_weights)/dM`` (one
    ``torch.autograd.grad`` over the shared graph): ``fit`` can then take one ``backward()`` and one optimiser
    step for both parameter groups, exactly like the reference code's two optimisers on two losses.
    """
    params = [p for p in mask_params if p.requires_grad]
    if not params or not torch.is_grad_enabled() or not loss_weights.requires_grad:
        return loss_weights
    diff = loss_masks - loss_weights
    if not diff.requires_grad:
        return loss_weights
    grads = torch.autograd.grad(diff, params, retain_graph=True, allow_unused=True)
    corr = [(g.detach() * p).sum() for g, p in zip(grads, params) if g is not None]
    if not corr:
        return loss_weights
    c = torch.stack(corr).sum()
    return loss_weights + c - c.detach()


@dataclass
class ANPObjective:
    """Adversarial Neural Pruning (seed 000 Eq. 6, Alg. 1), optionally with vulnerability suppression (ANP-VS).

    Adversarial examples: PGD-``steps`` (L-inf ``eps``, step ``alpha``, default eps/4) on the network with its
    *test-time* masks (eval mode; "from the pruned state of the network", Alg. 1 line 4). Then, with sampled
    masks (training mode),

    * weights: ``L_theta = beta CE(x) + (1 - beta) CE(x_adv) + lam V(x, x_adv) + kl_scale KL``,
    * masks:   ``L_M = CE(x_adv) + kl_scale KL``,

    combined by :func:`route_gradients` into one scalar for ``fit``. ``beta = 1/3`` is the reference code's
    ``(CE + 2 CE_adv) / 3``. ``last`` keeps the latest terms (tensors with their graph, for inspection/tests).
    """

    gates: GateSet
    eps: float
    kl_scale: float
    beta: float = 1.0 / 3.0
    lam: float = 0.0
    alpha: float | None = None
    steps: int = 10
    layers: Sequence[str] | None = None
    last: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)
    _sources: dict[int, list[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.attack = PGDAT(eps=self.eps, alpha=self.alpha, steps=self.steps)
        self.eps = self.attack.eps
        if not 0 <= float(self.beta) <= 1:
            raise ConfigError(f"ANP beta (weight of the clean loss) must be in [0, 1], got {self.beta!r}")
        if not (math.isfinite(float(self.lam)) and float(self.lam) >= 0):
            raise ConfigError(f"ANP-VS lam must be a finite number >= 0, got {self.lam!r}")
        if not float(self.kl_scale) >= 0:
            raise ConfigError(f"kl_scale must be >= 0, got {self.kl_scale!r}")

    def _vs_sources(self, model: nn.Module, x: Tensor) -> list[str]:
        if id(model) not in self._sources:
            self._sources[id(model)] = vs_sources(model, x, self.layers)
        return self._sources[id(model)]

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
                 ) -> ObjectiveOutput:
        x_adv = self.attack.craft(model, x, y, generator=generator)
        if self.lam > 0:
            logits, logits_adv, vul = forward_pair_features(model, x, x_adv, self._vs_sources(model, x))
        else:
            logits, logits_adv = forward_pair(model, x, x_adv)
            vul = logits.new_zeros(())
        ce_clean = F.cross_entropy(logits, y)
        ce_adv = F.cross_entropy(logits_adv, y)
        kl = self.kl_scale * self.gates.kl()
        loss_w = self.beta * ce_clean + (1 - self.beta) * ce_adv + self.lam * vul + kl
        loss_m = ce_adv + kl
        loss = route_gradients(loss_w, loss_m, self.gates.parameters())
        self.last = {"ce_clean": ce_clean, "ce_adv": ce_adv, "vulnerability": vul, "kl_term": kl,
                     "loss_weights": loss_w, "loss_masks": loss_m, "x_adv": x_adv}
        return ObjectiveOutput(loss, logits, adv_logits=logits_adv)


# =============================================================================================== recipes
BAYESIAN_METHODS: tuple[str, ...] = ("bp", "anp", "anp-vs", "pat")


@dataclass
class BayesianResult:
    """What a Bayesian pruning recipe returns. ``gates``: the live gates on the model; ``units``:
    ``(label, kept, total)`` from the test-time masks; ``phases``: the training results by phase name."""

    method: str
    gate: str
    gates: GateSet
    kl_scale: float
    units: list[tuple[str, int, int]]
    unit_sparsity: float
    phases: dict[str, TrainResult] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def slim(self, **kw: Any) -> SlimResult:
        return self.gates.slim(**kw)

    def units_string(self, dense: bool = False) -> str:
        return "-".join(str(t if dense else k) for _, k, t in self.units)


def _check_method(method: str) -> str:
    m = str(method).lower()
    if m not in BAYESIAN_METHODS:
        raise ConfigError(f"unknown Bayesian pruning method {method!r}; choose one of: {', '.join(BAYESIAN_METHODS)}")
    return m


def bayesian_prune(
    model: nn.Module,
    method: str = "anp",
    *,
    train: Split,
    val: Split | None,
    cfg: TrainConfig,
    eps: float | None = None,
    gamma: float = 1.0,
    beta: float = 1.0 / 3.0,
    lam: float | None = None,
    steps: int = 10,
    alpha: float | None = None,
    gate: str | type = "bbd",
    gate_kwargs: dict[str, Any] | None = None,
    inputs: bool = True,
    layers: Sequence[str] | None = None,
    mask_lr_factor: float = 10.0,
    n_train: int | None = None,
    at_cfg: TrainConfig | None = None,
    val_eps: float | None = None,
    augment: str | None = None,
    example: Tensor | None = None,
    hooks: Sequence[Any] = (),
    scheme: str | None = None,
) -> BayesianResult:
    """Insert gates into ``model`` (in place) and train weights and masks with seed 000's ``method``.

    * ``"bp"``: Bayesian pruning on clean data (``CE + gamma/N KL``);
    * ``"anp"`` / ``"anp-vs"``: :class:`ANPObjective` (``lam`` default 0 / 1.0), needs ``eps``;
    * ``"pat"``: BP with ``cfg``, then masks frozen and PGD-AT (``eps``) with ``at_cfg`` (default ``cfg``).

    ``gamma``: KL scale (seed 000 App. C sweeps {1, 4, 8, 10, 12} on LeNet-5); ``n_train`` the N of ``gamma/N``
    (default ``len(train)``). Mask parameters learn at ``mask_lr_factor * cfg.lr``. ``val_eps``: PGD radius for
    checkpoint selection on the validation split (default ``eps``; BP selects on clean accuracy). ``gate``:
    "bbd" or "vib" (:mod:`robustprune.methods.vib`). ``scheme`` is accepted for the recipe registry (units are
    filters/neurons: "filter").

    Calibration (ANP / ANP-VS from a standard-trained network): with the reference gate initialisation
    (``a_uc = -1``, ``E[pi] = 0.24``, training masks keeping ~24% of each layer's units) the gated network starts
    nearly dead (logits ~0, CE ~ log C). BP revives it through the clean CE, which reaches the masks; under ANP the
    masks see only ``CE(x_adv)`` (examples crafted against non-robust weights) and the KL, and ANP-VS's ``lam V``
    pushes the weights towards all-zero features (V's trivial minimiser), so a ``gamma`` / ``lam`` that BP tolerates
    can prune every unit before the weights recover in a short run (Fashion-MNIST LeNet-5, 234 steps: collapse at
    gamma >= 3 or at lam = 1; see experiments/issue5_fmnist.py). A collapsed layer still keeps its most likely
    unit (:func:`keep_at_least_one`).
    """
    m = _check_method(method)
    if scheme is not None and str(scheme).lower() not in ("filter", "unit", "structured"):
        raise ConfigError(f"Bayesian pruning removes whole units (scheme 'filter'), got scheme={scheme!r}")
    if m in ("anp", "anp-vs", "pat") and eps is None:
        raise ConfigError(f"{m} trains on adversarial examples; give eps (e.g. eps=0.1 on Fashion-MNIST)")
    if not (math.isfinite(float(gamma)) and float(gamma) >= 0):
        raise ConfigError(f"gamma (KL scale) must be a finite number >= 0, got {gamma!r}")
    n = int(n_train) if n_train is not None else len(train)
    if n < 1:
        raise ConfigError("the training split is empty; n_train must be >= 1")
    kl_scale = float(gamma) / n
    gate_name = gate if isinstance(gate, str) else getattr(gate, "__name__", "gate")
    dev = train.x.device
    model.to(dev)
    gates = insert_gates(model, gate, example=example if example is not None else train.x[:2], layers=layers,
                         inputs=inputs, **(gate_kwargs or {}))
    gates.set_generator(make_generator(cfg.seed + 7919, dev))
    initial = {i.key: [p.detach().clone() for p in g.parameters()] for i, g in gates.items()}
    phases: dict[str, TrainResult] = {}
    groups = gate_param_groups(model, gates, cfg.lr, mask_lr_factor)
    v_eps = val_eps if val_eps is not None else eps
    if m in ("bp", "pat"):
        obj = GatedObjective(Natural(), gates, kl_scale)
        phases["bp"] = fit(model, obj, train, val, cfg, param_groups=groups, val_eps=v_eps if m == "bp" else None,
                           augment=augment, hooks=hooks, desc=f"{gate_name}-bp")
        if m == "pat":
            gates.freeze()
            phases["at"] = fit(model, PGDAT(eps=eps, alpha=alpha, steps=steps), train, val, at_cfg or cfg,
                               val_eps=v_eps, augment=augment, hooks=hooks, desc=f"{gate_name}-pat-at")
    else:
        lam_v = float(lam) if lam is not None else (1.0 if m == "anp-vs" else 0.0)
        if m == "anp" and lam_v != 0:
            raise ConfigError("ANP has no vulnerability term; use method='anp-vs' for lam > 0")
        obj = ANPObjective(gates, eps=eps, kl_scale=kl_scale, beta=beta, lam=lam_v, alpha=alpha, steps=steps,
                           layers=None)
        phases[m] = fit(model, obj, train, val, cfg, param_groups=groups, val_eps=v_eps, augment=augment,
                        hooks=hooks, desc=f"{gate_name}-{m}")
    model.eval()
    return BayesianResult(method=m, gate=str(gate_name), gates=gates, kl_scale=kl_scale, units=gates.units(),
                          unit_sparsity=gates.unit_sparsity(), phases=phases, stats=gate_statistics(gates, initial))


@torch.no_grad()
def gate_statistics(gates: GateSet, initial: dict[str, list[Tensor]] | None = None,
                    moved_tol: float = 0.1) -> dict[str, Any]:
    """Whether the masks did their job: the mean test-time keep probability (``E[pi]`` for Beta-Bernoulli gates,
    the kept fraction otherwise), the fraction of units kept, and (given the parameters at insertion) the fraction
    of units whose mask parameters moved by more than ``moved_tol``."""
    e_pi, kept, total, moved = [], 0, 0, 0
    for info, g in gates.items():
        if hasattr(g, "expected_pi"):
            e_pi.append(g.expected_pi().detach().float())
        k = g.keep()
        kept += int(k.sum())
        total += int(k.numel())
        if initial is not None and info.key in initial:
            delta = torch.zeros(g.num_units, device=k.device)
            for p0, p in zip(initial[info.key], g.parameters()):
                if p.shape == p0.shape and p.dim() == 1 and p.numel() == g.num_units:
                    delta = torch.maximum(delta, (p.detach() - p0.to(p.device)).abs().float())
            moved += int((delta > moved_tol).sum())
    out: dict[str, Any] = {"units_kept_fraction": kept / total if total else 1.0, "units_total": total}
    if e_pi:
        out["mean_expected_pi"] = float(torch.cat(e_pi).mean())
    if initial is not None:
        out["gates_moved_fraction"] = moved / total if total else 0.0
        out["moved_tol"] = moved_tol
    return out


def at_vs(
    model: nn.Module,
    *,
    eps: float,
    train: Split,
    val: Split | None,
    cfg: TrainConfig,
    lam: float = 1.0,
    beta: float = 0.0,
    steps: int = 10,
    alpha: float | None = None,
    val_eps: float | None = None,
    augment: str | None = None,
) -> TrainResult:
    """AT-VS (seed 000 Eq. 4): adversarial training with ``+ lam V`` (no pruning); ``beta`` > 0 mixes in the
    clean loss. A thin wrapper over ``fit`` with :class:`robustprune.objectives.ATVS`."""
    obj = ATVS(eps=eps, lam=lam, alpha=alpha, steps=steps, beta=beta)
    return fit(model, obj, train, val, cfg, val_eps=val_eps if val_eps is not None else eps, augment=augment,
               desc="at-vs")
