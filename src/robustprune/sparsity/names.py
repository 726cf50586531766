"""Names of pruning selections: ``"<score>-<group>-<scope>"``, e.g. ``"magnitude-filter-global"``.

:func:`parse_method` reads such a name (also e.g. ``magnitude-column-local``, Ye2019's column group, and the
alias ``irregular`` for ``unstructured``), but it rejects ``random-*-global`` with a :class:`ConfigError`:
Merkle2022 ("Pruning in the face of adversaries") omits it because, for a large number of groups, global random
pruning gives the same masks as local random pruning in expectation. (:func:`compute_masks` itself still computes
``score="random", scope="global"`` when called directly, for whoever wants that baseline explicitly.) Which
methods exist is the business of the one method registry, ``robustprune.methods``.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustprune.errors import ConfigError
from robustprune.sparsity.groups import GROUPS, check_group
from robustprune.sparsity.prune import SCORES, SCOPES, check_scope, check_score


@dataclass(frozen=True)
class PruningSelection:
    """What to cut and how to choose it: the three arguments of :func:`compute_masks`."""

    score: str
    group: str
    scope: str

    @property
    def name(self) -> str:
        return f"{self.score}-{self.group}-{self.scope}"

    def as_kwargs(self) -> dict[str, str]:
        return {"score": self.score, "group": self.group, "scope": self.scope}


def parse_method(name: str) -> tuple[str, str, str]:
    """``"magnitude-filter-global"`` -> ``("magnitude", "filter", "global")`` (score, group, scope)."""
    parts = str(name).strip().lower().split("-")
    if len(parts) != 3:
        raise ConfigError(
            f"pruning method {name!r} must look like <score>-<group>-<scope> with score in "
            f"{'|'.join(SCORES)}, group in {'|'.join(GROUPS)}, scope in {'|'.join(SCOPES)}, "
            "e.g. 'magnitude-unstructured-global'"
        )
    score, group, scope = check_score(parts[0]), check_group(parts[1]), check_scope(parts[2])
    if score == "random" and scope == "global":
        raise ConfigError(
            f"{name!r}: random pruning is local only (Merkle2022 omits global random pruning: it "
            f"equals local random pruning in expectation); use 'random-{group}-local'"
        )
    return score, group, scope
