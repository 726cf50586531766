"""Tests of robustprune.sparsity: groups, scores, scope, masks through training, projection, report."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from robustprune.errors import ConfigError
from robustprune.sparsity import (
    GROUPS,
    SCOPES,
    SCORES,
    MaskSet,
    compute_masks,
    expand_groups,
    group_view,
    num_keep,
    parse_method,
    project,
    project_mask,
    prunable_layers,
    sparsity_report,
)

KEEPS = (1 / 2, 1 / 4, 1 / 8, 1 / 16)
INPUT = (2, 6, 6)


def small_model(seed: int = 0) -> nn.Sequential:
    """conv(2->8, 3x3) -> conv(8->16, 3x3) -> linear(256->20) -> linear(20->5) on 2x6x6 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 20),
        nn.ReLU(),
        nn.Linear(20, 5),
    )


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def group_masks(masks: MaskSet, model: nn.Module, group: str) -> dict[str, torch.Tensor]:
    """Per-layer per-group bool vectors; asserts each mask is constant on every group."""
    out = {}
    for name, mod in prunable_layers(model, group).items():
        rows = group_view(masks[name], group)
        assert bool((rows.all(dim=1) | ~rows.any(dim=1)).all()), f"{name}: mask not group-structured"
        out[name] = rows[:, 0]
    return out


# ---------------------------------------------------------------- prunable layers and groups


def test_prunable_layers_by_group():
    m = small_model()
    assert list(prunable_layers(m, "unstructured")) == ["0", "2", "5", "7"]
    for g in ("kernel", "filter", "column"):
        assert list(prunable_layers(m, g)) == ["0", "2"]
    with pytest.raises(ConfigError):
        prunable_layers(m, "channelz")


def test_group_views_match_definitions():
    w = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    assert torch.equal(group_view(w, "filter")[2], w[2].flatten())
    assert torch.equal(group_view(w, "kernel")[1 * 3 + 2], w[1, 2].flatten())
    # column index (c, h, w) in C*H*W order, across all filters
    c, h, ww = 1, 0, 1
    assert torch.equal(group_view(w, "column")[c * 4 + h * 2 + ww], w[:, c, h, ww])
    assert group_view(w, "unstructured").shape == (48, 1)
    for g, n in (("unstructured", 48), ("kernel", 12), ("filter", 4), ("column", 12)):
        v = torch.zeros(n, dtype=torch.bool)
        v[1] = True
        full = expand_groups(v, g, w.shape)
        assert full.shape == w.shape
        assert torch.equal(group_view(full, g)[:, 0], v)
        assert int(full.sum()) == w.numel() // n


# ---------------------------------------------------------------- achieved fractions


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("keep", KEEPS)
def test_achieved_fraction(group, scope, score, keep):
    model = small_model()
    masks = compute_masks(model, group=group, score=score, scope=scope, keep=keep, generator=gen(1))
    layers = prunable_layers(model, group)
    assert list(masks.masks) == list(layers)
    gm = group_masks(masks, model, group)
    for name, mod in layers.items():
        assert masks[name].dtype == torch.bool and masks[name].shape == mod.weight.shape
        assert int(gm[name].sum()) >= 1, "a layer must keep at least one group"
    if scope == "local":
        for name, v in gm.items():
            n = v.numel()
            assert int(v.sum()) == num_keep(n, keep)
            assert abs(int(v.sum()) - keep * n) <= 1
    elif group != "unstructured":
        # structured, global: the budget counts groups (round(keep * G) of all G groups), a layer left empty getting
        # back its best group; budget counted in weights: within one group of keep * all weights
        groups = sum(v.numel() for v in gm.values())
        topped = sum(1 for v in gm.values() if int(v.sum()) == 1)
        assert math.floor(keep * groups + 0.5) <= sum(int(v.sum()) for v in gm.values()) \
            <= math.floor(keep * groups + 0.5) + topped
        by_weight = group_masks(compute_masks(model, group=group, score=score, scope=scope, keep=keep,
                                              generator=gen(1), count="weights"), model, group)
        total = sum(m.weight.numel() for m in layers.values())
        kept = sum(int(v.sum()) * group_view(layers[n].weight, group).shape[1] for n, v in by_weight.items())
        sizes = {n: group_view(layers[n].weight, group).shape[1] for n in layers}
        forced = sum(sizes[n] for n, v in by_weight.items() if int(v.sum()) == 1)
        assert abs(kept - keep * total) <= max(sizes.values()) + forced
    else:
        total = sum(m.weight.numel() for m in layers.values())
        kept = masks.kept()
        sizes = {n: group_view(layers[n].weight, group).shape[1] for n in layers}
        # within one group overall, plus one group for each layer that may have been topped up
        forced = sum(sizes[n] for n, v in gm.items() if int(v.sum()) == 1)
        assert abs(kept - keep * total) <= max(sizes.values()) + forced
        if forced == 0:
            assert kept == math.floor(keep * total + 0.5)


