"""HYDRA: top-k masks of importance scores, computed once per optimiser step; scaled score initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import TinyConvNet, blobs
from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods import METHODS, PruneTask, hydra
from robustprune.methods.hydra import attach_scores, finalize, scored_layers, topk_calls, topk_mask
from robustprune.objectives import PGDAT
from robustprune.sparsity import prunable_layers
from robustprune.train import TrainConfig, fit


def test_scaled_score_init_is_proportional_to_the_weights():
    torch.manual_seed(0)
    model = TinyConvNet()
    weights = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    attach_scores(model, keep=0.5)
    for name, mod in scored_layers(model).items():
        w = weights[name]
        fan_in = w[0].numel()
        ratio = mod.popup_scores.detach() / w
        expected = math.sqrt(6.0 / fan_in) / float(w.abs().max())
        assert torch.allclose(ratio, torch.full_like(ratio, expected), rtol=1e-5)
        # so the first mask is the magnitude mask
        assert torch.equal(mod.hydra_mask(), topk_mask(w, 0.5))


def test_mask_is_top_k_of_scores_per_layer():
    torch.manual_seed(0)
    model = TinyConvNet()
    attach_scores(model, keep=0.3)
    x = torch.rand(4, 1, 6, 6)
    for mod in scored_layers(model).values():
        with torch.no_grad():
            mod.popup_scores.copy_(torch.randn_like(mod.popup_scores))
        m = mod.hydra_mask()
        n = m.numel()
        assert int(m.sum()) == round(0.3 * n)
        s = mod.popup_scores.detach().abs().flatten()
        assert float(s[m.flatten()].min()) >= float(s[~m.flatten()].max())  # exactly the k largest |s|
        # the layer computes with weight * mask
        eff = mod.hydra_weight()
        assert torch.equal(eff.detach(), mod.weight.detach() * m)
    model(x)


def test_mask_is_computed_once_per_optimiser_step():
    x, y = blobs(160)
    torch.manual_seed(0)
    model = TinyConvNet()
    attach_scores(model, keep=0.4)
    for p in model.parameters():
        p.requires_grad_(False)
    for mod in scored_layers(model).values():
        mod.popup_scores.requires_grad_(True)
    forwards = {"n": 0}
    model[1].register_forward_hook(lambda *a: forwards.__setitem__("n", forwards["n"] + 1))
    before = {n: m.popup_scores.detach().clone() for n, m in scored_layers(model).items()}
    cfg = TrainConfig(epochs=1, batch_size=40, optimizer="sgd", lr=0.1, weight_decay=0, progress=False,
                      select="last", max_steps_per_epoch=3)
    res = fit(model, PGDAT(eps=0.1, steps=3), Split(x=x, y=y), None, cfg)
    assert res.steps == 3
    # 3 attack steps + 1 training pass per optimiser step, and fit's one check of the logits before training
    assert forwards["n"] == 3 * (3 + 1) + 1
    assert all(c == 3 for c in topk_calls(model).values()), topk_calls(model)
    # scores moved (straight-through gradient), weights did not
    assert any(not torch.equal(before[n], m.popup_scores) for n, m in scored_layers(model).items())
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(x[:8])
    assert all(c == 4 for c in topk_calls(model).values())  # evaluation after the last step: one recompute


def test_straight_through_gradient_reaches_scores():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    model = nn.Sequential(lin)
    attach_scores(model, keep=0.5)
    x = torch.randn(5, 4)
    out = model(x).sum()
    (g,) = torch.autograd.grad(out, [lin.popup_scores])
    # d out / d w_eff = sum_n x_n (for every output row); d/ds = that * w * sign(s)
    g_eff = x.sum(0).expand(3, 4)
    assert torch.allclose(g, g_eff * lin.weight.detach() * torch.sign(lin.popup_scores.detach()), atol=1e-6)


def test_hydra_recipe_end_to_end():
    x, y = blobs(200)
    train = Split(x=x, y=y)
    torch.manual_seed(0)
    model = TinyConvNet()
    cfg = TrainConfig(epochs=1, batch_size=50, optimizer="adam", lr=1e-2, weight_decay=0, progress=False,
                      select="last")
    res = hydra(model, train=train, val=None, prune_cfg=cfg, finetune_cfg=cfg, eps=0.1, steps=2, keep=0.25)
    assert not scored_layers(model) and not any("popup" in n for n, _ in model.named_parameters())
    for name, mod in prunable_layers(model).items():
        m = res.masks[name]
        assert int(m.sum()) == round(0.25 * m.numel())
        assert torch.all(mod.weight[~m] == 0)
    # one top-k per optimiser step (plus the initial mask read by the churn hook)
    assert all(res.score_steps <= c <= res.score_steps + 1 for c in res.topk_calls.values()), res.topk_calls
    with pytest.raises(ConfigError):
        hydra(TinyConvNet(), train=train, val=None, prune_cfg=cfg, finetune_cfg=cfg, eps=0.1)
    # finalize twice is harmless on a plain model
    assert len(finalize(model)) == 0


def test_hydra_method_defaults_follow_the_reference_code_and_record_churn():
    m = METHODS.get("hydra")
    s = m.settings()
    assert (s.loss, s.beta) == ("trades", 6.0)
    assert (s.prune.optimizer, s.prune.lr, s.prune.momentum, s.prune.weight_decay, s.prune.schedule) == (
        "sgd", 0.1, 0.9, 1e-4, "cosine")
    x, y = blobs(200)
    torch.manual_seed(0)
    model = TinyConvNet()
    res = m.prune(model, PruneTask(train=Split(x=x, y=y), eps=0.1, epochs=2), 4, {"pgd_steps": 1})
    churn = res.convergence["churn_per_epoch"]
    assert len(churn) == 2 and all(0 <= c <= 1 for c in churn)
    assert res.converged == (churn[-1] <= s.converge_tol)
    assert res.achieved_compression == pytest.approx(4.0, rel=0.01)
