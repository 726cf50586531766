"""Masks on weights: groups, scores, scope, the projection onto a sparsity set, and reports.

* :mod:`.groups`: what is cut together (``unstructured`` / ``kernel`` / ``filter`` / ``column``)
  and which layers are prunable;
* :mod:`.prune`: which groups to cut (``magnitude`` / ``random`` scores, ``local`` / ``global``
  scope): :func:`compute_masks`;
* :mod:`.masks`: :class:`MaskSet`, how a cut stays cut through training;
* :mod:`.projection`: :func:`project`, the Euclidean projection used by ADMM (Ye2019 (AdvPrune) Eq. 10-13);
* :mod:`.report`: :func:`sparsity_report`, the zeros actually present;
* :mod:`.names`: selection names ``<score>-<group>-<scope>`` (:func:`parse_method`);
* :mod:`.units`: a fully pruned unit loses its bias and BatchNorm terms too;
* :mod:`.slim`: physical removal of pruned units (trace, cut, fold, check, shapes).

Papers by author-year: Ye2019 (AdvPrune), Madaan2020 (ANP), Merkle2022 ("Pruning in the face of
adversaries"), Jian2022 (PwoA), Sehwag2020 (HYDRA).

When to cut (one-shot, iterative schedules, ADMM) belongs to ``robustprune.methods``.
"""

from robustprune.sparsity.groups import (
    GROUPS,
    check_group,
    check_keep,
    expand_groups,
    group_view,
    num_groups,
    num_keep,
    prunable_layers,
)
from robustprune.sparsity.masks import MaskSet
from robustprune.sparsity.names import PruningSelection, parse_method
from robustprune.sparsity.projection import project, project_mask
from robustprune.sparsity.prune import (
    COUNTS,
    SCOPES,
    SCORES,
    check_count,
    check_scope,
    check_score,
    compute_masks,
    group_scores,
)
from robustprune.sparsity.report import sparsity_report

__all__ = [
    "COUNTS",
    "GROUPS",
    "SCORES",
    "SCOPES",
    "MaskSet",
    "PruningSelection",
    "check_count",
    "check_group",
    "check_keep",
    "check_scope",
    "check_score",
    "compute_masks",
    "expand_groups",
    "group_scores",
    "group_view",
    "num_groups",
    "num_keep",
    "parse_method",
    "project",
    "project_mask",
    "prunable_layers",
    "sparsity_report",
]
from robustprune.sparsity.slim import (  # noqa: E402
    SelectLinear,
    SlimResult,
    UnitSite,
    fold_unit_scales,
    slim_model,
    supported_sites,
    unit_sites,
)

__all__ += ["SelectLinear", "SlimResult", "UnitSite", "fold_unit_scales", "slim_model", "supported_sites", "unit_sites"]
from robustprune.sparsity.structure import conv_filters, structure_metrics  # noqa: E402

__all__ += ["conv_filters", "structure_metrics"]
