"""Which groups to cut: scores and scope (Merkle2022 §3.3).

Scores (higher = more important, kept first):

* ``magnitude``: the mean absolute value of the group, ``||w_g||_1 / |g|``. Inside one layer all
  groups have the same size, so this ranks exactly like the group **L1 norm** (and like ``|w|`` for
  ``unstructured``). Dividing by the group size only matters for ``global`` scope with structured
  groups, where kernels/filters/columns of different layers have different sizes: normalised, a
  3x3 kernel and a 5x5 kernel (or a 16-channel and a 512-channel filter) compete on the same scale
  instead of big groups always winning.
* ``random``: i.i.d. uniform scores drawn from ``generator`` (one draw per group, layers in model
  order), so the same generator seed gives the same masks.

Scope:

* ``local``: every layer keeps ``round(keep * n_groups)`` of its groups (at least 1);
* ``global``: one threshold over all groups of all prunable layers: groups are taken in order of
  decreasing score until what is kept is as close as possible to ``keep`` of the whole, where the
  whole is counted by ``count``:

  - ``count="groups"`` (the default): the number of *groups*, i.e. ``round(keep * total_groups)``
    groups are kept (for filters: ``round((1 - keep) * n_filters)`` filters removed, the rule of the
    Adversarial Pruning Benchmark's structured cells and of Twin-Rep's reference code, train.py
    ``structured_pruning``: ``thres_index = round(N * ratio) + 1``);
  - ``count="weights"``: the number of *weights* in the kept groups is as close as possible to
    ``keep * total_prunable_weights`` (within one group: groups of different layers have different
    sizes, so this keeps a different fraction of the filters).

  For ``unstructured`` the two are the same. Then every layer left with no group gets back its best
  group (a layer is never removed entirely), which can keep a few groups more than the count.

  With ``local`` scope all groups of one layer have the same size, so the kept fraction of a layer's
  groups is also the kept fraction of its weights; ``count`` changes nothing.

``previous`` masks stay pruned: scores are computed on the masked weights, a group whose weights are
all pruned already gets score ``-inf`` (ranked last) and counts toward the pruned, and the result is
AND-ed with ``previous``. ``keep`` is always the fraction of *all* prunable groups (or weights) that
remains (``1 / compression``), not a fraction of what survived the previous round. Ties are broken by
position (model order, then index inside the layer; the earlier group is kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.sparsity.groups import (
    check_group,
    check_keep,
    expand_groups,
    group_view,
    num_keep,
    prunable_layers,
)
from robustprune.sparsity.masks import MaskSet

SCORES: tuple[str, ...] = ("magnitude", "random")
SCOPES: tuple[str, ...] = ("local", "global")
COUNTS: tuple[str, ...] = ("groups", "weights")
"""What a structured budget counts under global scope (module docstring): whole groups, or the weights in them."""


def check_count(count: str) -> str:
    c = str(count).lower()
    if c not in COUNTS:
        raise ConfigError(f"unknown budget count {count!r}; choose one of: {', '.join(COUNTS)} (groups: the rate "
                          "counts the filters / kernels / columns removed; weights: the weights in them)")
    return c


def check_score(score: str) -> str:
    s = str(score).lower()
    if s not in SCORES:
        raise ConfigError(f"unknown pruning score {score!r}; choose one of: {', '.join(SCORES)}")
    return s


def check_scope(scope: str) -> str:
    s = str(scope).lower()
    if s not in SCOPES:
        raise ConfigError(f"unknown pruning scope {scope!r}; choose one of: {', '.join(SCOPES)}")
    return s


def group_scores(
    weight: Tensor,
    group: str,
    score: str,
    *,
    alive: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-group scores (float64, on ``weight``'s device); groups with no alive weight get ``-inf``.

    ``alive`` is a bool mask shaped like ``weight`` (``True`` = not pruned before).
    """
    g = check_group(group)
    s = check_score(score)
    w = weight.detach()
    if alive is not None:
        w = w.masked_fill(~alive, 0)
    rows = group_view(w, g)
    n = rows.shape[0]
    if s == "magnitude":
        scores = rows.double().abs().mean(dim=1)
    else:
        gen_device = generator.device if generator is not None else w.device
        scores = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).to(w.device)
    if alive is not None:
        dead = ~group_view(alive, g).any(dim=1)
        scores = scores.masked_fill(dead, float("-inf"))
    return scores