def test_keep_one_keeps_everything_and_bad_keep_rejected():
    model = small_model()
    for g in GROUPS:
        for sc in SCOPES:
            assert compute_masks(model, group=g, score="magnitude", scope=sc, keep=1.0).keep_fraction() == 1.0
    for bad in (0, 0.0, -0.5, 1.5, float("nan"), "half"):
        with pytest.raises(ConfigError):
            compute_masks(model, group="unstructured", score="magnitude", scope="local", keep=bad)
    with pytest.raises(ConfigError):
        compute_masks(model, group="unstructured", score="gradient", scope="local", keep=0.5)
    with pytest.raises(ConfigError):
        compute_masks(model, group="unstructured", score="magnitude", scope="layer", keep=0.5)
    lin = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError):  # structured groups prune conv layers only
        compute_masks(lin, group="filter", score="magnitude", scope="local", keep=0.5)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("scope", SCOPES)
def test_tiny_keep_never_removes_a_layer(group, scope):
    model = small_model()
    masks = compute_masks(model, group=group, score="magnitude", scope=scope, keep=1e-4)
    for name, v in group_masks(masks, model, group).items():
        assert int(v.sum()) == 1, name


# ---------------------------------------------------------------- local vs global


@pytest.mark.parametrize("group", GROUPS)
def test_global_keeps_more_of_the_big_layer(group):
    model = small_model()
    with torch.no_grad():
        for mod in prunable_layers(model).values():  # same scale everywhere ...
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen(0)) * 0.1)
        model[2].weight.mul_(10.0)  # ... except the second conv: much larger weights
    keep = 0.25
    local = compute_masks(model, group=group, score="magnitude", scope="local", keep=keep)
    glob = compute_masks(model, group=group, score="magnitude", scope="global", keep=keep)
    for name, v in group_masks(local, model, group).items():
        assert int(v.sum()) == num_keep(v.numel(), keep)
    lf = glob.layer_keep_fractions()
    assert lf["2"] > keep  # the big layer keeps more than 1/4 ...
    assert lf["0"] < keep  # ... the others less
    if group == "unstructured":
        assert lf["5"] < keep and lf["7"] < keep
    # ... and it takes nearly all the budget (or nearly all of itself)
    assert int(glob["2"].sum()) > 0.8 * min(glob.kept(), glob["2"].numel())
    # total is still ~keep: of the groups (structured: the rate counts filters / kernels / columns), or of the
    # weights (unstructured, or a structured budget counted in weights)
    gm = group_masks(glob, model, group)
    assert abs(sum(int(v.sum()) for v in gm.values()) / sum(v.numel() for v in gm.values()) - keep) < 0.05
    by_weight = compute_masks(model, group=group, score="magnitude", scope="global", keep=keep, count="weights")
    assert abs(by_weight.keep_fraction() - keep) < 0.05


def test_global_structured_normalises_by_group_size():
    # two convs with identical per-weight magnitude but different kernel sizes: with mean |w| scores
    # a global cut treats both alike instead of always preferring the bigger 5x5 kernels.
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 5))
    torch.manual_seed(0)
    with torch.no_grad():
        for conv in (model[0], model[1]):
            conv.weight.copy_(torch.rand_like(conv.weight) * 0.5 + 0.5)
    masks = compute_masks(model, group="kernel", score="magnitude", scope="global", keep=0.5)
    lf = masks.layer_keep_fractions()
    assert 0.15 < lf["0"] < 0.85 and 0.15 < lf["1"] < 0.85


