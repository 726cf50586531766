"""Projected gradient descent (Madry et al. 2018), L∞ and L2.

- :func:`pgd_linf` — the evaluation attack: restarts, and per sample the worst point seen
  (a sample once misclassified keeps its first successful point; otherwise the highest loss).
- :func:`pgd_l2` — the same evaluation loop in the L2 geometry; :func:`cw_linf` — ``pgd_linf``
  on the Carlini–Wagner margin loss ("CW∞").
- :func:`pgd_linf_last` — the training inner maximisation: the last iterate, nothing tracked,
  so a k-step attack costs exactly k forward + k input-gradient backward passes.

Step size: the evaluation attacks default to Madry's 2.5 ε / steps (:func:`madry_alpha`), the step the
evaluation has always passed, so a direct call and an evaluation run agree (with 10 steps it equals the
former direct-call default ε/4). The training loop :func:`pgd_linf_last` keeps ε/4: the objectives document
and hash that step, and a change there would change every trained model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robustprune.attacks._common import (
    check_eps,
    check_inputs,
    check_int,
    check_positive,
    check_radius,
    input_grad,
    normalize_l2,
    project_l2,
    project_linf,
    uniform_l2_start,
    uniform_start,
)
from robustprune.attacks.losses import get_loss

LossArg = str | Callable[[Tensor, Tensor], Tensor]


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def madry_alpha(eps: float, steps: int) -> float:
    """Madry et al.'s step size 2.5 ε / steps, the default of every evaluation attack (a direct call and an
    evaluation run take the same step; the training inner loop :func:`pgd_linf_last` keeps ε/4)."""
    return 2.5 * eps / steps


def _pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    restarts: int,
    random_start: bool,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    generator: torch.Generator | None,
    start: Callable[[Tensor, float, torch.Generator | None], Tensor],
    step: Callable[[Tensor, Tensor, Tensor], Tensor],
    early_exit: bool = True,
) -> Tensor:
    """The evaluation PGD loop shared by the L∞ and L2 versions (see :func:`pgd_linf`).

    ``start(x, eps, generator)`` draws a random start; ``step(x_adv, grad, x)`` takes one
    ascent step and projects it back onto the ball and [0, 1].

    The clean point is the first candidate (one no-grad forward): a point misclassified when clean is
    already fooled. With ``early_exit`` a fooled point leaves the batch at once and later steps run on
    the points still standing only; its result is frozen at its first successful point either way, and
    random starts are drawn for the whole batch, so the answer is the same as without early exit.
    """
    if not random_start:
        restarts = 1
    x = x.detach()
    with torch.no_grad():
        logits0 = model(x)
        best_fooled = logits0.argmax(dim=1) != y
        best_loss = loss_fn(logits0, y).to(x.dtype)
    best_x = x.clone()

    def update(idx: Tensor | None, x_cur: Tensor, logits: Tensor, loss_v: Tensor) -> Tensor:
        """Track the best point of the samples ``idx`` (None: all); returns their fooled flags."""
        nonlocal best_x, best_loss, best_fooled
        yy = y if idx is None else y[idx]
        fooled = logits.argmax(dim=1) != yy
        if idx is None:
            replace = ~best_fooled & (fooled | (loss_v > best_loss))
            best_x = torch.where(_bcast(replace, x_cur), x_cur, best_x)
            best_loss = torch.where(replace, loss_v.to(best_loss.dtype), best_loss)
            best_fooled = best_fooled | fooled
            return best_fooled
        replace = ~best_fooled[idx] & (fooled | (loss_v > best_loss[idx]))
        best_x[idx] = torch.where(_bcast(replace, x_cur), x_cur, best_x[idx])
        best_loss[idx] = torch.where(replace, loss_v.to(best_loss.dtype), best_loss[idx])
        best_fooled[idx] = best_fooled[idx] | fooled
        return best_fooled[idx]

    for _ in range(restarts):
        # drawn for the whole batch, so the generator's stream does not depend on who is left
        x_adv = start(x, eps, generator) if random_start else x.clone()
        idx: Tensor | None = None
        x0, yy = x, y
        if early_exit:
            idx = torch.nonzero(~best_fooled).squeeze(1)
            x_adv, x0, yy = x_adv[idx], x[idx], y[idx]
        for _ in range(steps):
            if idx is not None and idx.numel() == 0:
                break
            grad, logits, loss_v = input_grad(model, x_adv, yy, loss_fn)
            fooled = update(idx, x_adv, logits, loss_v)
            x_adv = step(x_adv, grad, x0)
            if idx is not None and bool(fooled.any()):  # early exit: compact the batch
                keep = ~fooled
                idx, x_adv, x0, yy = idx[keep], x_adv[keep], x0[keep], yy[keep]
        if idx is None or idx.numel():
            with torch.no_grad():
                logits = model(x_adv)
                update(idx, x_adv, logits, loss_fn(logits, yy))
    return best_x.detach()


def pgd_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    restarts: int = 1,
    random_start: bool = True,
    loss: LossArg = "ce",
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> Tensor:
    """Madry L∞ PGD with restarts; returns the worst point found per sample (detached).

    Each step is one forward and one input-gradient backward of ``loss`` (``"ce"``, ``"cw"``,
    ``"dlr"`` or a callable ``(logits, y) -> (N,)``) summed over the batch, then a signed step of
    ``alpha`` (default Madry's 2.5 ε / steps, the same step the evaluation uses) and the projection
    onto the ε-ball and [0, 1]. The clean point is the first candidate (one no-grad forward); the
    best point per sample is tracked from the logits of each step's forward (the iterate before the
    step) plus one final forward at the last iterate of each restart. A sample that is misclassified
    keeps its first successful point (the clean point if it is misclassified already); any other
    keeps its highest-loss point. A restart starts uniformly in the ε-ball (``random_start``);
    without a random start all restarts would coincide, so only one is run.

    ``early_exit`` (default): a point leaves the batch as soon as it is misclassified (clean or
    adversarial), and the later steps and restarts run on the points still standing only; the answer
    is the same as with ``early_exit=False``, which keeps every point to the end and never
    synchronises with the host inside the loop (early exit does, once a step, to compact the batch).
    Deterministic given ``generator``; never changes the model's mode or any parameter's ``.grad``.
    """
    check_inputs(x, y)
    eps = check_eps(eps)
    steps = check_int(steps, "steps", 1)
    alpha = madry_alpha(eps, steps) if alpha is None else check_positive(alpha, "alpha")
    restarts = check_int(restarts, "restarts", 1)
    loss_fn = get_loss(loss)

    def step(x_adv: Tensor, grad: Tensor, x0: Tensor) -> Tensor:
        return project_linf(x_adv + alpha * grad.sign(), x0, eps)

    return _pgd(
        model, x, y, eps=eps, steps=steps, restarts=restarts, random_start=random_start,
        loss_fn=loss_fn, generator=generator, start=uniform_start, step=step, early_exit=early_exit,
    )


def cw_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> Tensor:
    """CW-L∞: :func:`pgd_linf` on the Carlini–Wagner margin loss ``max_{j≠y} z_j − z_y``.

    The usual "CW∞" of the robustness literature (Madry-style PGD with the CW loss), not the
    original iterative C&W-L∞ attack. Same arguments and guarantees as :func:`pgd_linf`.
    """
    return pgd_linf(
        model, x, y, eps=eps, alpha=alpha, steps=steps, restarts=restarts,
        random_start=random_start, loss="cw", generator=generator, early_exit=early_exit,
    )


def pgd_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    restarts: int = 1,
    random_start: bool = True,
    loss: LossArg = "ce",
    generator: torch.Generator | None = None,
    early_exit: bool = True,
) -> Tensor:
    """L2 PGD with restarts; returns the worst point found per sample (detached).

    Like :func:`pgd_linf` with the L2 geometry: ``eps`` is the L2 radius in pixel units (any value
    ≥ 0, e.g. 0.5 on CIFAR-10), each step moves ``alpha`` (default 2.5 ε / steps) along the L2-normalised
    gradient, then projects onto the ε-ball (rescaling δ) and clips to [0, 1] (clipping only
    shrinks δ, so the point stays in the ball). A random start is uniform in the L2 ball. Best
    point per sample, early exit, cost, determinism and the contract are those of :func:`pgd_linf`.
    """
    check_inputs(x, y)
    eps = check_radius(eps)
    steps = check_int(steps, "steps", 1)
    alpha = madry_alpha(eps, steps) if alpha is None else check_positive(alpha, "alpha")
    restarts = check_int(restarts, "restarts", 1)
    loss_fn = get_loss(loss)

    def step(x_adv: Tensor, grad: Tensor, x0: Tensor) -> Tensor:
        return project_l2(x_adv + alpha * normalize_l2(grad), x0, eps)

    return _pgd(
        model, x, y, eps=eps, steps=steps, restarts=restarts, random_start=random_start,
        loss_fn=loss_fn, generator=generator, start=uniform_l2_start, step=step, early_exit=early_exit,
    )


def pgd_linf_last(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    loss: LossArg = "ce",
    generator: torch.Generator | None = None,
    x_init: Tensor | None = None,
) -> Tensor:
    """Madry L∞ PGD returning the last iterate, for training (detached).

    Exactly ``steps`` forward + input-gradient backward passes, no tracking and no final forward.
    ``target`` is whatever ``loss`` takes as its second argument (labels for ``"ce"``; e.g. clean
    probabilities for TRADES' KL). The start is ``x_init`` if given (projected onto the ball),
    else uniform in the ε-ball when ``random_start``, else ``x``.
    """
    eps = check_eps(eps)
    alpha = eps / 4 if alpha is None else check_positive(alpha, "alpha")
    steps = check_int(steps, "steps", 1)
    loss_fn = get_loss(loss)
    x = x.detach()
    if x_init is not None:
        x_adv = project_linf(x_init.detach(), x, eps)
    elif random_start:
        x_adv = uniform_start(x, eps, generator)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        grad, _, _ = input_grad(model, x_adv, target, loss_fn)
        x_adv = project_linf(x_adv + alpha * grad.sign(), x, eps)
    return x_adv.detach()