def compute_masks(
    model: nn.Module,
    *,
    group: str,
    score: str,
    scope: str,
    keep: float,
    previous: MaskSet | None = None,
    generator: torch.Generator | None = None,
    layers: Sequence[str] | None = None,
    count: str = "groups",
) -> MaskSet:
    """Masks that keep the fraction ``keep`` of the prunable groups (``count="groups"``) or weights
    (``count="weights"``) of ``model``; the two differ only for structured groups under global scope.

    See the module docstring for the definitions; the weights themselves are not changed
    (call ``masks.apply(model)``). ``layers``: prune only these prunable layers (the others get no mask and stay
    dense; global scope ranks across these only); None: every prunable layer of the group.
    """
    g = check_group(group)
    s = check_score(score)
    sc = check_scope(scope)
    k = check_keep(keep)
    cnt = check_count(count)
    names = layers
    layers = prunable_layers(model, g)
    if names is not None:
        unknown = [n for n in names if n not in layers]
        if unknown:
            raise ConfigError(f"layers {unknown[:5]} are not prunable with group {g!r}; prunable: "
                              f"{', '.join(list(layers)[:8])}")
        layers = {n: layers[n] for n in layers if n in set(names)}
    if not layers:
        raise ConfigError(
            f"model has no layers prunable with group {g!r} "
            "(unstructured prunes Conv2d/Linear, structured groups prune Conv2d only)"
        )
    prev = previous.masks if previous is not None else {}

    alive: dict[str, Tensor] = {}
    scores: dict[str, Tensor] = {}
    for name, mod in layers.items():
        w = mod.weight
        a = prev.get(name)
        if a is not None:
            if a.shape != w.shape:
                raise ConfigError(
                    f"previous mask for {name!r} has shape {tuple(a.shape)}, weight has {tuple(w.shape)}"
                )
            a = a.to(w.device)
        alive[name] = a if a is not None else torch.ones_like(w, dtype=torch.bool)
        scores[name] = group_scores(w, g, s, alive=alive[name], generator=generator)

    keep_groups = _select_local(scores, k) if sc == "local" else _select_global(scores, alive, g, k, count=cnt)

    out: dict[str, Tensor] = {}
    for name, mod in layers.items():
        m = expand_groups(keep_groups[name], g, mod.weight.shape) & alive[name]
        out[name] = m
    result = MaskSet(out)
    if previous is not None:  # layers masked before but not prunable under this group stay masked
        result = result.combine(previous)
    return result


def _top(scores: Tensor, k: int) -> Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    keep[order[:k]] = True
    return keep


def _select_local(scores: dict[str, Tensor], keep: float) -> dict[str, Tensor]:
    return {name: _top(sc, num_keep(sc.shape[0], keep)) for name, sc in scores.items()}


def _select_global(
    scores: dict[str, Tensor], alive: dict[str, Tensor], group: str, keep: float, *, count: str = "groups"
) -> dict[str, Tensor]:
    names = list(scores)
    device = next(iter(scores.values())).device
    all_scores = torch.cat([scores[n].to(device) for n in names])
    # size of a group = its alive weights (already-pruned weights are not kept again)
    sizes = torch.cat([group_view(alive[n], group).sum(dim=1).to(device) for n in names]).to(torch.float64)
    order = torch.sort(all_scores, descending=True, stable=True).indices

    if check_count(count) == "groups" and group != "unstructured":
        # round(keep * G) groups of all G (alive and already pruned: a pruned group counts toward the pruned, and
        # ranks last); halves round up, as num_keep per layer
        n_take = int(math.floor(keep * all_scores.shape[0] + 0.5))
    else:
        total = float(sum(a.numel() for a in alive.values()))
        target = keep * total
        cum = torch.cumsum(sizes[order], dim=0)
        # number of groups n in [0, G] whose cumulative kept weights are closest to target; a tie
        # between one below and one above rounds up (like round-half-up per layer), and among equal
        # sums (zero-size, fully pruned groups) the fewest groups are taken
        cum0 = torch.cat([torch.zeros(1, dtype=cum.dtype, device=device), cum])
        dist = (cum0 - target).abs()
        cand = torch.nonzero(dist <= dist.min() + 1e-9).flatten()
        above = cand[cum0[cand] >= target]
        n_take = int(above.min()) if above.numel() else int(cand.min())
    flat = torch.zeros(all_scores.shape[0], dtype=torch.bool, device=device)
    flat[order[:n_take]] = True

    has_alive = sizes > 0
    out: dict[str, Tensor] = {}
    start = 0
    for n in names:
        cnt = scores[n].shape[0]
        m = flat[start : start + cnt]
        alive_here = has_alive[start : start + cnt]
        start += cnt
        m = m.to(scores[n].device)
        if cnt and not bool((m & alive_here.to(m.device)).any()):  # never remove a whole layer:
            m = m | _top(scores[n], 1)  # keep its best (alive if any) group
        out[n] = m
    return out