# ---------------------------------------------------------------- magnitude = brute-force top groups


def _brute_group_l1(w: torch.Tensor, group: str) -> list[float]:
    O, C, H, W = w.shape
    if group == "filter":
        return [float(w[o].abs().sum()) for o in range(O)]
    if group == "kernel":
        return [float(w[o, c].abs().sum()) for o in range(O) for c in range(C)]
    if group == "column":
        return [float(w[:, c, h, x].abs().sum()) for c in range(C) for h in range(H) for x in range(W)]
    return [float(v) for v in w.abs().flatten()]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("keep", KEEPS)
def test_magnitude_local_keeps_exactly_the_top_groups(group, keep):
    model = small_model(3)
    masks = compute_masks(model, group=group, score="magnitude", scope="local", keep=keep)
    gm = group_masks(masks, model, group)
    for name, mod in prunable_layers(model, group).items():
        w = mod.weight.detach()
        scores = _brute_group_l1(w if w.dim() == 4 else w[:, :, None, None], group)
        k = num_keep(len(scores), keep)
        top = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
        assert sorted(torch.nonzero(gm[name]).flatten().tolist()) == sorted(top), name


@pytest.mark.parametrize("keep", KEEPS)
def test_magnitude_global_unstructured_is_a_global_threshold(keep):
    model = small_model(4)
    masks = compute_masks(model, group="unstructured", score="magnitude", scope="global", keep=keep)
    layers = prunable_layers(model, "unstructured")
    allw = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
    allm = torch.cat([masks[n].flatten() for n in layers])
    k = math.floor(keep * allw.numel() + 0.5)
    top = set(torch.sort(allw, descending=True, stable=True).indices[:k].tolist())
    kept = set(torch.nonzero(allm).flatten().tolist())
    assert top <= kept
    # anything extra is the single best weight of a layer the threshold would have emptied
    extra = kept - top
    starts = [0]
    for m in layers.values():
        starts.append(starts[-1] + m.weight.numel())
    for i in extra:
        layer = max(j for j in range(len(layers)) if starts[j] <= i)
        lo, hi = starts[layer], starts[layer + 1]
        assert not any(lo <= t < hi for t in top)
        assert i == lo + int(torch.argmax(allw[lo:hi]))


@pytest.mark.parametrize("group", ["kernel", "filter", "column"])
def test_magnitude_global_structured_threshold(group):
    model = small_model(5)
    masks = compute_masks(model, group=group, score="magnitude", scope="global", keep=0.25)
    gm = group_masks(masks, model, group)
    kept, pruned = [], []
    for name, mod in prunable_layers(model, group).items():
        rows = group_view(mod.weight.detach(), group)
        s = rows.abs().mean(dim=1)
        if int(gm[name].sum()) == 1:  # possibly topped up to keep the layer alive
            continue
        kept += s[gm[name]].tolist()
        pruned += s[~gm[name]].tolist()
    assert min(kept) >= max(pruned)


def test_ties_broken_by_index():
    model = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.Flatten(), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    a = compute_masks(model, group="filter", score="magnitude", scope="local", keep=0.5)
    assert a["0"].flatten().tolist() == [True, True, False, False]
    b = compute_masks(model, group="unstructured", score="magnitude", scope="global", keep=0.5)
    assert b.kept() == 10  # of 4 + 16: earlier positions (model order, then index) win
    assert b["0"].flatten().tolist() == [True] * 4
    assert b["2"].flatten().tolist() == [True] * 6 + [False] * 10
    # and repeating gives the same masks
    c = compute_masks(model, group="unstructured", score="magnitude", scope="global", keep=0.5)
    assert all(torch.equal(b[n], c[n]) for n in b)


# ---------------------------------------------------------------- random


