"""ADMM pruning engine, AdvPrune (Ye2019) and PwoA (Jian2022).

That Π_S is the Euclidean projection onto each set is tested in test_sparsity.py
(test_project_is_the_euclidean_projection); here: ADMM's use of it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import TinyConvNet, blobs
from robustprune.data import Split
from robustprune.errors import ConfigError, UnknownNameError
from robustprune.methods import (
    METHODS,
    ADMMHook,
    PruneTask,
    admm_prune,
    advprune,
    get_method,
    pwoa,
)
from robustprune.methods.admm import resolve_keep, rho_schedule, scheme_group
from robustprune.objectives import Natural
from robustprune.sparsity import group_view, num_keep, project, prunable_layers
from robustprune.train import TrainConfig

SCHEMES = ["irregular", "column", "filter"]


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=50, optimizer="adam", lr=1e-2, weight_decay=0, progress=False,
                select="last", schedule="constant")
    base.update(kw)
    return TrainConfig(**base)


def data(n: int = 200) -> Split:
    x, y = blobs(n)
    return Split(x=x, y=y)


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyConvNet()


def nonzero_groups(t: torch.Tensor, group: str) -> int:
    return int((group_view(t, group) != 0).any(dim=1).sum())


# --------------------------------------------------------------------------- layers, keep, rho
def test_layers_and_keep_per_scheme():
    m = model()
    assert set(resolve_keep(m, "irregular", rate=4)) == {"1", "3", "6", "8"}  # conv + linear
    assert set(resolve_keep(m, "filter", rate=4)) == {"1", "3"}  # conv only
    assert set(resolve_keep(m, "column", keep=0.5)) == {"1", "3"}
    per = resolve_keep(m, "irregular", keep={"1": 0.5, "6": 0.1, "8": 1.0})
    assert per == {"1": 0.5, "6": 0.1}  # unnamed layers and keep 1 stay dense
    with pytest.raises(ConfigError, match="exactly one"):
        resolve_keep(m, "irregular")
    with pytest.raises(ConfigError, match="not prunable"):
        resolve_keep(m, "filter", keep={"6": 0.5})
    with pytest.raises(ConfigError):
        resolve_keep(m, "irregular", rate=0.5)
    with pytest.raises(ConfigError, match="scheme"):
        resolve_keep(m, "banana", rate=2)


def test_rho_schedule_seed004_and_constant():
    vals = rho_schedule(0.01, 1.35, 1.0, 20)
    assert vals[0] == 0.01 and vals[1] == pytest.approx(0.0135) and vals[2] == pytest.approx(0.018225)
    k = next(i for i, v in enumerate(vals) if v >= 1.0)
    assert k == math.ceil(math.log(100) / math.log(1.35)) == 16 and vals[k] == 1.0 and vals[-1] == 1.0
    assert rho_schedule(0.5, 1.0, None, 5) == [0.5] * 6
    m = model()
    hook = ADMMHook(m, scheme="irregular", rate=2, rho=0.01, rho_factor=1.35, rho_max=1.0)
    for i in range(20):
        assert all(r == pytest.approx(vals[i]) for r in hook.rho.values())
        hook.update(m)
    with pytest.raises(ConfigError, match="rho_max"):
        ADMMHook(m, rate=2, rho=2.0, rho_max=1.0)


# --------------------------------------------------------------------------- the ADMM steps
@pytest.mark.parametrize("scheme", SCHEMES)
def test_z_stays_in_the_set_and_u_accumulates_w_minus_z(scheme):
    m = model()
    group = scheme_group(scheme)
    hook = ADMMHook(m, scheme=scheme, rate=4, rho=0.1)
    layers = {n: mod for n, mod in m.named_modules() if n in hook.keep}
    acc = {n: torch.zeros_like(mod.weight) for n, mod in layers.items()}
    g = torch.Generator().manual_seed(0)
    for k in range(4):
        for n, z in hook.Z.items():  # Z in S: at most k groups non-zero, and projecting changes nothing
            w = layers[n].weight
            assert nonzero_groups(z, group) <= num_keep(group_view(w, group).shape[0], hook.keep[n])
            assert torch.equal(project(z, group, hook.keep[n]), z)
        with torch.no_grad():  # an arbitrary W-step
            for mod in layers.values():
                mod.weight.add_(0.1 * torch.randn(mod.weight.shape, generator=g))
        u_prev = {n: u.clone() for n, u in hook.U.items()}
        hook.update(m)
        for n, mod in layers.items():
            w = mod.weight.detach()
            assert torch.allclose(hook.Z[n], project(w + u_prev[n], group, hook.keep[n]))
            acc[n] += w - hook.Z[n]
            assert torch.allclose(hook.U[n], acc[n], atol=1e-6)
    assert hook.updates == 4 and len(hook.history) == 4


def test_extra_loss_is_the_augmented_term():
    m = model()
    hook = ADMMHook(m, scheme="irregular", keep={"1": 0.5, "6": 0.25}, rho={"1": 0.3, "6": 0.7})
    with torch.no_grad():
        for u in hook.U.values():
            u.normal_()
    mods = dict(m.named_modules())
    want = sum(0.5 * hook.rho[n] * ((mods[n].weight - hook.Z[n] + hook.U[n]) ** 2).sum() for n in hook.keep)
    got = hook.extra_loss(m)
    assert torch.allclose(got, want)
    got.backward()
    assert torch.allclose(mods["1"].weight.grad, 0.3 * (mods["1"].weight - hook.Z["1"] + hook.U["1"]).detach())
    assert mods["3"].weight.grad is None


def test_updates_every_k_steps_or_epochs():
    m, train = model(), data(200)
    h_step = ADMMHook(m, rate=2, update_every=3, unit="step")
    from robustprune.train import fit

    fit(m, Natural(), train, None, cfg(epochs=2), hooks=[h_step])  # 4 steps per epoch -> 8 steps
    assert h_step.steps == 8 and h_step.updates == 2
    h_ep = ADMMHook(m, rate=2, update_every=2, unit="epoch")
    res = fit(m, Natural(), train, None, cfg(epochs=3), hooks=[h_ep])
    assert h_ep.updates == 1 and h_ep.epochs == 3
    assert [r["admm_updates"] for r in res.history] == [0, 1, 1]
    assert all("admm_primal" in r for r in res.history)


def test_state_round_trips_and_resume_is_exact():
    m, train = model(), data(100)
    from robustprune.train import fit

    hook = ADMMHook(m, scheme="filter", rate=2, rho=0.05, rho_factor=1.5, rho_max=1.0, update_every=1)
    fit(m, Natural(), train, None, cfg(epochs=2), hooks=[hook])
    state = hook.state_dict()
    assert all(isinstance(v, float) for v in state["rho"].values())
    assert all(isinstance(t, torch.Tensor) for t in [*state["Z"].values(), *state["U"].values()])
    other = ADMMHook(m, scheme="filter", rate=2)  # fresh hook, other rho
    other.load_state_dict(state)
    assert torch.allclose(other.extra_loss(m), hook.extra_loss(m))
    assert other.rho == hook.rho and (other.updates, other.epochs, other.steps) == (2, 2, hook.steps)
    a, b = hook.update(m), other.update(m)
    assert a["primal"] == b["primal"] and other.rho == hook.rho
    for n in hook.Z:
        assert torch.equal(hook.Z[n], other.Z[n]) and torch.equal(hook.U[n], other.U[n])
    state["Z"] = {"nope": torch.zeros(1)}
    with pytest.raises(ConfigError):
        other.load_state_dict(state)


def test_admm_drives_w_towards_the_sparse_set():
    """A meaningful convergence check: with rho growing and enough W-steps per Z/U update, ||W - Z|| falls by
    orders of magnitude while the model still fits the data, so hard pruning afterwards barely changes W."""
    m, train = model(1), data(400)
    from robustprune.train import fit

    hook = ADMMHook(m, scheme="irregular", rate=4, rho=0.1, rho_factor=1.5, rho_max=5.0, update_every=16, unit="step")
    start = hook.residuals(m)["primal_rel"]
    res = fit(m, Natural(), train, None, cfg(epochs=16, optimizer="sgd", momentum=0.0, lr=0.2), hooks=[hook])
    end = hook.residuals(m)["primal_rel"]
    primal = [r["admm_primal_rel"] for r in res.history]
    assert start > 0.5 and end < 0.01 * start
    assert primal[-1] < 0.02 * primal[0]
    assert res.history[-1]["train_acc"] > 0.9
    before = {n: mod.weight.detach().clone() for n, mod in m.named_modules() if n in hook.keep}
    hook.hard_prune(m)
    mods = dict(m.named_modules())
    moved = sum(float((mods[n].weight.detach() - w).pow(2).sum()) for n, w in before.items())
    total = sum(float(w.pow(2).sum()) for w in before.values())
    assert moved < 1e-3 * total


# --------------------------------------------------------------------------- hard pruning + retraining
@pytest.mark.parametrize("scheme", SCHEMES)
def test_admm_prune_hits_exact_targets_and_retraining_keeps_zeros(scheme):
    m, train = model(), data(200)
    group = scheme_group(scheme)
    res = admm_prune(m, objective=Natural(), train=train, val=None, admm_cfg=cfg(epochs=2), retrain_cfg=cfg(epochs=2),
                     scheme=scheme, rate=4, update_every=1)
    layers = prunable_layers(m, group)
    assert set(res.masks.masks) == set(layers) == set(res.layer_keep)
    for n, mod in layers.items():
        rows = group_view(res.masks[n], group)[:, 0]
        k = num_keep(rows.numel(), 0.25)
        assert int(rows.sum()) == k  # exact per-layer target
        assert res.achieved_keep[n] == pytest.approx(k / rows.numel())
        w = mod.weight.detach()
        assert torch.all(w[~res.masks[n]] == 0)  # retraining kept the zeros
        assert nonzero_groups(w, group) == k  # and nothing else is zero (random init, trained)
    assert set(res.times) == {"admm", "hard_prune", "retrain", "total"}
    assert res.retrain is not None and len(res.retrain.history) == 2 and len(res.admm.history) == 2
    assert res.sparsity["mask_violations"] == 0


def test_advprune_uses_pgd_at_in_both_phases():
    m, train = model(), data(100)
    res = advprune(m, eps=0.1, steps=2, train=train, val=train.subset(50), scheme="filter", keep=0.5,
                   admm_cfg=cfg(epochs=1, val_size=50), retrain_cfg=cfg(epochs=1, val_size=50, select="val_robust"))
    assert res.retrain.selected_by == "val_robust"  # val_eps defaulted to eps
    assert "val_robust" in res.retrain.history[0]
    assert res.admm.selected_by == "last"


def test_admm_methods_are_registered_with_their_group():
    assert {f"{f}-{s}" for f in ("admm", "pwoa") for s in SCHEMES} <= set(METHODS.names())
    r = get_method("admm-column")
    assert r.paper.key == "Ye2019" and r.group == "column" and r.rate_kind == "set"
    assert get_method("pwoa-irregular").group == "unstructured" and get_method("pwoa-filter").paper.key == "Jian2022"
    with pytest.raises(UnknownNameError):
        get_method("admm-banana")
    m = model()
    task = PruneTask(train=data(100), eps=0.1, epochs=1)
    res = r.prune(m, task, 2, {"pgd_steps": 1, "retrain.epochs": 0, "admm.lr": 1e-2})
    assert res.group == "column" and res.history["retrain"] == [] and res.settings["admm"]["lr"] == 1e-2
    assert "primal_rel" in res.convergence and res.converged in (True, False)
    with pytest.raises(ConfigError, match="scheme|unknown|Extra"):
        r.prune(model(), task, 2, {"scheme": "filter"})


# --------------------------------------------------------------------------- PwoA end to end
def test_pwoa_end_to_end_runs_both_phases_and_times_them():
    train = data(200)
    teacher = model(0)
    from robustprune.train import fit

    fit(teacher, Natural(), train, None, cfg(epochs=3))
    teacher_acc = float((teacher(train.x).argmax(1) == train.y).float().mean())
    res = pwoa(None, teacher, train=train, val=train.subset(60), scheme="irregular", rate=4,
               admm_cfg=cfg(epochs=2, lr=5e-3, val_size=60), retrain_cfg=cfg(epochs=1, lr=1e-3, val_size=60),
               mix_ratio=0.2, eps=0.05, pgd_steps=2, update_every=1, balance_batches=1, val_eps=0.05,
               balance=True, balance_point="student")
    assert set(res.times) >= {"admm", "retrain", "hard_prune", "total"} and res.times["admm"] > 0 < res.times["retrain"]
    assert len(res.admm.history) == 2 and len(res.retrain.history) == 1
    bal = res.extras["balance"]
    assert bal["epoch"] == 1 and bal["measured"]["admm"] > 0 and bal["measured"]["distill"] > 0
    assert res.extras["alpha"] == pytest.approx(bal["alpha"])
    assert res.extras["lambda_x"] == pytest.approx(4 * res.extras["lambda_y"])  # MNIST ratio 4:1
    assert "hsic_x" in res.admm.history[-1] and "pwoa_alpha" in res.retrain.history[-1]
    student = res.extras["objective"]  # HBaR wrapping the distillation
    assert student.inner.teacher is not None and not any(p.requires_grad for p in student.inner.teacher.parameters())
    # teacher untouched, student pruned to the exact target
    assert float((teacher(train.x).argmax(1) == train.y).float().mean()) == teacher_acc
    for n, mk in res.masks.masks.items():
        assert int(mk.sum()) == num_keep(mk.numel(), 0.25)
    # the registered method runs the same thing, with the scheme bound and no HBaR here
    student = model(1)
    task = PruneTask(train=train, epochs=1, teacher=teacher, dataset="mnist")
    res2 = get_method("pwoa-filter").prune(student, task, 2, {"use_hbar": False, "admm.optimizer": "adam",
                                                                "admm.lr": 1e-2})
    assert res2.group == "filter" and res2.extras["lambda_x"] is None and res2.extras["balance"] == {}  # no App. B by default


def test_jian2022_table_ix_defaults():
    from robustprune.methods.pwoa import pwoa_configs, table_ix

    t = table_ix("fashion-mnist")
    assert (t["tau"], t["alpha"], t["lambda_x"], t["lambda_y"], t["lambda_ratio"]) == (30.0, 10.0, 4e-4, 1e-4, (4.0, 1.0))
    assert table_ix("cifar100")["alpha"] == 1000.0 and table_ix("cifar10")["lambda_ratio"] == (1.0, 5.0)
    admm, retrain = pwoa_configs("mnist")
    assert (admm.epochs, admm.lr, retrain.epochs, retrain.lr) == (50, 5e-4, 20, 1e-3)
    assert admm.optimizer == "sgd" and admm.schedule == "cosine" and admm.batch_size == 128
    with pytest.raises(ConfigError):
        table_ix("imagenet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_admm_and_pwoa_on_cuda():
    x, y = blobs(200)
    train = Split(x=x.cuda(), y=y.cuda())
    teacher = model(0).cuda()
    res = pwoa(None, teacher, train=train, val=None, scheme="column", rate=2, mix_ratio=0.5, eps=0.05, pgd_steps=2,
               admm_cfg=cfg(epochs=2), retrain_cfg=cfg(epochs=1), update_every=2, update_unit="step")
    assert all(m.device.type == "cuda" for m in res.masks.masks.values())
    assert all(t.device.type == "cuda" for t in res.state["Z"].values())
    student = res.extras["student"]
    for n, mod in student.named_modules():
        if n in res.masks.masks:
            assert torch.all(mod.weight[~res.masks[n]] == 0)


def test_auto_update_every_reaches_the_rho_cap_at_the_end_of_the_phase():
    """Jian2022 App. B: rho 0.01 x1.35 per update, capped at 1, is 16 updates from its cap; 'auto' spreads them over
    whatever the ADMM phase's length is, so a short phase still ends at the cap (and a long one gets there last)."""
    from robustprune.methods.admm import auto_update_every, rho_schedule, updates_to_cap

    n = updates_to_cap(0.01, 1.35, 1.0)
    sched = rho_schedule(0.01, 1.35, 1.0, updates=n)
    assert n == 16 and sched[n] == 1.0 and sched[n - 1] < 1.0
    for total in (16, 117, 156, 1000):
        every = auto_update_every(0.01, 1.35, 1.0, total)
        assert total // every >= n  # enough updates within the phase to reach the cap ...
        assert total // (every + 1) < n or every == total  # ... and the interval is the longest that does
    assert auto_update_every(0.01, 1.35, 1.0, 5) == 1  # shorter than 16 steps: every step
    assert auto_update_every(0.5, 1.0, None, 40) == 40  # constant rho: one update at the end
    with pytest.raises(ConfigError):
        auto_update_every(0.01, 1.35, 1.0, 0)


def test_auto_update_interval_brings_rho_to_its_cap_within_the_phase():
    """'auto' counts the steps the training loop really takes (the last partial batch is dropped), so rho reaches
    rho_max by the end of the ADMM phase, whatever the split size."""
    from robustprune.methods.advprune import AdvPruneSettings

    for n in (1000, 1025, 1100, 1279):
        s = AdvPruneSettings()
        c = TrainConfig(epochs=3, batch_size=128, progress=False)
        kw = s.engine_kwargs(c, n, None)
        steps = n // 128 if n >= 256 else -(-n // 128)
        updates = (3 * steps) // kw["update_every"]
        assert s.rho * s.rho_factor ** updates >= s.rho_max * (1 - 1e-9), n
