"""Beta-Bernoulli / VIB gates, the ANP / ANP-VS / AT-VS / PAT objectives of Madaan2020."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TinyConvNet, blobs
from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.methods import (
    METHODS,
    ANPObjective,
    BetaBernoulliGate,
    GateSet,
    VIBGate,
    bayesian_prune,
    gate_param_groups,
    insert_gates,
    remove_gates,
)
from robustprune.methods.bayesian import kumaraswamy_beta_kl, kumaraswamy_mean
from robustprune.metrics import latent_vulnerability
from robustprune.models import create_model
from robustprune.objectives import ATVS, PGDAT, build_objective
from robustprune.train import Hook, TrainConfig
from robustprune.utils import make_generator

ALPHA = 1e-4


def _softplus_inv(v: float) -> float:
    return math.log(math.expm1(v))


@pytest.mark.parametrize("a,b", [(0.3133, 1.0), (2.0, 3.0), (0.7, 0.5), (5.0, 0.8)])
def test_kl_closed_form_matches_monte_carlo(a, b):
    """KL[Kumaraswamy(a, b) || Beta(alpha/K, 1)] in closed form vs E_q[log q - log p] with Kumaraswamy samples."""
    g = torch.Generator().manual_seed(0)
    n = 400_000
    u = torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    log_1m_pia = torch.log(u) / b  # pi^a = 1 - u^(1/b)  =>  1 - pi^a = u^(1/b)
    log_pi = torch.log1p(-torch.exp(log_1m_pia)) / a  # inverse CDF sample of Kumaraswamy(a, b), in log space
    log_q = math.log(a) + math.log(b) + (a - 1) * log_pi + (b - 1) * log_1m_pia
    log_p = math.log(ALPHA) + (ALPHA - 1) * log_pi  # Beta(alpha, 1) density: alpha pi^(alpha - 1)
    d = log_q - log_p
    mc, se = float(d.mean()), float(d.std() / math.sqrt(n))
    closed = float(kumaraswamy_beta_kl(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                       ALPHA))
    assert abs(closed - mc) < 4 * se + 1e-3, (closed, mc, se)
    # the gate computes the same thing from its unconstrained parameters
    gate = BetaBernoulliGate(1, a_uc_init=_softplus_inv(a), b_uc_init=_softplus_inv(b)).double()
    assert float(gate.kl().detach()) == pytest.approx(closed, rel=1e-6)


def test_gate_samples_follow_the_kumaraswamy_posterior():
    torch.manual_seed(0)
    gate = BetaBernoulliGate(3, a_uc_init=0.5, b_uc_init=1.0)
    pis = torch.stack([gate.sample_pi() for _ in range(6000)])
    assert torch.allclose(pis.mean(0), gate.expected_pi(), atol=0.015)
    a, b = gate.ab()
    assert torch.allclose(gate.expected_pi(), kumaraswamy_mean(a, b))
    z = gate.sample_scale(50)  # relaxed Bernoulli: in (0, 1), per example
    assert z.shape == (50, 3) and bool(((z >= 0) & (z <= 1)).all()) and z.std() > 0


def _gated_lenet(prune: dict[str, list[int]] | None = None):
    torch.manual_seed(0)
    model = create_model("lenet5-caffe", width=0.25)
    gates = insert_gates(model)
    for info, g in gates.items():
        if prune and info.layer in prune and info.kind == "output":
            with torch.no_grad():
                g.a_uc[prune[info.layer]] = -10.0  # E[pi] ~ 5e-5 < 1e-3
    return model, gates


def test_test_time_masks_are_deterministic_and_threshold_prunes():
    model, gates = _gated_lenet({"features.0": [0, 2], "classifier.0": [1, 5, 7]})
    x = torch.rand(6, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))  # sampled masks in training
    for info, g in gates.items():
        e = g.expected_pi()
        s = g.test_scale()
        assert torch.equal(s == 0, e < 1e-3)
        assert torch.equal(s[e >= 1e-3], e[e >= 1e-3])
    units = dict((lab, (k, t)) for lab, k, t in gates.units())
    assert units["features.0"] == (3, 5) and units["classifier.0"] == (122, 125)
    assert units["classifier.0:in"] == (192, 192)  # LeNet's flattened features carry their own gates
    assert gates.units_string(dense=True) == "5-12-192-125"
    # pruned units are exactly zero at the gated site in eval mode
    seen = {}
    h = model.features[0].register_forward_hook(lambda m, i, o: seen.__setitem__("z", o))  # runs after the gate
    model.eval()
    model(x)
    h.remove()
    assert torch.all(seen["z"][:, [0, 2]] == 0) and torch.all(seen["z"][:, 1].abs().sum() > 0)


def test_vulnerability_of_a_pruned_unit_is_exactly_zero():
    model, gates = _gated_lenet({"features.0": [1, 3], "features.3": [0, 4, 9], "classifier.0": [2, 3]})
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 28, 28, generator=g)
    x_adv = (x + 0.1 * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    v = latent_vulnerability(model, x, x_adv)
    for layer, units in {"features.0": [1, 3], "features.3": [0, 4, 9], "classifier.0": [2, 3]}.items():
        feat = v.features[layer]
        assert torch.all(feat[units] == 0.0), layer
        kept = torch.ones_like(feat, dtype=torch.bool)
        kept[units] = False
        assert float(feat[kept].max()) > 0
        assert v.sources[layer].post_activation  # measured after the ReLU, the gate before it


def test_at_vs_loss_is_at_loss_plus_lambda_vulnerability():
    torch.manual_seed(0)
    model = TinyConvNet()
    x, y = blobs(32)
    at = PGDAT(eps=0.1, steps=3)
    vs = ATVS(eps=0.1, steps=3, lam=0.7)
    out_at = at(model, x, y, generator=make_generator(5))
    out_vs = vs(model, x, y, generator=make_generator(5))
    x_adv = at.craft(model, x, y, generator=make_generator(5))
    assert torch.equal(x_adv, vs.last["x_adv"])
    v = latent_vulnerability(model, x, x_adv).network  # Eq. 2 by the metrics module
    assert float(vs.last["vulnerability"]) == pytest.approx(v, rel=1e-5)
    assert out_vs.loss.item() == pytest.approx(out_at.loss.item() + 0.7 * v, rel=1e-5)
    assert ATVS(eps=0.1, steps=3, lam=0.0)(model, x, y, generator=make_generator(5)).loss.item() == pytest.approx(
        out_at.loss.item(), rel=1e-6)
    # VS gradients reach the weights
    out_vs.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(build_objective("at-vs", eps=0.1, lam=0.5), ATVS)
    with pytest.raises(ConfigError):
        build_objective("at-vs", lam=0.5)


def test_anp_routes_mask_gradients_from_the_adversarial_loss_only():
    torch.manual_seed(0)
    model = TinyConvNet()
    gates = insert_gates(model, example=torch.rand(2, 1, 6, 6))
    x, y = blobs(24)
    obj = ANPObjective(gates, eps=0.1, steps=2, kl_scale=1e-3, beta=0.5, lam=0.3)
    model.train()
    out = obj(model, x, y, generator=make_generator(0))
    t = obj.last
    masks = gates.parameters()
    mask_ids = {id(p) for p in masks}
    weights = [p for p in model.parameters() if id(p) not in mask_ids]
    g_masks = torch.autograd.grad(out.loss, masks, retain_graph=True)
    ref_masks = torch.autograd.grad(t["ce_adv"] + t["kl_term"], masks, retain_graph=True)
    for a, b in zip(g_masks, ref_masks):
        assert torch.allclose(a, b, atol=1e-7)
    g_w = torch.autograd.grad(out.loss, weights, retain_graph=True)
    ref_w = torch.autograd.grad(0.5 * t["ce_clean"] + 0.5 * t["ce_adv"] + 0.3 * t["vulnerability"], weights,
                                retain_graph=True)
    for a, b in zip(g_w, ref_w):
        assert torch.allclose(a, b, atol=1e-7)
    # the clean and VS terms would have moved the masks: the routing is not a no-op
    mixed = torch.autograd.grad(t["loss_weights"], masks, retain_graph=True)
    assert any(not torch.allclose(a, b) for a, b in zip(mixed, g_masks))
    assert out.loss.item() == pytest.approx(t["loss_weights"].item())


def test_mask_parameters_get_ten_times_the_learning_rate():
    model, gates = _gated_lenet()
    groups = gate_param_groups(model, gates, lr=1e-3)
    assert groups[1]["lr"] == pytest.approx(1e-2) and groups[1]["weight_decay"] == 0
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in gates.parameters()}
    assert len(groups[0]["params"]) == 8  # weight + bias of conv, conv, fc, fc
    remove_gates(model)
    assert not hasattr(model, "rp_gates") and model(torch.rand(1, 1, 28, 28)).shape == (1, 10)


class _PhaseProbe(Hook):
    """Records, at the start of each training phase, whether the masks are frozen and optimised."""

    def __init__(self):
        self.phases = []

    def on_train_start(self, model, optimizer):
        gates = GateSet(model)
        opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.phases.append({"frozen": all(g.frozen for g in gates.gates),
                            "masks_in_opt": any(id(p) in opt_ids for p in gates.parameters()),
                            "snap": [p.detach().clone() for p in gates.parameters()]})


def test_pat_freezes_the_masks_after_bayesian_pruning():
    x, y = blobs(200)
    train = Split(x=x, y=y)
    torch.manual_seed(0)
    model = TinyConvNet()
    probe = _PhaseProbe()
    cfg = TrainConfig(epochs=1, batch_size=50, optimizer="adam", lr=1e-3, weight_decay=0, progress=False,
                      select="last")
    res = bayesian_prune(model, "pat", train=train, val=None, cfg=cfg, eps=0.1, steps=2, gamma=5.0,
                         example=x[:2], hooks=[probe])
    assert set(res.phases) == {"bp", "at"}
    bp, at = probe.phases
    assert not bp["frozen"] and bp["masks_in_opt"]
    assert at["frozen"] and not at["masks_in_opt"]
    for before, p in zip(at["snap"], res.gates.parameters()):  # unchanged through the AT phase
        assert torch.equal(before, p) and not p.requires_grad
    model.train()
    assert torch.equal(model(x[:5]), model(x[:5]))  # frozen masks are deterministic even in training mode


def test_bayesian_methods_are_registered_and_anp_vs_runs():
    for name in ("bp-bbd", "anp-bbd", "anp-vs-bbd", "pat-bbd", "bp-vib", "anp-vib"):
        m = METHODS.get(name)
        assert m.rate_kind == "learned" and m.paper.key == "Madaan2020" and m.group == "filter"
    x, y = blobs(200)
    torch.manual_seed(0)
    model = TinyConvNet()
    cfg = TrainConfig(epochs=1, batch_size=50, optimizer="adam", lr=1e-3, weight_decay=0, progress=False,
                      select="last")
    res = bayesian_prune(model, "anp-vs", train=Split(x=x, y=y), val=None, cfg=cfg, eps=0.1, steps=2,
                         example=x[:2])
    assert res.method == "anp-vs" and 0 <= res.unit_sparsity <= 1
    with pytest.raises(ConfigError, match="eps"):
        bayesian_prune(TinyConvNet(), "anp", train=Split(x=x, y=y), val=None, cfg=cfg, example=x[:2])


def test_vib_gate_kl_and_test_mask():
    torch.manual_seed(0)
    gate = VIBGate(4, positions=9)
    with torch.no_grad():
        gate.mu.copy_(torch.tensor([1.0, 0.5, 0.01, -2.0]))
        gate.log_sigma2.copy_(torch.tensor([-9.0, 0.0, -4.0, 0.0]))
    expected = 0.5 * torch.log1p(gate.mu ** 2 / (gate.log_sigma2.exp() + 1e-8)) * 9
    assert torch.allclose(gate.kl_per_unit(), expected)
    # log alpha = log sigma^2 - log mu^2 >= 0 -> pruned; kept units scale by mu
    assert torch.equal(gate.keep(), torch.tensor([True, False, False, True]))
    assert torch.allclose(gate.test_scale(), torch.tensor([1.0, 0.0, 0.0, -2.0]))
    gate.eval()
    assert torch.equal(gate.scale(3), gate.scale(3))
    gate.train()
    s = gate.sample_scale(20000)
    assert torch.allclose(s.mean(0), gate.mu, atol=0.05)


def test_a_layer_whose_units_all_fall_below_the_threshold_keeps_its_most_likely_unit():
    gate = BetaBernoulliGate(5)
    with torch.no_grad():
        gate.a_uc.copy_(torch.tensor([-10.0, -9.0, -7.0, -10.0, -8.0]))  # every E[pi] < 1e-3
    e = gate.expected_pi()
    assert bool((e < 1e-3).all())
    s = gate.test_scale()
    assert torch.equal(s != 0, torch.tensor([False, False, True, False, False]))  # argmax E[pi] only
    assert torch.allclose(s[2], e[2]) and int(gate.keep().sum()) == 1
    # not triggered when some unit is above the threshold
    with torch.no_grad():
        gate.a_uc[0] = 2.0
    assert torch.equal(gate.keep(), torch.tensor([True, False, False, False, False]))
    # VIB: the unit with the smallest log alpha
    vib = VIBGate(3)
    with torch.no_grad():
        vib.mu.copy_(torch.tensor([0.1, 0.2, 0.05]))
        vib.log_sigma2.copy_(torch.tensor([0.0, 0.0, 0.0]))  # log alpha > 0 for all
    assert torch.equal(vib.keep(), torch.tensor([False, True, False]))


def test_fully_pruned_gated_lenet_slims_to_one_unit_per_layer():
    torch.manual_seed(0)
    model = create_model("lenet5-caffe", width=0.5).eval()
    gates = insert_gates(model)
    with torch.no_grad():
        for g in gates.gates:  # the collapse of an over-regularised ANP run: every E[pi] below the threshold
            g.a_uc.uniform_(-12.0, -9.0)
    assert all(k == 1 for _, k, _ in gates.units())
    x = torch.rand(8, 1, 28, 28)
    res = gates.slim(example=x[:2])  # no zero-width layer; logits checked equal inside
    assert torch.allclose(res.model.eval()(x), model(x), atol=1e-5)
    for name, (kept, _total) in res.units.items():
        assert kept >= 1
