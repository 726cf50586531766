"""FGSM (Goodfellow et al. 2015) and FGSM with a random start (FGSM-RS, Wong et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustprune.attacks._common import (
    check_eps,
    check_inputs,
    check_positive,
    input_grad,
    project_linf,
    uniform_start,
)
from robustprune.attacks.losses import ce_loss


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    random_start: bool = False,
    alpha: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L∞ FGSM: one signed-gradient step of the cross-entropy; with ``random_start`` FGSM-RS.

    Without a random start the step is ``alpha`` (default ε) from ``x``. With ``random_start``
    (Wong et al. 2020, "Fast is better than free") the start is uniform in the ε-ball (clipped to
    [0, 1]) and the step defaults to ``alpha = 1.25 ε``. The result is projected back onto the
    ε-ball of ``x`` and [0, 1]. One forward and one input-gradient backward; the model's mode and
    its parameters' ``.grad`` are left untouched. Returns a detached ``x_adv``.
    """
    check_inputs(x, y)
    eps = check_eps(eps)
    if alpha is None:
        alpha = 1.25 * eps if random_start else eps
    else:
        alpha = check_positive(alpha, "alpha")
    x = x.detach()
    x0 = uniform_start(x, eps, generator) if random_start else x
    grad, _, _ = input_grad(model, x0, y, ce_loss)
    return project_linf(x0 + alpha * grad.sign(), x, eps).detach()
