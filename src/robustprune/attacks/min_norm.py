"""Minimal-norm L∞ attacks, returning each point's smallest successful ε, so that robust accuracy at *every*
L∞ budget, and the security curve, come from one run.

- :func:`min_norm_linf` (``min-norm-linf``, the evaluation's): APGD-based per-sample binary search. One APGD
  (CE + targeted, :func:`~robustprune.attacks.apgd.apgd`) at the largest budget ``eps_max``; then, for every
  point it fooled, a per-sample bisection over (0, ‖δ‖∞]: each probe shrinks the point's best adversarial δ to
  the probe radius r (``clip(δ, −r, r)``) and, unless that is adversarial already, runs ``search_iter``
  iterations of targeted APGD at radius r towards the class that fooled it, from there. The norm reported is
  that of the smallest adversarial point found (an upper bound on the true minimal norm; robust at ε iff it
  exceeds ε), so at ``eps_max`` it agrees with APGD exactly, and below it with APGD at that budget up to the
  bisection's resolution ``‖δ‖∞ / 2^search_steps``.
- :func:`fmn_linf` (``fmn-linf``): FMN (Pintor2021: Pintor et al. 2021, "Fast minimum-norm adversarial attacks
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
from robustprune.attacks.apgd import DEFAULT_TARGETS, _check, _ce_runs, _dlr_t, _run, _State, _t_runs
from robustprune.attacks.losses import cw_loss
from robustprune.attacks.results import MinNormResult
from robustprune.errors import ConfigError


def min_norm_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | None = None,
    eps_max: float = 0.3,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = DEFAULT_TARGETS,
    search_steps: int = 7,
    search_iter: int = 20,
    full_probe: bool = True,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> MinNormResult | Tensor:
    """APGD-based minimal L∞ norm per point (see the module docstring); returns a :class:`MinNormResult`
    (``inf`` where APGD at ``eps_max`` found nothing, 0 where the clean point is misclassified), or with ``eps``
    the budget attack's ``x_adv``.

    ``steps``, ``restarts``, ``n_target_classes``, ``rho``: the APGD at ``eps_max`` (the evaluation sets
    ``eps_max`` to the largest budget of the spec when it is not given). ``search_steps`` bisection probes of
    ``search_iter`` targeted-APGD iterations each refine the norm of every point fooled there. Deterministic
    given ``generator``; ``early_exit`` as in APGD (the answer does not depend on it).
    """
    eps_max, steps, restarts, rho = _check(x, y, eps_max, steps, restarts, rho)
    if eps is not None:
        eps = check_eps(eps)
    if eps_max <= 0:
        raise ConfigError(f"eps_max must be > 0, got {eps_max}")
    n_target_classes = check_int(n_target_classes, "n_target_classes", 1)
    search_steps = check_int(search_steps, "search_steps", 0)
    search_iter = check_int(search_iter, "search_iter", 1)
    x = x.detach()
    st = _State(model, x, y)
    clean_bad = st.found.clone()
    _ce_runs(model, st, eps=eps_max, steps=steps, restarts=restarts, rho=rho, generator=generator,
             early_exit=early_exit)
    if st.clean_logits.shape[1] >= 3:
        _t_runs(model, st, eps=eps_max, steps=steps, restarts=restarts, rho=rho, n_target_classes=n_target_classes,
                generator=generator, early_exit=early_exit)
    found = st.found & ~clean_bad
    x_best = st.x_found.clone()
    idx = torch.nonzero(found).squeeze(1)
    if idx.numel() and search_steps:
        xi, yi = x[idx], y[idx]
        m = len(idx)
        delta = x_best[idx] - xi
        with torch.no_grad():
            target = model(xi + delta).argmax(dim=1)  # the class that fooled it
        hi = delta.reshape(m, -1).abs().amax(dim=1)
        lo = torch.zeros_like(hi)
        targeted = st.clean_logits.shape[1] >= 3
        for _ in range(search_steps):
            mid = (lo + hi) / 2
            r = bcast(mid, delta)
            start = xi + torch.maximum(torch.minimum(delta, r), -r)
            probe = _State(model, xi, yi)
            probe.record(torch.arange(m, device=x.device), start,
                         model(start).argmax(dim=1) != yi )
            if targeted:  # towards the class that fooled it, from the shrunk point
                _run(model, probe, _dlr_t, target, eps=mid, n_iter=search_iter, rho=rho, generator=None,
                     early_exit=early_exit, x_init=start)
            # then APGD as at a budget (CE and the other targets, random starts) on the points still standing
            _ce_runs(model, probe, eps=mid, steps=search_iter, restarts=1, rho=rho, generator=generator,
                     early_exit=early_exit)
            if targeted and full_probe:
                _t_runs(model, probe, eps=mid, steps=search_iter, restarts=1, rho=rho,
                        n_target_classes=n_target_classes, generator=generator, early_exit=early_exit)
            ok = probe.found  # clean-correct points only here, so found = adversarial within radius mid
            new_delta = probe.x_found - xi
            new_norm = new_delta.reshape(m, -1).abs().amax(dim=1)
            better = ok & (new_norm < hi)
            delta = torch.where(bcast(better, delta), new_delta, delta)
            hi = torch.where(better, new_norm, hi)
            lo = torch.where(ok, lo, torch.maximum(lo, mid))
        x_best[idx] = xi + delta
    res = finish_min_norm(model, x, y, x_best, found, norm="Linf")
    assert isinstance(res, MinNormResult)
    # a point of the closed ε-ball may measure ε·(1 + 1e-7) after float32 projection: it is inside the budget
    snap = torch.isfinite(res.norms) & (res.norms > eps_max) & (res.norms <= eps_max * (1 + 1e-5))
    res.norms = torch.where(snap, torch.full_like(res.norms, eps_max), res.norms)
    return res if eps is None else res.at_eps(x, eps)


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
    starting_points: Tensor | None = None,
    binary_search_steps: int = 10,
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> MinNormResult | Tensor:
    """FMN-L∞ (Pintor2021); returns a :class:`MinNormResult` with L∞ ``norms`` (``inf`` where no adversarial
    point was found, 0 where the clean point is misclassified), or with ``eps`` the budget attack's ``x_adv``.

    ``steps`` iterations of one forward + one input-gradient backward each (see the module docstring).
    ``starting_points``: adversarial points to start from where they are misclassified (others start at δ = 0):
    ``binary_search_steps`` no-grad forwards first shrink each to the smallest radius r at which
    ``x + clip(δ, −r, r)`` is still misclassified. ``early_exit`` drops the points misclassified when clean before
    the first step (they need no search). Deterministic (``generator`` is unused); input gradients only.
    """
    check_inputs(x, y)
    if eps is not None:
        eps = check_eps(eps)
    steps = check_int(steps, "steps", 1)
    alpha_init = check_positive(alpha_init, "alpha_init")
    alpha_final = alpha_init / 100 if alpha_final is None else check_positive(alpha_final, "alpha_final")
    gamma_init = check_positive(gamma_init, "gamma_init")
    gamma_final = check_positive(gamma_final, "gamma_final")
    binary_search_steps = check_int(binary_search_steps, "binary_search_steps", 0)
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
        if starting_points is not None:
            delta, ok = _shrink_starts(model, xi, yi, starting_points.detach()[idx].to(x.dtype), binary_search_steps)
            d_norm = delta.reshape(m, -1).abs().amax(dim=1)
            best = torch.where(ok, d_norm, best)
            best_x = torch.where(bcast(ok, xi), xi + delta, best_x)
            any_adv = ok
            radius = torch.where(ok, d_norm, radius)
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


@torch.no_grad()
def _shrink_starts(model: nn.Module, x: Tensor, y: Tensor, starts: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Per sample the perturbation ``clip(starts − x, −r, r)`` with the smallest r (bisection) that keeps it
    misclassified, and whether the start was adversarial at all (else δ = 0)."""
    delta = (starts.clamp(0.0, 1.0) - x)
    ok = model(x + delta).argmax(dim=1) != y
    delta = torch.where(bcast(ok, delta), delta, torch.zeros_like(delta))
    hi = delta.reshape(len(x), -1).abs().amax(dim=1)
    lo = torch.zeros_like(hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        r = bcast(mid, delta)
        adv = model(x + torch.maximum(torch.minimum(delta, r), -r)).argmax(dim=1) != y
        hi = torch.where(adv & ok, mid, hi)
        lo = torch.where(adv & ok, lo, mid)
    r = bcast(hi, delta)
    return torch.maximum(torch.minimum(delta, r), -r), ok


__all__ = ["fmn_linf", "min_norm_linf"]
