"""Euclidean projection onto a group-sparsity set (Ye2019 (AdvPrune) Eq. 10-13), used by ADMM.

``S = {w : at most k groups of w are non-zero}`` with ``k = round(keep * n_groups)`` (at least 1).
The Euclidean projection ``argmin_{z in S} ||z - w||_2`` keeps the ``k`` groups with the largest
**L2 (Frobenius) norm** unchanged and zeroes the others: the squared distance is the sum of the
squared norms of the zeroed groups, which is smallest when the zeroed groups are the smallest ones.
For ``unstructured`` this is "keep the ``k`` largest ``|w|``" (Eq. 13); ``filter`` is Eq. 11
(``O_n = ||w[n]||_F^2``); ``column`` is Eq. 12 (``O_c = ||w[:, c, h, w]||_F^2``).

Note the projection ranks by L2 norm, while magnitude *pruning* (:mod:`.prune`) ranks by L1 norm
(mean ``|w|``); both are standard, they may keep different groups, and that is intended.
Ties are broken by index (the lower index is kept), so the result is deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustprune.sparsity.groups import check_group, check_keep, expand_groups, group_view, num_keep


def _top_groups(scores: Tensor, k: int) -> Tensor:
    """Bool vector marking the ``k`` largest ``scores`` (stable: ties go to the lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def project_mask(weight: Tensor, group: str, keep: float) -> Tensor:
    """Bool mask (shaped like ``weight``) of the groups the Euclidean projection keeps."""
    g = check_group(group)
    k_frac = check_keep(keep)
    with torch.no_grad():
        rows = group_view(weight.detach(), g)
        norms = rows.double().pow(2).sum(dim=1)
        k = num_keep(rows.shape[0], k_frac)
        return expand_groups(_top_groups(norms, k), g, weight.shape)


def project(weight: Tensor, group: str, keep: float) -> Tensor:
    """``Π_S(weight)``: a new tensor with all but the ``round(keep * n_groups)`` largest-L2-norm
    groups set to zero (no autograd graph)."""
    mask = project_mask(weight, group, keep)
    with torch.no_grad():
        return weight.detach().masked_fill(~mask, 0)
