"""Beta-Bernoulli dropout masks (Lee et al. 2019) and the recipes of Madaan2020: BP, ANP, ANP-VS, PAT, AT-VS.

**Gates.** A :class:`BetaBernoulliGate` multiplies each output unit (Conv2d filter / Linear neuron) of a hidden
layer by a mask ``z_k``. Generative model (Madaan2020 App. A, Eq. 8): ``pi_k ~ Beta(alpha/K, 1)``,
``z_nk | pi_k ~ Bernoulli(pi_k)``. Variational posterior: ``q(pi_k) = Kumaraswamy(a_k, b_k)``,
``q(pi) = a b pi^(a-1) (1 - pi^a)^(b-1)``, with ``q(z | pi) = p(z | pi)``, so the KL of the ELBO is over ``pi`` only
and has a closed form (Nalisnick & Smyth 2016; Lee et al. 2019; Madaan2020 Eq. 10 -- the Beta(alpha, beta) formula's
series term vanishes for beta = 1)::

    KL[q(pi_k) || p(pi_k)] = (a_k - alpha/K)/a_k * (-gamma_E - psi(b_k) - 1/b_k)
                             + log(a_k b_k / (alpha/K)) - (b_k - 1)/b_k

(``gamma_E`` Euler-Mascheroni, ``psi`` digamma; ``alpha/K = 1e-4``, Madaan2020 App. C). Training draws
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

**Objectives** (Madaan2020 Eq. 6-7; the ELBO per data point, KL scaled by ``gamma / N``, N = training set size;
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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods.bayesian_objectives import ANPObjective, GatedObjective, route_gradients
from robustprune.methods.gate_insertion import (
    GateBank,
    GateInfo,
    GateSet,
    fold_gates,
    gate_param_groups,
    insert_gates,
    remove_gates,
)
from robustprune.methods.gates import (
    EULER_GAMMA,
    GATE_ATTR,
    BetaBernoulliGate,
    UnitGate,
    keep_at_least_one,
    kumaraswamy_beta_kl,
    kumaraswamy_mean,
)
from robustprune.objectives import Natural, PGDAT
from robustprune.objectives.vulnerability import ATVS
from robustprune.sparsity.slim import SlimResult
from robustprune.train import TrainConfig, TrainResult, fit
from robustprune.utils import make_generator

__all__ = [
    "ANPObjective", "BAYESIAN_METHODS", "BayesianResult", "BetaBernoulliGate", "EULER_GAMMA", "GATE_ATTR", "GateBank",
    "GateInfo", "GateSet", "GatedObjective", "UnitGate", "at_vs", "bayesian_prune", "fold_gates",
    "gate_param_groups", "gate_statistics", "insert_gates", "keep_at_least_one", "kumaraswamy_beta_kl",
    "kumaraswamy_mean", "remove_gates", "route_gradients", "vib_prune",
]

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
    """Insert gates into ``model`` (in place) and train weights and masks with Madaan2020's ``method``.

    * ``"bp"``: Bayesian pruning on clean data (``CE + gamma/N KL``);
    * ``"anp"`` / ``"anp-vs"``: :class:`ANPObjective` (``lam`` default 0 / 1.0), needs ``eps``;
    * ``"pat"``: BP with ``cfg``, then masks frozen and PGD-AT (``eps``) with ``at_cfg`` (default ``cfg``).

    ``gamma``: KL scale (Madaan2020 App. C sweeps {1, 4, 8, 10, 12} on LeNet-5); ``n_train`` the N of ``gamma/N``
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
    gamma >= 3 or at lam = 1; see experiments/anp_fmnist.py). A collapsed layer still keeps its most likely
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
        lam_v = float(lam) if lam is not None else (1e-3 if m == "anp-vs" else 0.0)  # ANP-VS README, MNIST
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
    lam: float = 1e-3,
    beta: float = 0.0,
    steps: int = 10,
    alpha: float | None = None,
    val_eps: float | None = None,
    augment: str | None = None,
) -> TrainResult:
    """AT-VS (Madaan2020 Eq. 4): adversarial training with ``+ lam V`` (no pruning); ``beta`` > 0 mixes in the
    clean loss. A thin wrapper over ``fit`` with :class:`robustprune.objectives.ATVS`."""
    obj = ATVS(eps=eps, lam=lam, alpha=alpha, steps=steps, beta=beta)
    return fit(model, obj, train, val, cfg, val_eps=val_eps if val_eps is not None else eps, augment=augment,
               desc="at-vs")



def vib_prune(model: nn.Module, method: str = "anp", **kwargs: Any) -> BayesianResult:
    """:func:`bayesian_prune` with VIB gates: ``method="bp"`` is BP (VIB), ``"anp"`` is ANP-VIB, ``"anp-vs"``
    ANP-VIB with vulnerability suppression, ``"pat"`` PAT with VIB masks."""
    kwargs.pop("gate", None)
    return bayesian_prune(model, method, gate="vib", **kwargs)
