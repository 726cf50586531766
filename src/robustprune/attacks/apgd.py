"""In-house Auto-PGD (Croce2020: Croce & Hein 2020, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks"), L∞, batched, with per-sample early exit.

- :func:`apgd_ce` — APGD on the cross-entropy loss.
- :func:`apgd_t` — targeted APGD on the targeted DLR loss, one run per target class: the 2nd, 3rd, ...
  most likely classes of the clean point (``n_target_classes``, 9 as in AutoAttack's standard version).
- :func:`apgd` — APGD-CE, then APGD-T on the points it did not fool: the pair AutoAttack runs first in its
  standard version (its "custom" version with ``apgd-ce, apgd-t``).

One run (Croce2020 Alg. 1): a random start on the surface of the ε-ball (uniform direction scaled to
‖δ‖∞ = ε, clipped to [0, 1]); step size η = 2ε per sample; each iteration
``z = P(x + η sign(∇))``, ``x ← P(x + 0.75 (z − x) + 0.25 (x − x_prev))`` (momentum 0.75; the first step is
plain); at the checkpoints p_j (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), in
iterations) a sample halves its step and restarts from its best point when fewer than ρ = 0.75 of the
window's steps raised its loss, or when its step was not halved at the previous checkpoint and its best loss
has not risen since. A sample is fooled as soon as any iterate is misclassified; it keeps that point.

Early exit (default): a fooled point leaves the batch at once and every later step, restart, target run and
attack of the pair runs on the points still standing. Every per-sample quantity above (step size, best point,
counts) is the sample's own and the checkpoints are the same for all, so the fooled set does not depend on it;
random starts are drawn for the whole batch so the generator's stream does not either. ``early_exit=False``
attacks every point in every run. Deterministic given ``generator``; input gradients only; the model's mode and
its parameters' ``.grad`` are never touched; CPU and CUDA.

Differences from the official code (kept as the ``autoattack`` adapter for RobustBench-comparable numbers):
its random numbers come from the global seed, ours from ``generator``; its first checkpoint counts the first
step's loss increase against zero, ours against the start's loss (as in the paper's condition).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks._common import (
    bcast,
    check_eps,
    check_inputs,
    check_int,
    check_positive,
    input_grad,
    project_linf,
    rand_like,
)
from robustprune.errors import ConfigError

DEFAULT_TARGETS = 9
"""Target classes of APGD-T (AutoAttack's standard version), capped at classes − 1."""


def checkpoints(n_iter: int) -> list[int]:
    """Croce2020's checkpoints p_j·n_iter as iteration counts (the lengths of the windows summed):
    the first window is 22 % of the iterations, each next one 3 % shorter, never under 6 %."""
    k = max(int(0.22 * n_iter), 1)
    decr, k_min = max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    out, at = [], 0
    while at + k <= n_iter:
        at += k
        out.append(at)
        k = max(k - decr, k_min)
    return out


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Croce2020's targeted DLR loss ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)`` per sample (π: logits
    sorted in decreasing order). With 3 classes the denominator is ``z_π1 − z_π3``; it needs >= 3 classes."""
    c = logits.shape[1]
    if c < 3:
        raise ConfigError(f"targeted APGD (DLR-targeted loss) needs at least 3 classes, the model has {c}; "
                          "use apgd-ce")
    top = logits.topk(min(4, c), dim=1).values
    scale = top[:, 0] - (0.5 * (top[:, 2] + top[:, 3]) if c >= 4 else top[:, 2])
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (scale + 1e-12)


def _surface_start(x: Tensor, eps: float | Tensor, generator: torch.Generator | None) -> Tensor:
    """Croce2020's L∞ start: a uniform direction in [−1, 1]^d scaled so that ‖δ‖∞ = ε, clipped to [0, 1]."""
    t = 2.0 * rand_like(x, generator) - 1.0
    t = t / bcast(t.reshape(len(t), -1).abs().amax(dim=1) + 1e-12, t)
    return (x + eps * t).clamp(0.0, 1.0)


