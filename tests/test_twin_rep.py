"""Twin-Rep (Li2023): known answers for the reparameterised layers, their gradients and weight decay, the global cut
of ``|W ⊙ U|`` (weights / filters), the fold back to a plain model, and pruned entries staying zero."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import robustprune
from conftest import TinyConvNet, blobs
from robustprune.data import Split
from robustprune.methods import get_method
from robustprune.methods.twin_rep import (
    AuxMaskHook,
    TwinConv2d,
    TwinLinear,
    apply_twin_masks,
    attach_twins,
    effective_weights,
    fold_twins,
    select_masks,
    split_schedule,
    twin_layers,
    twin_param_groups,
)
from robustprune.objectives import build_objective
from robustprune.sparsity import MaskSet, prunable_layers, slim_model
from robustprune.train import TrainConfig, fit, lr_factor


def _net() -> nn.Module:
    torch.manual_seed(0)
    return TinyConvNet()


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 36, 3))


def test_twin_layers_compute_exactly_the_plain_layer_with_weight_w_times_u():
    g = torch.Generator().manual_seed(1)
    for plain, x in ((nn.Conv2d(3, 5, 3, padding=1), torch.randn(2, 3, 7, 7, generator=g)),
                     (nn.Linear(6, 4), torch.randn(5, 6, generator=g))):
        model = nn.Sequential(copy.deepcopy(plain))
        attach_twins(model, init="kaiming", generator=torch.Generator().manual_seed(2))
        twin = model[0]
        assert isinstance(twin, (TwinConv2d, TwinLinear)) and not torch.equal(twin.aux_weight,
                                                                               torch.ones_like(twin.aux_weight))
        ref = copy.deepcopy(plain)
        with torch.no_grad():
            ref.weight.copy_(twin.weight * twin.aux_weight)
        assert torch.equal(twin(x), ref(x))


def test_balanced_and_ones_initialisations_keep_the_function_of_the_given_model():
    x, _ = blobs(16)
    for init in ("balanced", "ones"):
        net = _net()
        before = net(x).detach()
        plain_w = {n: m.weight.detach().clone() for n, m in prunable_layers(net).items()}
        attach_twins(net, init=init)
        assert set(twin_layers(net)) == set(plain_w)
        for n, m in twin_layers(net).items():
            torch.testing.assert_close(m.twin_weight(), plain_w[n], rtol=1e-6, atol=1e-7)
            if init == "balanced":  # equal-magnitude factors, the sign on W
                assert torch.equal(m.weight.abs(), m.aux_weight) and bool((m.aux_weight >= 0).all())
            else:
                assert torch.equal(m.aux_weight, torch.ones_like(m.aux_weight))
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)


def test_gradients_of_the_factors_are_the_effective_gradient_times_the_other_factor():
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(4, 3)
    model = nn.Sequential(lin)
    attach_twins(model, init="kaiming", generator=g)
    x, r = torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g)
    (model(x) * r).sum().backward()
    w, u = lin.weight.detach(), lin.aux_weight.detach()
    w_eff = (w * u).clone().requires_grad_(True)
    (torch.nn.functional.linear(x, w_eff, lin.bias.detach()) * r).sum().backward()
    torch.testing.assert_close(lin.weight.grad, w_eff.grad * u)
    torch.testing.assert_close(lin.aux_weight.grad, w_eff.grad * w)


def test_one_sgd_step_decays_both_factors_with_their_own_weight_decay():
    x, y = blobs(32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    attach_twins(model, init="balanced")
    lin = model[1]
    w0, u0, b0 = lin.weight.detach().clone(), lin.aux_weight.detach().clone(), lin.bias.detach().clone()
    # the effective gradient of the same (full-batch, mean) loss, by hand on a plain layer with weight W0*U0
    w_eff = (w0 * u0).requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(nn.functional.linear(x.flatten(1), w_eff, b), y)
    gw, gb = torch.autograd.grad(loss, [w_eff, b])
    lr, wd_w, wd_u = 0.1, 0.01, 0.05
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=lr, momentum=0.9, weight_decay=wd_w, schedule="constant",
                      select="last", val_size=0, progress=False)
    res = fit(model, build_objective("natural"), Split(x, y), None, cfg,
              param_groups=twin_param_groups(model, wd_w, wd_u))
    assert res.steps == 1
    # SGD's first step: the momentum buffer is the gradient itself (decay included)
    torch.testing.assert_close(lin.weight.detach(), w0 - lr * (gw * u0 + wd_w * w0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lin.aux_weight.detach(), u0 - lr * (gw * w0 + wd_u * u0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lin.bias.detach(), b0 - lr * (gb + wd_w * b0), rtol=1e-5, atol=1e-7)


def test_global_cut_keeps_exactly_round_n_over_rate_of_the_largest_products():
    g = torch.Generator().manual_seed(4)
    weights = {"a": torch.randn(6, 1, 3, 3, generator=g), "b": torch.randn(10, 6, generator=g)}
    n = sum(w.numel() for w in weights.values())  # 114
    for rate in (3.0, 5.0, 7.0):
        masks = select_masks(weights, 1 / rate, "unstructured")
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == round(n / rate) and all(bool(m.any()) for m in masks.values())
        # global: one threshold over both layers
        lo = min(float(weights[k][masks[k]].abs().min()) for k in weights)
        hi = max(float(weights[k][~masks[k]].abs().max()) for k in weights)
        assert lo > hi
    # a layer is never removed entirely: when the top 23 all lie in "b", "a" keeps its largest entry as well
    weights["b"] = weights["b"] * 100
    masks = select_masks(weights, 1 / 5, "unstructured")
    assert int(masks["b"].sum()) == 23 and int(masks["a"].sum()) == 1
    assert bool(masks["a"].flatten()[weights["a"].abs().flatten().argmax()])


def test_the_method_cuts_the_product_not_the_first_factor():
    """init="kaiming": W ⊙ U differs from W; the kept set must be the top of |W ⊙ U|, exactly round(n / rate)."""
    x, y = blobs(64)
    net = _net()
    n = sum(m.weight.numel() for m in prunable_layers(net).values())
    ref = copy.deepcopy(net)
    attach_twins(ref, init="kaiming", generator=torch.Generator().manual_seed(0))  # the method's draw (seed 0)
    eff = effective_weights(ref)
    first = {k: m.weight.detach().clone() for k, m in twin_layers(ref).items()}
    res = robustprune.prune(net, "twin-rep", rate=5, data=(x, y), eps=0.1, epochs=0, init="kaiming")
    expect = select_masks(eff, 0.2, "unstructured")
    assert res.masks.kept() == round(n / 5) and res.achieved_compression == pytest.approx(n / round(n / 5))
    assert all(torch.equal(res.masks[k], expect[k]) for k in expect)
    assert not all(torch.equal(expect[k], select_masks(first, 0.2, "unstructured")[k]) for k in expect)
    for k, m in prunable_layers(net).items():  # folded: the weight is W ⊙ U, masked
        torch.testing.assert_close(m.weight.detach(), eff[k] * expect[k])


def test_filter_cut_ranks_filters_globally_by_l2_norm_of_the_product():
    # one row of B has L2 3 (L1 3), one row of A L2 2 (L1 4): L2 keeps B's, a mean-L1 ranking would keep A's
    a = torch.tensor([[1.0, 1, 1, 1], [0.1, 0, 0, 0], [0.2, 0, 0, 0]]).reshape(3, 1, 2, 2)
    b = torch.tensor([[3.0, 0, 0, 0], [0.3, 0, 0, 0], [0.05, 0, 0, 0]]).reshape(3, 1, 2, 2)
    masks = select_masks({"a": a, "b": b}, 2 / 6, "filter")
    assert masks["a"].flatten(1).all(1).tolist() == [True, False, False]
    assert masks["b"].flatten(1).all(1).tolist() == [True, False, False]
    masks = select_masks({"a": a, "b": b}, 1 / 6, "filter")  # one filter: B's largest; A keeps its best anyway
    assert masks["b"].flatten(1).all(1).tolist() == [True, False, False]
    assert masks["a"].flatten(1).all(1).tolist() == [True, False, False]
    masks = select_masks({"a": a, "b": b}, 4 / 6, "filter")  # global: B's 0.3 beats A's 0.2 and 0.1
    assert masks["a"].flatten(1).all(1).tolist() == [True, False, True]
    assert masks["b"].flatten(1).all(1).tolist() == [True, True, False]
    # every row is all-kept or all-pruned
    assert all(bool((m.flatten(1).all(1) | ~m.flatten(1).any(1)).all()) for m in masks.values())


def test_filter_variant_removes_whole_filters_and_the_result_slims():
    x, y = blobs(96)
    net = _bn_net()
    res = robustprune.prune(net, "twin-rep-filter", rate=2, data=(x, y), eps=0.1, epochs=1, pgd_steps=1)
    assert res.group == "filter" and set(res.masks.names()) == {"0", "3"}
    filters = {k: m.flatten(1).any(1) for k, m in res.masks.masks.items()}
    assert all(bool((m.flatten(1).all(1) == filters[k]).all()) for k, m in res.masks.masks.items())
    # 8 filters of 9 weights and 8 of 72: the rate counts filters (the reference's round(ratio * n_filters)), so
    # 8 of the 16 are kept, whatever their sizes (a layer left empty would get its best filter back)
    n_kept = sum(int(f.sum()) for f in filters.values())
    assert n_kept == 8 and all(bool(f.any()) for f in filters.values())
    assert res.settings["budget"] == "groups"
    assert not any(isinstance(m, (TwinConv2d, TwinLinear)) for m in net.modules())
    net.eval()
    out = slim_model(net, masks=res.masks, example=x[:16])
    assert sum(k for k, _t in out.units.values()) == n_kept < 16
    torch.testing.assert_close(out.model.eval()(x[:16]), net(x[:16]), rtol=1e-5, atol=1e-5)


def test_filter_budget_counted_in_weights_keeps_half_of_the_conv_weights_instead():
    x, y = blobs(96)
    net = _bn_net()
    res = robustprune.prune(net, "twin-rep-filter", rate=2, data=(x, y), eps=0.1, epochs=1, pgd_steps=1,
                            budget="weights")
    # 8 filters of 9 weights and 8 of 72: filters are taken until the kept weights are closest to 1/2 of 648
    kept_w = sum(int(res.masks[k].sum()) for k in res.masks.names())
    assert abs(kept_w - 324) <= 36


def test_fold_leaves_a_plain_model_with_the_same_logits_and_parameters():
    x, _ = blobs(16)
    net = _net()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    attach_twins(net, init="kaiming", generator=torch.Generator().manual_seed(5))
    assert sum(p.numel() for p in net.parameters()) > sum(math.prod(s) for s in shapes)
    with torch.no_grad():
        before = net(x)
    fold_twins(net)
    assert [n for n, _ in net.named_parameters()] == names and [p.shape for p in net.parameters()] == shapes
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in prunable_layers(net).values())
    assert not any(hasattr(m, "aux_weight") for m in net.modules())
    assert torch.equal(net(x).detach(), before)


def test_pruned_entries_stay_zero_in_both_factors_even_without_re_masking():
    """Both factors masked: the gradient (g ⊙ U, g ⊙ W), the weight decay and a fresh momentum of a pruned entry are
    exactly zero, so SGD with momentum and decay leaves it at zero with no mask enforcement at all; the method's own
    training (masks + AuxMaskHook) keeps them zero too."""
    x, y = blobs(128)
    net = _net()
    attach_twins(net, init="ones")  # U = 1: masking W alone would leave dL/dW = g != 0 at pruned entries
    eff = effective_weights(net)
    masks = MaskSet(select_masks(eff, 0.25, "unstructured"))
    apply_twin_masks(net, masks)
    before = {k: m.twin_weight().detach().clone() for k, m in twin_layers(net).items()}
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-3, schedule="constant",
                      select="last", val_size=0, progress=False)
    obj = build_objective("pgd-at", eps=0.1, steps=1)
    fit(net, obj, Split(x, y), None, cfg, param_groups=twin_param_groups(net, 5e-3, 5e-3))  # no masks, no hooks
    for k, m in twin_layers(net).items():
        pruned = ~masks[k]
        assert bool((m.weight[pruned] == 0).all()) and bool((m.aux_weight[pruned] == 0).all())
        assert not torch.equal(m.twin_weight()[~pruned], before[k][~pruned])  # the kept ones trained
    # and through the loop with the method's enforcement
    fit(net, obj, Split(x, y), None, cfg, masks=masks, hooks=[AuxMaskHook(masks)],
        param_groups=twin_param_groups(net, 5e-3, 5e-3))
    for k, m in twin_layers(net).items():
        assert int(torch.count_nonzero(m.twin_weight().detach()[~masks[k]])) == 0


def test_method_result_is_masked_plain_and_reports_convergence():
    x, y = blobs(160)
    net = _net()
    n = sum(m.weight.numel() for m in prunable_layers(net).values())
    res = robustprune.prune(net, "twin-rep", rate=5, data=(x, y), eps=0.1, epochs=2, pgd_steps=1, prune_at=0.5)
    assert res.rate == 5 and res.rate_kind == "set" and res.group == "unstructured"
    assert res.masks.kept() == round(n / 5)
    for k, m in prunable_layers(net).items():
        assert type(m) in (nn.Conv2d, nn.Linear)
        assert int(torch.count_nonzero(m.weight[~res.masks[k]])) == 0
    assert len(res.history["warmup"]) == 1 and len(res.history["train"]) == 1
    assert "twin_churn" in res.history["warmup"][0]
    c = res.convergence
    assert len(c["churn_per_epoch"]) == 1 and 0 <= c["churn_per_epoch"][0] <= 1 and 0 < c["pruned_l1_mass"] < 1
    assert res.converged == (c["churn_per_epoch"][-1] <= c["tolerance"])
    assert res.steps > 0 and res.epochs == 2


def test_step_schedule_split_at_the_cut_matches_one_uncut_reference_run():
    """Reference train.py adjust_learning_rate on 100 epochs with the cut before epoch 10: per-epoch lr
    0.1 (epochs 1-69), 0.01 (70-84), 0.001 (85-100); the two phases here give the same lr at every epoch."""
    s = get_method("twin-rep").settings()
    base = TrainConfig(epochs=9, lr=0.1, schedule="step", progress=False)
    warm, post = split_schedule(base, base.model_copy(update={"epochs": 91}), s.prune_at, s.milestones, s.gamma)
    got = [warm.lr * lr_factor(warm, e, 9) for e in range(9)] + [post.lr * lr_factor(post, e, 91) for e in range(91)]
    ref = [0.1 * (0.1 if e >= 70 else 1) * (0.1 if e >= 85 else 1) for e in range(1, 101)]
    assert got == pytest.approx(ref)
    # a cut after the first milestone starts the second phase at the reduced lr
    warm, post = split_schedule(base.model_copy(update={"epochs": 75}), base.model_copy(update={"epochs": 25}), 0.75,
                                (0.69, 0.84), 0.1)
    got = [warm.lr * lr_factor(warm, e, 75) for e in range(75)] + [post.lr * lr_factor(post, e, 25) for e in range(25)]
    assert got == pytest.approx(ref)


def test_weight_decay_defaults_of_both_factors_are_the_references():
    s = get_method("twin-rep").settings()
    assert (s.train.weight_decay, s.aux_decay, s.train.lr, s.train.momentum) == (2e-4, 2e-4, 0.1, 0.9)
    assert get_method("twin-rep").needs_eps and get_method("twin-rep-filter").group == "filter"


def test_an_already_pruned_model_stays_pruned_and_the_scope_is_respected():
    from robustprune.methods import PruneTask
    from robustprune.sparsity import compute_masks

    x, y = blobs(96)
    net = _net()
    n = sum(m.weight.numel() for m in prunable_layers(net).values())
    prev = compute_masks(net, group="unstructured", score="random", scope="local", keep=0.5,
                         generator=torch.Generator().manual_seed(0))
    prev.apply(net)
    task = PruneTask(train=Split(x, y), eps=0.1, epochs=1, masks=prev, start_rate=2.0)
    res = get_method("twin-rep").prune(net, task, 4, {"pgd_steps": 1})
    assert res.masks.kept() == round(n / 4)
    assert all(not bool((res.masks[k] & ~prev[k]).any()) for k in prev)  # nothing pruned before comes back

    net = _net()
    fc = [net[6].weight.detach().clone(), net[8].weight.detach().clone()]
    res = robustprune.prune(net, "twin-rep", rate=4, data=(x, y), eps=0.1, epochs=0, layers="conv")
    assert set(res.masks.names()) == {"1", "3"}
    assert torch.equal(net[6].weight, fc[0]) and torch.equal(net[8].weight, fc[1])  # not reparameterised, dense
    kept = sum(int(torch.count_nonzero(net[i].weight)) for i in (1, 3))
    assert kept == round((72 + 576) / 4)
