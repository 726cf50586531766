"""Carlini & Wagner (2017) L2 attack: minimal L2 perturbation, binary search over the constant.

For each sample it minimises ``‖x' − x‖₂² + c · max(z_y − max_{j≠y} z_j + κ, 0)`` over
``x' = (tanh(w) + 1) / 2`` (the change of variable keeps x' in [0, 1]) with Adam on ``w``, and
binary-searches ``c`` per sample: success lowers the upper bound, failure raises the lower bound (or
multiplies ``c`` by 10 while no success has been seen). The smallest successful perturbation seen
over all iterations is kept.

Merkle2022 (App. A) settings: ``binary_search_steps=9, steps=5000, lr=1.0, initial_const=100,
confidence=0``. The defaults are much cheaper (5 × 100 steps).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustprune.attacks._common import (
    bcast,
    check_inputs,
    check_int,
    check_positive,
    check_radius,
    finish_min_norm,
)
from robustprune.attacks.losses import cw_loss
from robustprune.attacks.results import MinNormResult
from robustprune.errors import ConfigError

_BIG = 1e10  # "no upper bound yet" for the binary search (as in the original code)


def cw_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | None = None,
    steps: int = 100,
    binary_search_steps: int = 5,
    lr: float = 0.01,
    initial_const: float = 1.0,
    confidence: float = 0.0,
    generator: torch.Generator | None = None,
) -> MinNormResult | Tensor:
    """C&W-L2 minimal-norm attack (untargeted). Returns a :class:`MinNormResult` (L2 norms).

    ``steps`` Adam steps (learning rate ``lr``) for each of ``binary_search_steps`` values of the
    constant, starting at ``initial_const``; ``confidence`` is κ (a point counts as a success
    only when some other logit beats z_y by more than κ). Each step is one forward and one
    input-gradient backward (``torch.autograd.grad`` w.r.t. ``w``), batched; the constant is
    searched per sample with no host synchronisation. Deterministic (``generator`` is unused and
    accepted for the common signature); the model's mode and parameters' ``.grad`` are untouched.

    With ``eps`` (an L2 radius) it acts as a budget attack and returns ``x_adv``: the point found
    where its norm ≤ ε, else ``x`` (see :meth:`MinNormResult.at_eps`).
    """
    check_inputs(x, y)
    if eps is not None:
        eps = check_radius(eps)
    steps = check_int(steps, "steps", 1)
    binary_search_steps = check_int(binary_search_steps, "binary_search_steps", 1)
    lr = check_positive(lr, "lr")
    initial_const = check_positive(initial_const, "initial_const")
    try:
        confidence = float(confidence)
    except (TypeError, ValueError):
        raise ConfigError(f"confidence must be a number >= 0, got {confidence!r}") from None
    if not math.isfinite(confidence) or confidence < 0:
        raise ConfigError(f"confidence must be a finite number >= 0, got {confidence}")

    x = x.detach()
    n = x.shape[0]
    dev, dt = x.device, x.dtype
    w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    const = torch.full((n,), initial_const, device=dev, dtype=dt)
    lower = torch.zeros(n, device=dev, dtype=dt)
    upper = torch.full((n,), _BIG, device=dev, dtype=dt)
    best_l2 = torch.full((n,), float("inf"), device=dev, dtype=dt)
    best_x = x.clone()
    beta1, beta2, tiny = 0.9, 0.999, 1e-8

    for _ in range(binary_search_steps):
        w = w0.clone()
        m = torch.zeros_like(w)
        v = torch.zeros_like(w)
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        for t in range(1, steps + 1):
            w = w.detach().requires_grad_(True)
            with torch.enable_grad():
                x_new = (torch.tanh(w) + 1) / 2
                logits = model(x_new)
                l2sq = (x_new - x).pow(2).flatten(1).sum(1)
                margin = -cw_loss(logits, y)  # z_y − max_{j≠y} z_j
                loss = l2sq + const * (margin + confidence).clamp_min(0)
                (grad,) = torch.autograd.grad(loss.sum(), w)
            with torch.no_grad():
                fooled = margin.detach() < -confidence if confidence > 0 else logits.argmax(1) != y
                l2 = l2sq.detach().sqrt()
                better = fooled & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_x = torch.where(bcast(better, x), x_new.detach(), best_x)
                success = success | fooled
                # Adam on w (bias-corrected)
                m = beta1 * m + (1 - beta1) * grad
                v = beta2 * v + (1 - beta2) * grad * grad
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                w = w.detach() - lr * m_hat / (v_hat.sqrt() + tiny)
        upper = torch.where(success, torch.minimum(upper, const), upper)
        lower = torch.where(success, lower, torch.maximum(lower, const))
        const = torch.where(upper < _BIG, (lower + upper) / 2, const * 10)

    return finish_min_norm(model, x, y, best_x, torch.isfinite(best_l2), norm="L2", eps=eps)
