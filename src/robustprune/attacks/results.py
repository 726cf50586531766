"""What minimal-norm attacks return, and how to read robust accuracy off it.

A minimal-norm attack (C&W-L2, the in-house L0 attack, Brendel & Bethge L0) looks for the
*smallest* perturbation that changes the prediction, instead of the most damaging one inside a
fixed budget. It returns a :class:`MinNormResult`: per sample the point found and its norm
(``inf`` where nothing was found, ``0`` where the clean point is already misclassified), so robust
accuracy at *every* ε — a whole security curve — comes from one run:
``robust_accuracy_from_norms(result.norms, eps)`` is the fraction of samples with norm > ε.

L0 norms count **pixels** by default (a pixel is one spatial location of an NCHW image, all its
channels together, as in Sparse-RS and PGD-L0 papers); ``l0_unit="element"`` counts tensor
elements instead (what foolbox's ``l0`` distance counts). For one-channel images they coincide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from robustprune.errors import ConfigError

NORMS = ("Linf", "L2", "L0")
L0_UNITS = ("pixel", "element")

_NORM_ALIASES = {
    "linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l∞": "Linf",
    "l2": "L2", "2": "L2",
    "l0": "L0", "0": "L0",
}


def canonical_norm(p: str | float | int) -> str:
    """``"Linf"``, ``"L2"`` or ``"L0"`` for the many ways to write them (``inf``, ``2``, ``"l2"``, ...)."""
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        if p == math.inf:
            return "Linf"
        if p in (0, 2):
            return "L2" if p == 2 else "L0"
    elif isinstance(p, str) and p.strip().lower() in _NORM_ALIASES:
        return _NORM_ALIASES[p.strip().lower()]
    raise ConfigError(f"unknown norm {p!r}; use one of {', '.join(NORMS)} (or inf, 2, 0)")


def check_l0_unit(unit: str) -> str:
    if unit not in L0_UNITS:
        raise ConfigError(f"l0_unit must be one of {', '.join(L0_UNITS)}, got {unit!r}")
    return unit


def pixel_view(t: Tensor, l0_unit: str = "pixel") -> Tensor:
    """``t`` as ``(N, C, P)``: C channels of P pixels (``"pixel"`` on an NCHW-like tensor of
    dim ≥ 3: C = dim 1, P = the rest), or ``(N, 1, numel)`` (``"element"``, or a flat ``(N, D)``)."""
    n = t.shape[0]
    if check_l0_unit(l0_unit) == "pixel" and t.dim() >= 3:
        return t.reshape(n, t.shape[1], -1)
    return t.reshape(n, 1, -1)


def perturbation_norm(x: Tensor, x_adv: Tensor, p: str | float | int, *, l0_unit: str = "pixel") -> Tensor:
    """Per-sample ‖x_adv − x‖_p as a float tensor ``(N,)`` on x's device.

    ``p``: ``"Linf"``/``inf``, ``"L2"``/``2`` or ``"L0"``/``0``. The L0 norm counts pixels changed
    (``l0_unit="pixel"``, any channel counts) or tensor elements changed (``"element"``).
    """
    norm = canonical_norm(p)
    delta = x_adv.detach() - x.detach()
    if norm == "Linf":
        return delta.reshape(len(delta), -1).abs().amax(dim=1)
    if norm == "L2":
        return delta.reshape(len(delta), -1).norm(dim=1)
    changed = pixel_view(delta, l0_unit) != 0
    return changed.any(dim=1).sum(dim=1).to(delta.dtype)


@dataclass
class MinNormResult:
    """Output of a minimal-norm attack.

    ``x_adv``: the point found per sample (detached; ``x`` itself where none was found or where
    the clean point is already misclassified). ``norms``: ``(N,)`` float,
    ``‖x_adv_i − x_i‖_p`` if ``x_adv_i`` is misclassified, ``inf`` if no adversarial point was
    found, ``0`` where ``x_i`` is misclassified already. ``norm`` names p (``"L2"``, ``"L0"``, ...);
    ``l0_unit`` says what an L0 norm counts (``"pixel"`` or ``"element"``).
    """

    x_adv: Tensor
    norms: Tensor
    norm: str = "L2"
    l0_unit: str = "pixel"

    def robust_accuracy(self, eps: float) -> float:
        """Fraction of samples with norm > ``eps`` (see :func:`robust_accuracy_from_norms`)."""
        return robust_accuracy_from_norms(self.norms, eps)

    def security_curve(self, eps: Iterable[float]) -> list[tuple[float, float]]:
        """``[(ε, robust accuracy at ε), ...]`` for every ε given."""
        return security_curve(self.norms, eps)

    def at_eps(self, x: Tensor, eps: float) -> Tensor:
        """A budget attack's answer at ``eps``: ``x_adv_i`` where norm_i ≤ ε, else ``x_i``."""
        keep = (self.norms <= eps).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(keep, self.x_adv, x.detach()).detach()


def robust_accuracy_from_norms(norms: Tensor | Sequence[float], eps: float) -> float:
    """Robust accuracy at ``eps`` from per-sample minimal norms: the fraction with norm > ε.

    A sample whose minimal adversarial perturbation is larger than ε cannot be fooled within ε
    (as far as the attack could tell); ``inf`` (never fooled) counts as robust at every ε and ``0``
    (misclassified when clean) as robust at none. An empty set gives ``nan``.
    """
    norms_t = torch.as_tensor(norms).detach().flatten()
    try:
        eps_f = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"eps must be a number, got {eps!r}") from None
    if math.isnan(eps_f) or eps_f < 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    if norms_t.numel() == 0:
        return float("nan")
    return float((norms_t > eps_f).double().mean())


def security_curve(norms: Tensor | Sequence[float], eps: Iterable[float]) -> list[tuple[float, float]]:
    """Robust accuracy at each ε from one set of minimal norms: ``[(ε, accuracy), ...]``."""
    norms_t = torch.as_tensor(norms).detach().flatten()
    return [(float(e), robust_accuracy_from_norms(norms_t, e)) for e in eps]


__all__ = [
    "L0_UNITS",
    "MinNormResult",
    "NORMS",
    "canonical_norm",
    "check_l0_unit",
    "perturbation_norm",
    "pixel_view",
    "robust_accuracy_from_norms",
    "security_curve",
]
