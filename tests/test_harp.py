"""HARP (Zhao2023): per-layer keep rates k = k_min + (1 - k_min) sigmoid(r), the hinge penalty on the soft density with
its step-wise gamma, straight-through gradients to scores and rates, and the export at exactly the target budget."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import robustprune
from conftest import blobs
from robustprune.errors import ConfigError
from robustprune.methods import METHODS
from robustprune.methods.harp import (
    GammaSchedule,
    HarpHook,
    allocate_counts,
    attach_rates,
    export_masks,
    hinge_penalty,
    keep_count,
    keep_fraction,
    rate_for_keep,
    rated_layers,
    soft_density,
)
from robustprune.methods.hydra import topk_mask
from robustprune.sparsity import prunable_layers
from test_method_interface import MyNet


def _set_keep(layer: nn.Module, keep: float) -> None:
    with torch.no_grad():
        layer.k_score.fill_(rate_for_keep(keep, layer.harp_k_min))


def test_keep_fraction_formula_and_the_layers_count_on_hand_set_rates():
    # k = k_min + (1 - k_min) sigmoid(r); k_min = 0.1 * k_target
    assert float(keep_fraction(0.0, 0.01)) == pytest.approx(0.505)
    assert float(keep_fraction(math.log(3.0), 0.1)) == pytest.approx(0.1 + 0.9 * 0.75)
    assert float(keep_fraction(-50.0, 0.02)) == pytest.approx(0.02)
    assert float(keep_fraction(50.0, 0.02)) == pytest.approx(1.0)
    assert float(keep_fraction(rate_for_keep(0.3, 0.01), 0.01)) == pytest.approx(0.3)
    # ceil(k n) weights kept (the reference's n - int((1 - k) n)), at least one
    assert keep_count(0.505, 100) == 51 and keep_count(0.25, 54) == 14 and keep_count(0.5, 10) == 5
    assert keep_count(1e-6, 10) == 1

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    attach_rates(model, keep=0.1)  # k_min = 0.01
    lin = model[0]
    assert lin.harp_k_min == pytest.approx(0.01)
    with torch.no_grad():
        lin.k_score.fill_(0.0)
        lin.popup_scores.copy_(torch.randn(10, 10))
    m = lin.hydra_mask()
    assert int(m.sum()) == 51  # k = 0.505 -> ceil(50.5)
    s = lin.popup_scores.detach().abs().flatten()
    assert float(s[m.flatten()].min()) >= float(s[~m.flatten()].max())  # the 51 largest |s|
    assert torch.equal(lin.hydra_weight().detach(), lin.weight.detach() * m)
    with torch.no_grad():
        lin.k_score.fill_(math.log(3.0))  # k = 0.01 + 0.99 * 0.75 = 0.7525 -> 76
    assert int(lin.hydra_mask().sum()) == 76


def test_hinge_penalty_and_soft_density_on_a_hand_made_model():
    assert float(hinge_penalty(0.3, 0.2)) == pytest.approx(0.5)
    assert float(hinge_penalty(0.1, 0.2)) == 0.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # 12 and 6 weights
    attach_rates(model, keep=0.25)
    _set_keep(model[0], 0.5)
    _set_keep(model[2], 0.2)
    # rho = (12 * 0.5 + 6 * 0.2) / 18 = 0.4; hinge = 0.4 / 0.25 - 1 = 0.6
    assert float(soft_density(model).detach()) == pytest.approx(0.4, abs=1e-6)
    hook = HarpHook(model, 0.25, gamma0=0.5)
    assert float(hook.extra_loss(model).detach()) == pytest.approx(0.5 * 0.6, abs=1e-6)


def test_gamma_grows_by_gamma0_per_epoch_until_the_target_is_met_then_is_frozen():
    sched = GammaSchedule(0.5)
    used = [sched.end_epoch(reached) for reached in (False, False, True, False, True)]
    assert used == [0.5, 1.0, 1.5, 1.5, 1.5] and sched.gamma == 1.5 and sched.frozen_at == 3

    # the same through the pruning hook on a hand-made model: density above the target for two epochs, then at it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    attach_rates(model, keep=0.25)
    hook = HarpHook(model, 0.25, gamma0=0.1)
    seen = []
    for epoch, keep in enumerate((0.5, 0.4, 0.25, 0.2, 0.6)):
        for layer in rated_layers(model).values():
            _set_keep(layer, keep)
        seen.append(hook.schedule.gamma)
        metrics: dict = {}
        hook.on_epoch_end(model, epoch, metrics)
        assert metrics["harp_gamma"] == pytest.approx(seen[-1])
        assert metrics["harp_reached"] == float(keep <= 0.25)
    # 0.1, 0.2 while above the target, 0.3 in the epoch that reaches it, then frozen (also once it rises again)
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert hook.reached == [False, False, True, True, False]
    assert float(hook.extra_loss(model).detach()) == pytest.approx(0.3 * (0.6 / 0.25 - 1), abs=1e-5)


def test_gradients_reach_the_scores_and_the_rates_straight_through():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    model = nn.Sequential(lin)
    attach_rates(model, keep=0.5)  # k_min = 0.05
    x = torch.randn(5, 4)
    w = lin.weight.detach()
    g_eff = x.sum(0).expand(3, 4)  # d sum(out) / d w_eff
    out = model(x).sum()
    gs, gr = torch.autograd.grad(out, [lin.popup_scores, lin.k_score])
    # scores: dL/dm * sign(s) (HYDRA); rate: sum of dL/dm (relaxed count) * dk/dr
    g_m = g_eff * w
    assert torch.allclose(gs, g_m * torch.sign(lin.popup_scores.detach()), atol=1e-6)
    sig = torch.sigmoid(lin.k_score.detach())
    dk_dr = (1 - 0.05) * sig * (1 - sig)
    assert float(gr) == pytest.approx(float(g_m.sum() * dk_dr), rel=1e-5)
    # the penalty reaches the rate too: d/dr of gamma * (rho / k_t - 1) = gamma / k_t * n_l / N * dk/dr
    _set_keep(lin, 0.9)
    hook = HarpHook(model, 0.5, gamma0=2.0)
    (gp,) = torch.autograd.grad(hook.extra_loss(model), [lin.k_score])
    sig = torch.sigmoid(lin.k_score.detach())
    assert float(gp) == pytest.approx(2.0 / 0.5 * float((1 - 0.05) * sig * (1 - sig)), rel=1e-5)

    # one optimiser step on an adversarial batch moves every rate
    x, y = blobs(32)
    torch.manual_seed(0)
    net = MyNet()
    attach_rates(net, keep=0.25)
    rates = {n: m.k_score for n, m in rated_layers(net).items()}
    before = {n: float(r.detach()) for n, r in rates.items()}
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert all(r.grad is not None and float(r.grad) != 0 for r in rates.values())
    torch.optim.SGD(list(rates.values()), lr=0.1).step()
    assert all(float(rates[n].detach()) != before[n] for n in rates)


def test_budget_allocation_follows_the_learned_keep_and_sums_exactly():
    # wanted 5 + 10 + 10 = 25 weights, budget 30: scaled by 1.2
    assert allocate_counts({"a": 0.5, "b": 0.1, "c": 0.01}, {"a": 10, "b": 100, "c": 1000}, 30) == {
        "a": 6, "b": 12, "c": 12}
    # at least one weight per layer, at most all of them; remainders by largest fraction
    c = allocate_counts({"a": 1e-4, "b": 0.9, "c": 0.9}, {"a": 10, "b": 10, "c": 10}, 20)
    assert c["a"] == 1 and c["b"] + c["c"] == 19 and max(c.values()) <= 10
    c = allocate_counts({"a": 0.3, "b": 0.3, "c": 0.3}, {"a": 7, "b": 7, "c": 7}, 7)
    assert sum(c.values()) == 7 and sorted(c.values()) == [2, 2, 3]
    assert allocate_counts({"a": 0.1, "b": 0.5}, {"a": 5, "b": 5}, 10) == {"a": 5, "b": 5}
    with pytest.raises(ConfigError):
        allocate_counts({"a": 0.1, "b": 0.1}, {"a": 5, "b": 5}, 1)


def test_export_keeps_each_layers_largest_scores_at_its_allocated_count():
    torch.manual_seed(0)
    net = MyNet()
    attach_rates(net, keep=0.1)
    for layer, keep in zip(rated_layers(net).values(), (0.8, 0.3, 0.05, 0.6)):
        _set_keep(layer, keep)
    total = sum(m.weight.numel() for m in rated_layers(net).values())
    masks, counts, learned = export_masks(net, 514)
    assert sum(counts.values()) == 514 == masks.kept()
    assert counts == allocate_counts(learned, {n: m.weight.numel() for n, m in rated_layers(net).items()}, 514)
    for name, layer in rated_layers(net).items():
        assert torch.equal(masks[name], topk_mask(layer.popup_scores, counts[name] / layer.weight.numel()))
    assert total == 5142


def test_harp_prunes_to_exactly_the_budget_with_learned_non_uniform_layer_rates():
    x, y = blobs(240)
    torch.manual_seed(0)
    net = MyNet()
    res = robustprune.prune(net, "harp", rate=100, data=(x, y), eps=0.1, epochs=2, pgd_steps=1, gamma0=1.0,
                            rate_lr_factor=10.0, finetune_factor=1.0)
    layers = prunable_layers(net)
    total = sum(m.weight.numel() for m in layers.values())
    assert sum(int(torch.count_nonzero(m.weight)) for m in layers.values()) == round(total / 100) == 51
    assert res.rate == 100 and res.rate_kind == "set" and res.group == "unstructured"
    # a plain model: no scores, no rates, the original layer classes
    assert not any("popup" in n or "k_score" in n for n, _ in net.named_parameters())
    assert {type(m) for m in layers.values()} == {nn.Conv2d, nn.Linear}
    # the learned keep fractions differ between layers and the exported mask follows them (not one global k)
    learned, exported = res.extras["layer_keep_learned"], res.extras["layer_keep"]
    assert max(learned.values()) > 3 * min(learned.values())
    assert len(set(exported.values())) > 1
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    assert res.extras["layer_counts"] == allocate_counts(learned, sizes, 51)
    lo, hi = min(learned, key=learned.get), max(learned, key=learned.get)
    assert exported[lo] < exported[hi]
    assert res.convergence["layer_keep"] == exported and res.extras["budget"] == 51
    # the pruning phase recorded the penalty schedule and the density
    hist = res.history["prune"]
    assert [h["harp_gamma"] for h in hist] == pytest.approx(res.convergence["gamma_per_epoch"])
    churn = res.convergence["churn_per_epoch"]
    assert len(churn) == 2 and res.convergence["last_churn"] == churn[-1] and res.convergence["tolerance"] == 0.02
    assert res.converged is (res.convergence["target_reached"] and churn[-1] <= 0.02)
    # this run converges: the budget is met exactly (51 weights) and the kept set did not change in the last epoch
    assert res.convergence["target_reached"] is True and churn[-1] == 0.0 and res.converged is True


def test_pruned_weights_stay_zero_and_kept_ones_are_fine_tuned():
    from robustprune.data import Split
    from robustprune.methods import harp
    from robustprune.train import TrainConfig

    x, y = blobs(200)
    torch.manual_seed(0)
    net = MyNet()
    w0 = {n: m.weight.detach().clone() for n, m in prunable_layers(net).items()}
    prune_cfg = TrainConfig(epochs=1, batch_size=50, optimizer="sgd", lr=0.1, progress=False, select="last")
    ft_cfg = TrainConfig(epochs=2, batch_size=50, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3,
                         progress=False, select="last")
    res = harp(net, train=Split(x=x, y=y), val=None, prune_cfg=prune_cfg, finetune_cfg=ft_cfg, eps=0.1, steps=1,
               keep=0.2)
    assert not rated_layers(net)
    assert res.masks.kept() == round(0.2 * 5142) and res.finetune is not None and res.finetune.steps == 8
    moved = False
    for name, mod in prunable_layers(net).items():
        m = res.masks[name]
        assert torch.all(mod.weight[~m] == 0)
        moved |= not torch.equal(mod.weight[m], w0[name][m])
    assert moved
    # the weights were frozen while the mask was learned: the kept ones changed only in fine-tuning
    with pytest.raises(ConfigError, match="exactly one of keep"):
        harp(MyNet(), train=Split(x=x, y=y), val=None, prune_cfg=prune_cfg, finetune_cfg=ft_cfg, eps=0.1)


def test_harp_settings_follow_the_reference_code():
    m = METHODS.get("harp")
    s = m.settings()
    assert (s.loss, s.beta, s.pgd_steps, s.score_init) == ("pgd-at", 6.0, 10, "scaled")
    assert (s.k_min_factor, s.gamma0, s.rate_init, s.rate_lr_factor, s.finetune_factor) == (0.1, 0.01, 0.1, 1.0, 5.0)
    assert (s.prune.optimizer, s.prune.lr, s.prune.momentum, s.prune.weight_decay, s.prune.schedule) == (
        "sgd", 0.1, 0.9, 5e-4, "cosine")
    assert (s.finetune.lr, s.finetune.weight_decay) == (0.01, 5e-4)
    assert m.paper.key == "Zhao2023" and m.rate_kind == "set" and m.group == "unstructured"
    assert all("Zhao2023" in r["source"] or "robustprune" in r["source"] for r in m.Settings.describe()
               if r["name"] != "layers")
    with pytest.raises(ConfigError):
        m.settings({"k_min_factor": 1.0})


def test_prune_phase_trains_scores_rates_and_batchnorm_only():
    from robustprune.data import Split
    from robustprune.methods import harp
    from robustprune.train import TrainConfig

    x, y = blobs(160)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    net[0].bias.requires_grad_(False)  # flags are given back as they were
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=40, optimizer="sgd", lr=0.1, progress=False, select="last")
    res = harp(net, train=Split(x=x, y=y), val=None, prune_cfg=cfg, finetune_cfg=cfg.model_copy(update={"epochs": 0}),
               eps=0.1, steps=1, keep=0.3, gamma0=0.5)
    for name in ("0", "4"):
        m = res.masks[name]
        w = dict(net.named_modules())[name].weight.detach()
        assert torch.equal(w[m], before[f"{name}.weight"][m]) and torch.all(w[~m] == 0)
    assert torch.equal(net[4].bias, before["4.bias"]) and torch.equal(net[0].bias, before["0.bias"])
    assert not torch.equal(net[1].weight, before["1.weight"])  # BatchNorm's affine terms were trained
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True, True, True]
    assert res.masks.kept() == round(0.3 * (36 + 432)) and len(res.hook.gamma) == 2


def test_learned_rates_alone_keep_the_scores_at_their_initialisation():
    """The ablation ``train_scores=False``: the scores stay the scaled-magnitude init (so each layer keeps its
    largest weights), only the per-layer rates learn; the allocation still differs between layers."""
    from robustprune.data import Split
    from robustprune.methods import harp
    from robustprune.train import TrainConfig

    x, y = blobs(160)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    w0 = {n: m.weight.detach().clone() for n, m in (("0", net[0]), ("3", net[3]))}
    cfg = TrainConfig(epochs=2, batch_size=40, optimizer="sgd", lr=0.1, progress=False, select="last")
    res = harp(net, train=Split(x=x, y=y), val=None, prune_cfg=cfg, finetune_cfg=cfg.model_copy(update={"epochs": 0}),
               eps=0.1, steps=1, keep=0.3, gamma0=1.0, train_scores=False, rate_lr_factor=10.0)
    assert res.masks.kept() == round(0.3 * (36 + 432))
    for name, w in w0.items():
        m = res.masks[name]
        k = int(m.sum())
        top = torch.topk(w.abs().flatten(), k).indices
        assert bool(m.flatten()[top].all())  # magnitude order within the layer: the scores never moved
    assert res.layer_keep_learned["0"] != pytest.approx(0.3) or res.layer_keep_learned["3"] != pytest.approx(0.3)
    settings = robustprune.methods.get_method("harp").settings({"train_scores": False})
    assert settings.train_scores is False
