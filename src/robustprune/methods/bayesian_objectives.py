"""The training objectives of gated models (Madaan2020 Eq. 6-7): :class:`GatedObjective` (BP: any objective plus
the scaled KL of the gates), :class:`ANPObjective` (weights on the clean/adversarial mix, masks on the adversarial
loss, optionally + lambda V for ANP-VS) and :func:`route_gradients`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.methods.gate_insertion import GateSet
from robustprune.objectives import ObjectiveOutput, PGDAT, forward_pair
from robustprune.objectives.vulnerability import forward_pair_features, vs_sources

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
    """Adversarial Neural Pruning (Madaan2020 Eq. 6, Alg. 1), optionally with vulnerability suppression (ANP-VS).

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