class _State:
    """The fooled flags and found points of a whole batch, shared by the runs of one call."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, clean_logits: Tensor | None = None) -> None:
        self.x = x.detach()
        self.y = y
        if clean_logits is None:
            with torch.no_grad():
                clean_logits = model(self.x)
        self.clean_logits = clean_logits
        self.found = self.clean_logits.argmax(dim=1) != y  # misclassified when clean: fooled by x itself
        self.x_found = self.x.clone()

    def record(self, idx: Tensor, x_cur: Tensor, fooled: Tensor) -> None:
        """Points ``idx`` (a subset) at ``x_cur``: keep the first successful point of each."""
        new = fooled & ~self.found[idx]
        self.x_found[idx] = torch.where(bcast(new, x_cur), x_cur, self.x_found[idx])
        self.found[idx] = self.found[idx] | fooled


def _run(
    model: nn.Module,
    st: _State,
    loss_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    targets: Tensor | None,
    *,
    eps: float | Tensor,
    n_iter: int,
    rho: float,
    generator: torch.Generator | None,
    early_exit: bool,
    x_init: Tensor | None = None,
) -> None:
    """One APGD run on the batch of ``st`` (the points not fooled yet with early exit, else all). ``eps`` is one
    budget or one per sample ``(N,)``; ``x_init`` replaces the random start (no random draw then)."""
    eps_t = eps if isinstance(eps, Tensor) else torch.full((len(st.x),), float(eps), device=st.x.device,
                                                            dtype=st.x.dtype)
    eps_b = bcast(eps_t.to(st.x.dtype), st.x)
    # drawn for the whole batch: the stream is the same either way
    x_start = _surface_start(st.x, eps_b, generator) if x_init is None else x_init.detach()
    if early_exit:
        idx = torch.nonzero(~st.found).squeeze(1)
        if idx.numel() == 0:
            return
    else:
        idx = torch.arange(len(st.x), device=st.x.device)
    x0, yy, eb = st.x[idx], st.y[idx], eps_b[idx]
    tt = None if targets is None else targets[idx]
    x_adv = x_start[idx]

    def lossf(logits: Tensor, y_: Tensor) -> Tensor:
        return loss_fn(logits, y_, tt)

    grad, logits, loss = input_grad(model, x_adv, yy, lossf)
    fooled = logits.argmax(dim=1) != yy
    st.record(idx, x_adv, fooled)
    step = 2.0 * eb.reshape(-1).clone()
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
    loss_prev = loss.clone()
    rises = torch.zeros_like(loss)
    best_at_check = loss_best.clone()
    reduced_at_check = torch.ones_like(fooled)
    x_old = x_adv
    checks = set(checkpoints(n_iter))
    last_check = 0

    def keep_only(keep: Tensor) -> None:
        nonlocal idx, x0, yy, tt, x_adv, x_old, grad, step, x_best, grad_best, loss_best, loss_prev, rises
        nonlocal best_at_check, reduced_at_check, eb
        eb = eb[keep]
        idx, x0, yy, x_adv, x_old, grad = idx[keep], x0[keep], yy[keep], x_adv[keep], x_old[keep], grad[keep]
        tt = None if tt is None else tt[keep]
        step, x_best, grad_best, loss_best = step[keep], x_best[keep], grad_best[keep], loss_best[keep]
        loss_prev, rises, best_at_check = loss_prev[keep], rises[keep], best_at_check[keep]
        reduced_at_check = reduced_at_check[keep]

    if early_exit and bool(fooled.any()):
        keep_only(~fooled)
    for i in range(n_iter):
        if idx.numel() == 0:
            break
        with torch.no_grad():
            a = 0.75 if i > 0 else 1.0
            z = project_linf(x_adv + bcast(step, x_adv) * grad.sign(), x0, eb)
            x_new = project_linf(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_old), x0, eb)
            x_old, x_adv = x_adv, x_new
        grad, logits, loss = input_grad(model, x_adv, yy, lossf)
        fooled = logits.argmax(dim=1) != yy
        st.record(idx, x_adv, fooled)
        with torch.no_grad():
            rises = rises + (loss > loss_prev).to(rises.dtype)
            loss_prev = loss
            better = loss > loss_best
            x_best = torch.where(bcast(better, x_adv), x_adv, x_best)
            grad_best = torch.where(bcast(better, grad), grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)
            if i + 1 in checks:  # a checkpoint: halve the step (and go back to the best point) where needed
                window = i + 1 - last_check
                last_check = i + 1
                oscillating = rises <= window * rho
                stalled = ~reduced_at_check & (best_at_check >= loss_best)
                reduce = oscillating | stalled
                reduced_at_check = reduce
                best_at_check = loss_best.clone()
                step = torch.where(reduce, step / 2.0, step)
                x_adv = torch.where(bcast(reduce, x_adv), x_best, x_adv)
                grad = torch.where(bcast(reduce, grad), grad_best, grad)
                rises = torch.zeros_like(rises)
        if early_exit and bool(fooled.any()):
            keep_only(~fooled)


def _check(x: Tensor, y: Tensor, eps: float, steps: int, restarts: int, rho: float) -> tuple[float, int, int, float]:
    check_inputs(x, y)
    eps = check_eps(eps)
    steps = check_int(steps, "steps", 1)
    restarts = check_int(restarts, "restarts", 1)
    rho = check_positive(rho, "rho")
    if rho > 1:
        raise ConfigError(f"rho must be in (0, 1], got {rho}")
    return eps, steps, restarts, rho


def _ce(logits: Tensor, y: Tensor, _t: Tensor | None) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _dlr_t(logits: Tensor, y: Tensor, t: Tensor | None) -> Tensor:
    assert t is not None
    return dlr_targeted_loss(logits, y, t)


def _ce_runs(model: nn.Module, st: _State, *, eps: float, steps: int, restarts: int, rho: float,
             generator: torch.Generator | None, early_exit: bool) -> None:
    for _ in range(restarts):
        _run(model, st, _ce, None, eps=eps, n_iter=steps, rho=rho, generator=generator, early_exit=early_exit)


def _t_runs(model: nn.Module, st: _State, *, eps: float, steps: int, restarts: int, rho: float,
            n_target_classes: int, generator: torch.Generator | None, early_exit: bool) -> None:
    c = st.clean_logits.shape[1]
    if c < 3:
        raise ConfigError(f"targeted APGD needs at least 3 classes, the model has {c}; use apgd-ce")
    order = st.clean_logits.argsort(dim=1, descending=True)
    for j in range(1, min(n_target_classes, c - 1) + 1):  # the (j+1)-th most likely clean class
        targets = order[:, j]
        for _ in range(restarts):
            _run(model, st, _dlr_t, targets, eps=eps, n_iter=steps, rho=rho, generator=generator,
                 early_exit=early_exit)


def _finish(st: _State) -> Tensor:
    return torch.where(bcast(st.found, st.x), st.x_found, st.x).detach()


def apgd_ce(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> Tensor:
    """APGD-CE (Croce2020), L∞: ``restarts`` runs of ``steps`` iterations on the cross-entropy; returns
    ``x_adv`` (detached): the first misclassified point found per sample, else ``x``. ``rho`` is the
    step-halving threshold. See the module docstring for the algorithm and ``early_exit``."""
    return _apgd(model, x, y, eps=eps, steps=steps, restarts=restarts, rho=rho, generator=generator,
                 early_exit=early_exit, ce=True, n_target_classes=0)


def apgd_t(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = DEFAULT_TARGETS,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> Tensor:
    """APGD-T (Croce2020), L∞: for each of the ``n_target_classes`` most likely wrong classes of the clean
    point (capped at classes − 1; 9 as in AutoAttack), ``restarts`` runs of ``steps`` iterations on the
    targeted DLR loss (:func:`dlr_targeted_loss`). Returns ``x_adv`` like :func:`apgd_ce`."""
    return _apgd(model, x, y, eps=eps, steps=steps, restarts=restarts, rho=rho, generator=generator,
                 early_exit=early_exit, ce=False, n_target_classes=n_target_classes)


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = DEFAULT_TARGETS,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> Tensor:
    """APGD-CE then APGD-T on the points it did not fool (AutoAttack's first two attacks, Croce2020), L∞.
    ``restarts`` applies to APGD-CE and to each target of APGD-T. Returns ``x_adv`` like :func:`apgd_ce`."""
    return _apgd(model, x, y, eps=eps, steps=steps, restarts=restarts, rho=rho, generator=generator,
                 early_exit=early_exit, ce=True, n_target_classes=n_target_classes, targets_if_possible=True)


def _apgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int, restarts: int, rho: float,
          generator: torch.Generator | None, early_exit: bool, ce: bool, n_target_classes: int,
          targets_if_possible: bool = False) -> Tensor:
    """The runs behind the three public attacks: APGD-CE when ``ce``, then APGD-T over ``n_target_classes``
    targets (0: none; with ``targets_if_possible`` skipped for models with fewer than 3 classes)."""
    eps, steps, restarts, rho = _check(x, y, eps, steps, restarts, rho)
    if n_target_classes:
        n_target_classes = check_int(n_target_classes, "n_target_classes", 1)
    st = _State(model, x, y)
    if eps > 0:
        if ce:
            _ce_runs(model, st, eps=eps, steps=steps, restarts=restarts, rho=rho, generator=generator,
                     early_exit=early_exit)
        if n_target_classes and (not targets_if_possible or st.clean_logits.shape[1] >= 3):
            _t_runs(model, st, eps=eps, steps=steps, restarts=restarts, rho=rho, n_target_classes=n_target_classes,
                    generator=generator, early_exit=early_exit)
    return _finish(st)


__all__ = ["DEFAULT_TARGETS", "apgd", "apgd_ce", "apgd_t", "checkpoints", "dlr_targeted_loss"]
