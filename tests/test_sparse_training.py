"""Chen2022 (Flying Bird, Flying Bird+, Robust Bird): known answers for the layer densities, one topology update,
the death-rate schedule, the FB+ rule, the early-bird criterion, and exact kept counts at the end of each method."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import robustprune
from conftest import TinyConvNet, blobs
from robustprune.methods.sparse_training import (
    EarlyBirdHook,
    FlyingBirdHook,
    allocate_counts,
    cosine_death_rate,
    death_and_growth,
    dst_decision,
    early_bird_distances,
    erk_densities,
    hamming_distance,
    igq_densities,
    layer_counts,
    random_masks,
    reinitialise,
    topology_update,
    trend_fraction,
)
from robustprune.sparsity import MaskSet, num_keep, prunable_layers

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------- densities
def test_erk_closed_form_on_two_layers_with_clipping_and_redistribution():
    # Linear(10 -> 20) and Linear(20 -> 2): raw ERK (n_in + n_out) / (n_in n_out) = 30/200 and 22/40
    shapes = {"a": (20, 10), "b": (2, 20)}
    # density 0.2 (48 of 240): eps = 48 / (0.15*200 + 0.55*40) = 48/52, nothing clipped
    d = erk_densities(shapes, 0.2)
    assert d["a"] == pytest.approx(0.15 * 48 / 52) and d["b"] == pytest.approx(0.55 * 48 / 52)
    assert d["a"] / d["b"] == pytest.approx((30 / 200) / (22 / 40))
    assert layer_counts(shapes, 48) == {"a": 28, "b": 20}  # 27.69 + 20.31: the remainder goes to the larger fraction
    # density 0.5 (120 of 240): b would get 0.55 * 120/52 > 1, so b is dense and a takes the rest: (120 - 40) / 200
    d = erk_densities(shapes, 0.5)
    assert d == pytest.approx({"a": 0.4, "b": 1.0})
    assert layer_counts(shapes, 120) == {"a": 80, "b": 40}
    # a convolution's ERK counts every dimension of its kernel: (8 + 4 + 3 + 3) / 288
    d = erk_densities({"c": (8, 4, 3, 3), "l": (10, 72)}, 0.1)
    assert d["c"] / d["l"] == pytest.approx((18 / 288) / (82 / 720))


@pytest.mark.parametrize("kind", ["erk", "igq"])
@pytest.mark.parametrize("rate", [2.0, 3.0, 4.0, 7.3, 20.0])
def test_layer_counts_give_exactly_the_global_target(kind, rate):
    model = TinyConvNet()
    shapes = {n: tuple(m.weight.shape) for n, m in prunable_layers(model, "unstructured").items()}
    total = sum(math.prod(s) for s in shapes.values())
    target = num_keep(total, 1 / rate)
    counts = layer_counts(shapes, target, kind)
    assert sum(counts.values()) == target
    assert all(1 <= counts[n] <= math.prod(s) for n, s in shapes.items())
    masks = random_masks(shapes, counts, torch.Generator().manual_seed(0))
    assert masks.kept() == target
    assert {n: int(m.sum()) for n, m in masks.masks.items()} == counts


def test_igq_densities_share_one_force():
    shapes = {"a": (20, 10), "b": (2, 20), "c": (8, 4, 3, 3)}
    d = igq_densities(shapes, 0.3)
    n = {k: math.prod(s) for k, s in shapes.items()}
    forces = [(1 / d[k] - 1) / n[k] for k in shapes]  # density 1 / (1 + f n_l)
    assert forces == pytest.approx([forces[0]] * 3, rel=1e-9)
    assert sum(d[k] * n[k] for k in shapes) == pytest.approx(0.3 * sum(n.values()), rel=1e-9)


def test_allocate_counts_never_drops_a_layer():
    assert allocate_counts({"a": 0.2, "b": 9.8}, {"a": 10, "b": 10}, 10) == {"a": 1, "b": 9}


# ---------------------------------------------------------------------------------------------------- schedule
def test_cosine_death_rate_matches_the_reference_cosine_annealing():
    T = 1000
    assert cosine_death_rate(0, T) == pytest.approx(0.5)
    assert cosine_death_rate(T // 2, T) == pytest.approx((0.5 + 0.005) / 2)
    assert cosine_death_rate(T // 4, T) == pytest.approx(0.005 + 0.495 * (1 + math.cos(math.pi / 4)) / 2)
    assert cosine_death_rate(T, T) == pytest.approx(0.005)
    # the reference steps a CosineAnnealingLR(lr=0.5, T_max=T, eta_min=0.005) once per optimiser step
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T, 0.005)
    for t in range(1, 901):
        opt.step()
        sched.step()
        if t in (1, 300, 900):
            assert cosine_death_rate(t, T) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------- one update
def _layer():
    lin = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.9, -0.1, 0.0, 0.5, -0.05, 0.0, 0.7, 0.0, 0.3, 0.0]]))
    mask = lin.weight.detach() != 0  # 6 kept, 4 dead
    return lin, mask


def test_death_and_growth_kills_the_smallest_and_regrows_among_the_dead():
    lin, mask = _layer()
    new, ch = death_and_growth(lin.weight, mask, 2, 2, torch.Generator().manual_seed(0))
    assert int(new.sum()) == 6
    assert ch.killed.nonzero()[:, 1].tolist() == [1, 4]  # |-0.1| and |-0.05|: the smallest kept ones
    assert bool((ch.grown & mask).sum() == 0)  # regrown only where the weight was dead before
    assert int(ch.grown.sum()) == 2 and bool((new == ((mask & ~ch.killed) | ch.grown)).all())


def test_topology_update_keeps_the_count_and_zeroes_weights_and_momentum_of_changed_positions():
    lin, mask = _layer()
    model = nn.Sequential(lin)
    masks = MaskSet({"0": mask})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.state[lin.weight]["momentum_buffer"] = torch.ones_like(lin.weight)
    before = lin.weight.detach().clone()
    out = topology_update({"0": lin}, masks, opt, 0.3, torch.Generator().manual_seed(1))  # ceil(0.3 * 6) = 2
    assert out["killed"] == 2 and out["grown"] == 2 and masks.kept() == 6 == out["kept"]
    new = masks["0"]
    killed = mask & ~new
    grown = new & ~mask
    assert killed.nonzero()[:, 1].tolist() == [1, 4] and int(grown.sum()) == 2
    changed = killed | grown
    buf = opt.state[lin.weight]["momentum_buffer"]
    assert bool((buf[changed] == 0).all()) and bool((buf[~changed] == 1).all())
    w = lin.weight.detach()
    assert bool((w[changed] == 0).all()) and torch.equal(w[new & ~changed], before[new & ~changed])
    # a dense layer is left alone, as in the reference
    dense = MaskSet({"0": torch.ones_like(mask)})
    assert topology_update({"0": lin}, dense, opt, 0.3, torch.Generator())["killed"] == 0


def test_plus_update_prunes_more_and_never_grows_above_the_start():
    lin, mask = _layer()
    masks = MaskSet({"0": mask})
    # extra_prune 0.5: ceil(0.3 * 6) + ceil(0.3 * 0.5 * 6) = 3 removed, 2 regrown
    out = topology_update({"0": lin}, masks, None, 0.3, torch.Generator().manual_seed(0), extra_prune=0.5)
    assert (out["killed"], out["grown"], masks.kept()) == (3, 2, 5)
    # extra growth of 100% (2 more) is capped at the starting count 6: only one more
    out = topology_update({"0": lin}, masks, None, 0.3, torch.Generator().manual_seed(0), extra_growth=1.0,
                          max_kept=6)
    assert (out["killed"], out["grown"], masks.kept()) == (2, 3, 6)


def test_hook_moves_an_update_off_an_epochs_last_step():
    lin, mask = _layer()
    model = nn.Sequential(lin)
    masks = MaskSet({"0": mask})
    hook = FlyingBirdHook({"0": lin}, masks, total_steps=8, epochs=4, death_rate=0.5, death_rate_final=0.005,
                          update_every=2, update_every_late=2, generator=torch.Generator().manual_seed(0),
                          steps_per_epoch=2)
    hook.on_train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for step in range(1, 9):
        hook.on_step_end(model, step)
    hook.close()
    assert [u["step"] for u in hook.updates] == [3, 5, 7]  # due at 2, 4, 6 (epoch ends): one step later; none at 8
    assert all(u["kept"] == 6 for u in hook.updates)


# ---------------------------------------------------------------------------------------------------- FB+ rule
def test_dst_rule_on_hand_made_histories():
    gaps = [1.0, 2.0, 3.0, 2.0, 3.0]  # rose in 3 of the last 4 pairs
    losses = [3.0, 2.0, 2.0, 1.0, 0.0]  # did not fall in 1 of 4 (an equal pair counts as not falling)
    assert trend_fraction(gaps, 4, strict=True) == 0.75 and trend_fraction(losses, 4, strict=False) == 0.25
    assert dst_decision(gaps, losses, 4, 0.5) == (True, False, 0.75, 0.25)
    assert dst_decision([0.0, 1.0, 0.0, 5.0, 5.0, 4.0], [0.0] * 6, 2, 0.5)[:2] == (False, True)  # last 3 values only
    assert dst_decision([1.0], [1.0], 4, 0.5) == (False, False, None, None)


# ---------------------------------------------------------------------------------------------------- early bird
def _swap(base: torch.Tensor, pairs: int) -> torch.Tensor:
    """``base`` (50 ones then 50 zeros) with ``pairs`` kept positions exchanged for dead ones: distance 2·pairs/100."""
    m = base.clone()
    m[:pairs] = False
    m[50: 50 + pairs] = True
    return m


def test_early_bird_criterion_on_a_hand_made_sequence():
    base = torch.arange(100) < 50
    assert hamming_distance(base, _swap(base, 4)) == pytest.approx(0.08)
    seq = [_swap(base, 5), _swap(base, 2), _swap(base, 4), base, base, base]
    assert early_bird_distances(seq[:4]) is None
    assert early_bird_distances(seq[:5]) == pytest.approx([0.10, 0.04, 0.08, 0.0])  # 0.10 > 0.08: not yet
    assert early_bird_distances(seq[:6]) == pytest.approx([0.04, 0.08, 0.0, 0.0])  # all <= 0.08: emerged

    lin = nn.Linear(10, 10, bias=False)
    hook = EarlyBirdHook({"0": lin}, 50, window=5, tol=0.08)
    for epoch, m in enumerate(seq):
        with torch.no_grad():  # weights whose top-50 magnitudes are exactly the mask
            lin.weight.copy_((m.float() + 0.01 * torch.arange(100) / 100).view(10, 10))
        hook.on_epoch_end(lin, epoch, {})
        assert hook.stop_training == (epoch == 5)
    assert hook.emerged_epoch == 6 and hook.distances[4] == pytest.approx([0.10, 0.04, 0.08, 0.0])


def test_reinitialise_is_seeded_and_keeps_the_callers_rng():
    a, b = TinyConvNet(), TinyConvNet()
    state = torch.get_rng_state()
    reinitialise(a, 3)
    reinitialise(b, 3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------------------------------- methods
def _counts(model):
    layers = prunable_layers(model, "unstructured").values()
    return sum(int(torch.count_nonzero(m.weight)) for m in layers), sum(m.weight.numel() for m in layers)


FAST = dict(pgd_steps=1, train={"batch_size": 64})


def test_flyingbird_keeps_exactly_the_target_and_records_its_updates():
    x, y = blobs(400)
    torch.manual_seed(0)
    net = TinyConvNet()
    res = robustprune.prune(net, "flyingbird", rate=4, data=(x, y), eps=0.1, epochs=3, update_every=2,
                            update_every_late=2, **FAST)
    nonzero, total = _counts(net)
    target = num_keep(total, 0.25)
    assert res.masks.kept() == target == res.convergence["kept"]
    # counted from the weights: a regrown weight (it starts at zero) whose unit is dead may still be zero
    assert nonzero == res.convergence["nonzero_kept"] <= target
    assert res.achieved_compression == pytest.approx(total / nonzero) and res.achieved_compression >= 4
    assert all(bool((m.weight[~res.masks[n]] == 0).all()) for n, m in prunable_layers(net, "unstructured").items())
    ups = res.convergence["updates"]
    assert ups and all(u["killed"] == u["grown"] and u["kept"] == target for u in ups)
    assert [u["death_rate"] for u in ups] == sorted([u["death_rate"] for u in ups], reverse=True)
    assert {"robust_overfit", "best_val_robust", "final_val_robust"} <= set(res.convergence)
    assert res.convergence["robust_overfit"] == pytest.approx(res.convergence["best_val_robust"]
                                                              - res.convergence["final_val_robust"])
    assert type(net) is TinyConvNet and res.converged is not None


def test_flyingbird_plus_prunes_more_when_the_gap_grows_and_reports_what_it_ends_at():
    x, y = blobs(400)
    torch.manual_seed(0)
    net = TinyConvNet()
    # threshold 0 and start 0: the rule fires at every update once two epochs are recorded
    res = robustprune.prune(net, "flyingbird-plus", rate=4, data=(x, y), eps=0.1, epochs=4, update_every=3,
                            update_every_late=3, update_threshold=0.0, dst_start=0.0, pgd_steps=1,
                            train={"batch_size": 64, "select": "last"})
    nonzero, total = _counts(net)
    c = res.convergence
    assert c["start_kept"] == num_keep(total, 0.25) and c["dst_prune_updates"]
    assert res.masks.kept() == c["kept"] < c["start_kept"] and nonzero <= c["kept"]
    assert res.achieved_compression == pytest.approx(total / nonzero) and res.achieved_compression > 4
    assert len(c["gap_history"]) == len(c["val_robust_loss_history"]) == 4
    assert all(u["kept"] <= c["start_kept"] for u in c["updates"])


def test_robustbird_stops_at_the_early_bird_or_at_the_budget():
    x, y = blobs(300)
    torch.manual_seed(0)
    net = TinyConvNet()
    res = robustprune.prune(net, "robustbird", rate=4, data=(x, y), eps=0.1, epochs=12, pgd_steps=1,
                            natural={"batch_size": 64}, adversarial={"batch_size": 64, "epochs": 1})
    nonzero, total = _counts(net)
    c = res.convergence
    assert res.masks.kept() == num_keep(total, 0.25) == nonzero
    assert res.converged and c["emerged_epoch"] == c["natural_epochs"] < 12 and c["hamming_max"][-1] <= 0.08
    assert len(res.history["natural"]) == c["natural_epochs"]

    torch.manual_seed(0)
    net = TinyConvNet()
    res = robustprune.prune(net, "robustbird", rate=4, data=(x, y), eps=0.1, epochs=6, pgd_steps=1,
                            hamming_tol=1e-9, natural={"batch_size": 64}, adversarial={"batch_size": 64, "epochs": 1})
    c = res.convergence
    assert res.converged is False and c["emerged_epoch"] is None and c["natural_epochs"] == 6
    assert c["hamming"][:4] == [None] * 4 and len(c["hamming"][4]) == 4
    assert res.masks.kept() == num_keep(_counts(net)[1], 0.25) == _counts(net)[0]
