"""Minimal-norm L∞ attack: FMN (Pintor2021: Pintor et al. 2021, "Fast minimum-norm adversarial attacks
through adaptive norm constraints"), batched, returning each point's smallest successful ε.

Robust accuracy at *every* L∞ budget, and the security curve, then come from one run
(:class:`~robustprune.attacks.results.MinNormResult`: robust at ε iff the norm found exceeds ε), instead of
one budget attack per ε.

FMN keeps a per-sample radius ε_k and a perturbation δ. Each step: one forward and one input-gradient
backward of the logit difference ``max_{j≠y} z_j − z_y`` at ``x + δ``; the smallest misclassified δ seen is
kept; ε_k shrinks by (1 − γ_k) where the point is adversarial (never above the best norm), grows by
(1 + γ_k) where it is not but one was found before, and before any is found jumps to the linear estimate of
the boundary ``‖δ‖∞ + |loss| / ‖∇‖₁`` (‖·‖₁ is the dual of ‖·‖∞); then δ moves α_k along the L2-normalised
gradient and is projected onto the ε_k-ball and [0, 1]. α_k and γ_k follow a cosine decay from
``alpha_init`` / ``gamma_init`` to ``alpha_final`` (α/100) / ``gamma_final``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustprune.attacks._common import (
    bcast,
    check_eps,
    check_inputs,
    check_int,
    check_positive,
    finish_min_norm,
    input_grad,
)
from robustprune.attacks.losses import cw_loss
from robustprune.attacks.results import MinNormResult


def fmn_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | None = None,
    steps: int = 100,
    alpha_init: float = 1.0,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> MinNormResult | Tensor:
    """FMN-L∞ (Pintor2021); returns a :class:`MinNormResult` with L∞ ``norms`` (``inf`` where no adversarial
    point was found, 0 where the clean point is misclassified), or with ``eps`` the budget attack's ``x_adv``.

    ``steps`` iterations of one forward + one input-gradient backward each (see the module docstring).
    ``early_exit`` drops the points misclassified when clean before the first step (they need no search).
    Deterministic (``generator`` is unused: FMN starts at δ = 0); input gradients only.
    """
    check_inputs(x, y)
    if eps is not None:
        eps = check_eps(eps)
    steps = check_int(steps, "steps", 1)
    alpha_init = check_positive(alpha_init, "alpha_init")
    alpha_final = alpha_init / 100 if alpha_final is None else check_positive(alpha_final, "alpha_final")
    gamma_init = check_positive(gamma_init, "gamma_init")
    gamma_final = check_positive(gamma_final, "gamma_final")
    x = x.detach()
    n = len(x)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    x_found = x.clone()
    if early_exit:
        with torch.no_grad():
            idx = torch.nonzero(model(x).argmax(dim=1) == y).squeeze(1)
    else:
        idx = torch.arange(n, device=x.device)
    if idx.numel():
        xi, yi = x[idx], y[idx]
        m = len(idx)
        flat = xi.reshape(m, -1)
        worst = torch.maximum(flat, 1 - flat).amax(dim=1)  # no L∞ perturbation inside [0, 1] is larger
        best = worst.clone()
        best_x = xi.clone()
        any_adv = torch.zeros(m, dtype=torch.bool, device=x.device)
        radius = torch.full((m,), float("inf"), device=x.device, dtype=x.dtype)
        delta = torch.zeros_like(xi)
        for k in range(steps):
            cos = (1 + math.cos(math.pi * k / steps)) / 2
            alpha = alpha_final + (alpha_init - alpha_final) * cos
            gamma = gamma_final + (gamma_init - gamma_final) * cos
            x_cur = xi + delta
            grad, logits, loss = input_grad(model, x_cur, yi, cw_loss)  # ascend max_{j≠y} z_j − z_y
            with torch.no_grad():
                d_norm = delta.reshape(m, -1).abs().amax(dim=1)
                adv = logits.argmax(dim=1) != yi
                smaller = adv & (d_norm < best)
                best = torch.where(smaller, d_norm, best)
                best_x = torch.where(bcast(smaller, xi), x_cur, best_x)
                any_adv = any_adv | adv
                to_boundary = loss.abs() / grad.reshape(m, -1).abs().sum(dim=1).clamp_min(1e-12)
                radius = torch.where(adv, torch.minimum(radius * (1 - gamma), best),
                                     torch.where(any_adv, radius * (1 + gamma), d_norm + to_boundary))
                radius = torch.minimum(radius, worst)
                g = grad / bcast(grad.reshape(m, -1).norm(dim=1).clamp_min(1e-12), grad)
                delta = delta + alpha * g
                r = bcast(radius, delta)
                delta = torch.maximum(torch.minimum(delta, r), -r)
                delta = (xi + delta).clamp(0.0, 1.0) - xi
        found[idx] = any_adv
        x_found[idx] = best_x
    return finish_min_norm(model, x, y, x_found, found, norm="Linf", eps=eps)


__all__ = ["fmn_linf"]