@pytest.mark.parametrize("group", GROUPS)
def test_random_local_reproducible(group):
    model = small_model()
    a = compute_masks(model, group=group, score="random", scope="local", keep=0.25, generator=gen(7))
    b = compute_masks(model, group=group, score="random", scope="local", keep=0.25, generator=gen(7))
    c = compute_masks(model, group=group, score="random", scope="local", keep=0.25, generator=gen(8))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_random_ignores_magnitudes():
    model = small_model()
    with torch.no_grad():
        model[2].weight.mul_(100.0)
    m = compute_masks(model, group="unstructured", score="random", scope="local", keep=0.5, generator=gen(0))
    w = model[2].weight.detach().abs()
    # the kept weights are not simply the largest ones
    k = int(m["2"].sum())
    top = set(torch.topk(w.flatten(), k).indices.tolist())
    assert set(torch.nonzero(m["2"].flatten()).flatten().tolist()) != top


# ---------------------------------------------------------------- iterative pruning


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("score", SCORES)
def test_iterative_never_revives(group, scope, score):
    model = small_model(2)
    g = gen(3)
    prev = None
    for keep in KEEPS:
        masks = compute_masks(model, group=group, score=score, scope=scope, keep=keep, previous=prev, generator=g)
        if prev is not None:
            for n in prev:
                assert not bool((masks[n] & ~prev[n]).any()), "a pruned weight came back"
        if scope == "local":  # already-pruned groups count toward the pruned
            for name, v in group_masks(masks, model, group).items():
                assert int(v.sum()) == num_keep(v.numel(), keep)
        elif group != "unstructured":  # the budget counts groups; pruned ones count toward the pruned
            gm = group_masks(masks, model, group)
            groups = sum(v.numel() for v in gm.values())
            assert abs(sum(int(v.sum()) for v in gm.values()) - keep * groups) <= 1 + len(masks)
        else:
            total = masks.numel()
            sizes = max(group_view(m.weight, group).shape[1] for m in prunable_layers(model, group).values())
            assert abs(masks.kept() - keep * total) <= sizes * (1 + len(masks))
        prev = masks
        # "training" in between: pruned weights even become large again before the next round
        with torch.no_grad():
            for mod in prunable_layers(model, group).values():
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 3)


def test_combine_is_logical_and():
    a = MaskSet({"x": torch.tensor([True, True, False, False])})
    b = MaskSet({"x": torch.tensor([True, False, True, False]), "y": torch.tensor([False, True])})
    c = a.combine(b)
    assert c["x"].tolist() == [True, False, False, False]
    assert c["y"].tolist() == [False, True]
    assert (a & b)["x"].tolist() == c["x"].tolist()
    with pytest.raises(ConfigError):
        a.combine({"x": torch.ones(3, dtype=torch.bool)})


# ---------------------------------------------------------------- masks through training


