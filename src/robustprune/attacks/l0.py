"""An in-house minimal-norm L0 attack: gradient-guided greedy pixel search, then pruning.

L0 counts **pixels** by default: a pixel is one spatial location of an NCHW image with all its
channels (changing R, G and B of one pixel costs 1), as in the Sparse-RS and PGD-L0 papers and as
Merkle2022 reports B&B-L0 on images. ``l0_unit="element"`` counts tensor elements instead.

Each step is one forward and one input-gradient backward of the CW margin loss
``max_{j≠y} z_j − z_y`` at the current point. From the gradient g, the first-order gain of moving
pixel p to its best box corner (each channel to 1 where g > 0, to 0 where g < 0) is
``Σ_c g_c · (corner_c − x_c)``. Two phases per sample, all batched, no host synchronisation:

1. *search* (not yet misclassified): the pixels already changed are free, so their channels are
   reset to their best corners; of the others, the highest-gain pixels are added — half of the
   number the first-order estimate says is needed to cross the decision boundary, but at least a
   quarter of those already changed (the estimate is often optimistic on a ReLU net), at least 1
   and at most ``max_pixels_per_step``. On a linear model this is the exact greedy minimum.
2. *prune* (misclassified once): each step puts back to its clean value the changed pixel whose
   first-order cost is lowest; if the point is no longer misclassified the pixel is restored and
   kept for good.

The smallest misclassified point seen is returned. ``generator`` is unused (the attack is
deterministic) and accepted for the common signature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustprune.attacks._common import (
    check_inputs,
    check_int,
    check_radius,
    finish_min_norm,
    input_grad,
    misclassified,
)
from robustprune.attacks.losses import cw_loss
from robustprune.attacks.results import MinNormResult, check_l0_unit, pixel_view


def greedy_l0(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | None = None,
    steps: int = 100,
    max_pixels_per_step: int | None = None,
    l0_unit: str = "pixel",
    generator: torch.Generator | None = None,
) -> MinNormResult | Tensor:
    """Minimal-norm L0 attack; returns a :class:`MinNormResult` whose norms count pixels changed
    (``l0_unit="pixel"``, the default) or tensor elements changed (``"element"``).

    ``steps`` forward + input-gradient backward passes in all (search, then pruning);
    ``max_pixels_per_step`` caps how many pixels one search step may add (default: 1/20 of the
    pixels, at least 1). With ``eps`` (a number of pixels, or elements) it acts as a budget attack
    and returns ``x_adv``: the point found where its L0 norm ≤ ε, else ``x``.
    Never changes the model's mode or any parameter's ``.grad``.
    """
    check_inputs(x, y)
    l0_unit = check_l0_unit(l0_unit)
    if eps is not None:
        eps = check_radius(eps)
    steps = check_int(steps, "steps", 1)
    x = x.detach()
    xv = pixel_view(x, l0_unit)  # (N, C, P)
    n, _, n_pix = xv.shape
    cap = max(1, n_pix // 20) if max_pixels_per_step is None else check_int(max_pixels_per_step, "max_pixels_per_step", 1)
    dev = x.device
    rank = torch.arange(n_pix, device=dev).expand(n, n_pix)
    rows = torch.arange(n, device=dev)

    x_cur = xv.clone()
    modified = torch.zeros(n, n_pix, dtype=torch.bool, device=dev)
    kept = torch.zeros_like(modified)  # pruning put it back and lost: keep it changed
    refining = torch.zeros(n, dtype=torch.bool, device=dev)
    pending = torch.full((n,), -1, dtype=torch.long, device=dev)  # pixel put back last step
    best = xv.clone()
    best_count = torch.full((n,), float("inf"), device=dev)

    def record(fooled: Tensor) -> None:
        nonlocal best, best_count
        count = modified.sum(1).to(best_count.dtype)
        better = fooled & (count < best_count)
        best = torch.where(better[:, None, None], x_cur, best)
        best_count = torch.where(better, count, best_count)

    for _ in range(steps):
        g, logits, loss_v = input_grad(model, x_cur.view_as(x), y, cw_loss)
        g = pixel_view(g, l0_unit)
        fooled = misclassified(logits, y)
        # a pixel put back last step that lost the misclassification: restore the best point
        undo = refining & (pending >= 0) & ~fooled
        p_safe = pending.clamp_min(0)
        x_cur = torch.where(undo[:, None, None], best, x_cur)
        hit = torch.zeros_like(modified).scatter_(1, p_safe[:, None], True) & undo[:, None]
        modified = modified | hit
        kept = kept | hit
        record(fooled)
        refining = refining | fooled
        pending = torch.full_like(pending, -1)

        # ---- search: add the best pixels (only samples never misclassified yet)
        corner = torch.where(g > 0, torch.ones_like(x_cur), torch.where(g < 0, torch.zeros_like(x_cur), x_cur))
        gain = (g * (corner - x_cur)).sum(1)  # (N, P), >= 0
        free = (gain * modified).sum(1)
        need = -loss_v - free  # margin left after re-cornering the changed pixels
        key = torch.where(modified, torch.full_like(gain, float("-inf")), gain)
        sorted_gain, order = key.sort(dim=1, descending=True, stable=True)
        csum = torch.where(torch.isfinite(sorted_gain), sorted_gain, torch.zeros_like(sorted_gain)).cumsum(1)
        needed = ((csum < need[:, None]).sum(1) + 1).clamp(max=n_pix)
        grow = (modified.sum(1) + 3) // 4  # first-order is often optimistic: grow ≥ 25 % a step
        k = torch.maximum((needed + 1) // 2, grow).clamp(min=1, max=cap)
        add = torch.zeros_like(modified).scatter_(1, order, rank < k[:, None]) & ~modified
        search = ~refining
        new_mod = modified | (add & search[:, None])
        x_search = torch.where(new_mod[:, None, :], corner, x_cur)

        # ---- prune: put back the cheapest changed pixel (samples misclassified now)
        cost = (g * (xv - x_cur)).sum(1)  # first-order change of the loss when put back
        cand = modified & ~kept
        p = torch.where(cand, cost, torch.full_like(cost, float("-inf"))).argmax(1)
        prune = refining & fooled & cand.any(1)
        x_prune = x_cur.clone()
        x_prune[rows, :, p] = xv[rows, :, p]
        drop = torch.zeros_like(modified).scatter_(1, p[:, None], True) & prune[:, None]

        x_cur = torch.where(search[:, None, None], x_search, torch.where(prune[:, None, None], x_prune, x_cur))
        modified = torch.where(search[:, None], new_mod, modified & ~drop)
        pending = torch.where(prune, p, pending)

    with torch.no_grad():
        fooled = misclassified(model(x_cur.view_as(x)), y)
    record(fooled)
    x_found = best.view_as(x)
    return finish_min_norm(
        model, x, y, x_found, torch.isfinite(best_count), norm="L0", l0_unit=l0_unit, eps=eps
    )