def _batches(n_steps: int, seed: int = 0):
    g = gen(seed)
    for _ in range(n_steps):
        x = torch.rand((8, *INPUT), generator=g)
        # adversarial-like: a signed perturbation of size eps, clipped to [0, 1]
        x = (x + 0.1 * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
        yield x, torch.randint(0, 5, (8,), generator=g)


def _train_steps(model, opt, n, masks=None, apply=True, seed=0):
    for x, y in _batches(n, seed):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if masks is not None and masks.attached:
            for name, mod in prunable_layers(model, "unstructured").items():
                if name in masks:
                    assert bool((mod.weight.grad[~masks[name]] == 0).all()), "hook left a pruned gradient"
        opt.step()
        if masks is not None and apply:
            masks.apply(model)
            for name, mod in prunable_layers(model, "unstructured").items():
                if name in masks:
                    assert bool((mod.weight.detach()[~masks[name]] == 0).all())


@pytest.mark.parametrize("optim", ["sgd", "adam"])
@pytest.mark.parametrize("group", GROUPS)
def test_pruned_weights_stay_exactly_zero_through_training(optim, group):
    model = small_model(1)
    if optim == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    _train_steps(model, opt, 5)  # warm up: momentum / Adam moments are non-zero everywhere
    masks = compute_masks(model, group=group, score="magnitude", scope="global", keep=0.25)
    masks.apply(model)
    masks.attach(model)
    _train_steps(model, opt, 20, masks=masks, seed=1)
    for name, mod in prunable_layers(model, group).items():
        w = mod.weight.detach()
        assert bool((w[~masks[name]] == 0).all())
        assert bool((w[masks[name]] != 0).any())  # the kept weights did train
    report = sparsity_report(model, masks)
    assert report["mask_violations"] == 0
    assert report["pruned_weights"] >= masks.numel() - masks.kept()


def test_without_apply_momentum_revives_pruned_weights():
    """Sanity check that the test above is not vacuous: hooks alone do not stop momentum."""
    model = small_model(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    _train_steps(model, opt, 5)
    masks = compute_masks(model, group="unstructured", score="magnitude", scope="local", keep=0.25)
    masks.apply(model)
    masks.attach(model)
    _train_steps(model, opt, 3, masks=masks, apply=False, seed=1)
    assert any(bool((mod.weight.detach()[~masks[n]] != 0).any()) for n, mod in prunable_layers(model).items())


def test_attach_zeroes_pruned_grads_idempotent_and_detach():
    model = small_model()
    masks = compute_masks(model, group="filter", score="magnitude", scope="local", keep=0.5)
    masks.attach(model)
    masks.attach(model)  # idempotent: still one hook per weight
    assert len(masks._handles) == len(masks)
    x, y = next(_batches(1))
    nn.functional.cross_entropy(model(x), y).backward()
    for n in masks:
        grad = dict(model.named_modules())[n].weight.grad
        assert bool((grad[~masks[n]] == 0).all())
        assert bool((grad[masks[n]] != 0).any())
    masks.detach()
    assert not masks.attached
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    grad = model[0].weight.grad
    assert bool((grad[~masks["0"]] != 0).any())  # hooks are gone


def test_maskset_state_dict_roundtrip_and_checks():
    model = small_model()
    masks = compute_masks(model, group="kernel", score="random", scope="local", keep=0.5, generator=gen(0))
    sd = masks.state_dict()
    assert all(v.dtype == torch.bool for v in sd.values())
    back = MaskSet.from_state_dict(sd)
    assert list(back) == list(masks) and all(torch.equal(back[n], masks[n]) for n in masks)
    assert back.keep_fraction() == pytest.approx(masks.keep_fraction())
    assert MaskSet.from_state_dict({k: v.float() for k, v in sd.items()})["0"].dtype == torch.bool
    assert back.to("cpu") is back
    masks.attach(model)
    clone = copy.deepcopy(masks)  # copies carry masks, not the hooks of a live model
    assert not clone.attached and masks.attached
    assert all(torch.equal(clone[n], masks[n]) for n in masks)
    masks.detach()
    assert MaskSet.ones(model).keep_fraction() == 1.0
    with pytest.raises(ConfigError):
        MaskSet({"nope": torch.ones(3, dtype=torch.bool)}).apply(model)
    with pytest.raises(ConfigError):
        MaskSet({"0": torch.ones(3, dtype=torch.bool)}).apply(model)


def test_apply_writes_exact_zeros():
    model = small_model()
    masks = compute_masks(model, group="unstructured", score="magnitude", scope="local", keep=0.5)
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    masks.apply(model)
    w = model[0].weight.detach()
    assert bool((w[~masks["0"]] == 0).all())
    assert not bool(torch.signbit(w[~masks["0"]]).any())


# ---------------------------------------------------------------- projection


def _brute_projection(w: torch.Tensor, group: str, k: int) -> torch.Tensor:
    n = group_view(w, group).shape[0]
    best, best_d = None, float("inf")
    for size in range(0, k + 1):
        for subset in itertools.combinations(range(n), size):
            keep = torch.zeros(n, dtype=torch.bool)
            keep[list(subset)] = True
            z = w * expand_groups(keep, group, w.shape)
            d = float(((z - w) ** 2).sum())
            if d < best_d - 1e-12:
                best, best_d = z, d
    return best


@pytest.mark.parametrize(
    "shape,group,keep,k",
    [
        ((4, 2, 2, 2), "filter", 0.5, 2),
        ((3, 2, 1, 3), "column", 0.5, 3),  # 6 columns keep 3
        ((2, 2, 1, 2), "unstructured", 3 / 8, 3),  # 8 weights keep 3
        ((2, 3, 2, 2), "kernel", 1 / 3, 2),  # 6 kernels keep 2
        ((5, 3), "filter", 0.4, 2),  # a linear weight: rows
        ((8,), "unstructured", 0.25, 2),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_project_is_the_euclidean_projection(shape, group, keep, k, seed):
    w = torch.randn(shape, generator=gen(seed), dtype=torch.float64)
    z = project(w, group, keep)
    assert num_keep(group_view(w, group).shape[0], keep) == k
    assert torch.allclose(z, _brute_projection(w, group, k))
    m = project_mask(w, group, keep)
    assert torch.equal(z, w * m)
    assert int(group_view(m, group)[:, 0].sum()) == k
    # projecting twice changes nothing (it is a projection)
    assert torch.equal(project(z, group, keep), z)


def test_project_uses_l2_not_l1():
    # filter 0: one big weight (L2 3, L1 3); filter 1: many small ones (L2 2, L1 4)
    w = torch.zeros(2, 1, 2, 2)
    w[0, 0, 0, 0] = 3.0
    w[1] = 1.0
    z = project(w, "filter", 0.5)
    assert torch.equal(z[0], w[0]) and bool((z[1] == 0).all())
    with pytest.raises(ConfigError):
        project(torch.randn(4, 4), "kernel", 0.5)
    with pytest.raises(ConfigError):
        project(w, "filter", 0.0)


# ---------------------------------------------------------------- report


def test_sparsity_report_counts_zeros_present():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.1)  # no accidental zeros
        model[0].weight[1] = 0  # one whole filter (2 kernels, 18 weights)
        model[0].weight[2, 0] = 0  # one more kernel (9 weights)
        model[0].weight[3, 1, 0, 0] = 0  # one lone weight
        model[2].weight[0] = 0  # one neuron (16 weights)
        model[2].weight[1, :3] = 0  # 3 weights
    r = sparsity_report(model)
    conv, lin = r["layers"]["0"], r["layers"]["2"]
    assert (conv["weights"], conv["zeros"], conv["zero_filters"], conv["zero_kernels"]) == (72, 28, 1, 3)
    assert (lin["weights"], lin["zeros"], lin["zero_neurons"]) == (48, 19, 1)
    assert r["prunable"] == 120 and r["pruned_weights"] == 47 and r["nonzero"] == 73
    assert r["weight_sparsity"] == pytest.approx(47 / 120)
    assert r["compression"] == pytest.approx(120 / 73)
    assert (r["pruned_units"], r["units"], r["pruned_filters"], r["pruned_neurons"]) == (2, 7, 1, 1)
    # masks that were not applied do not count as zeros
    masks = compute_masks(model, group="unstructured", score="magnitude", scope="local", keep=0.25)
    r2 = sparsity_report(model, masks)
    assert r2["pruned_weights"] == 47 and r2["mask_violations"] > 0
    masks.apply(model)
    r3 = sparsity_report(model, masks)
    assert r3["mask_violations"] == 0
    assert r3["pruned_weights"] == masks.numel() - masks.kept()


# ---------------------------------------------------------------- method names


def test_the_nine_merkle2022_selections_parse_and_compute():
    names = [f"{s}-{g}-{sc}" for g in ("unstructured", "kernel", "filter")
             for s, sc in (("magnitude", "local"), ("magnitude", "global"), ("random", "local"))]
    for n in names:
        score, group, scope = parse_method(n)
        assert f"{score}-{group}-{scope}" == n
        compute_masks(small_model(), keep=0.5, generator=gen(0), score=score, group=group, scope=scope)


def test_sparsity_holds_no_parallel_method_registry():
    import robustprune.sparsity as sp

    assert not hasattr(sp, "PRUNING_METHODS") and not hasattr(sp, "method_names")


def test_parse_method_rejects():
    assert parse_method("magnitude-column-local") == ("magnitude", "column", "local")
    assert parse_method("Magnitude-Irregular-Global") == ("magnitude", "unstructured", "global")
    for bad in ("random-filter-global", "random-unstructured-global"):
        with pytest.raises(ConfigError, match="local"):
            parse_method(bad)
    for bad in ("magnitude-filter", "snip-filter-local", "magnitude-channel-local", "magnitude-filter-layer"):
        with pytest.raises(ConfigError):
            parse_method(bad)
