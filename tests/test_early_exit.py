"""Per-sample early exit: every evaluation attack gives the same fooled set (and the same points)
with and without it at a fixed seed, leaves the generator in the same state, and costs fewer passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import gen
from robustprune.attacks import apgd, apgd_ce, apgd_t, cw_linf, min_norm_linf, pgd_l2, pgd_linf


pytestmark = pytest.mark.usefixtures("one_thread")




def relu_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 5))


class Counter(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x):
        self.rows += len(x)
        return self.inner(x)


ATTACKS = {
    "pgd": (pgd_linf, dict(eps=0.12, steps=10, restarts=3)),
    "pgd-cw": (pgd_linf, dict(eps=0.12, steps=10, restarts=2, loss="cw")),
    "pgd-l2": (pgd_l2, dict(eps=0.5, steps=10, restarts=2)),
    "cw-linf": (cw_linf, dict(eps=0.12, steps=10, restarts=2)),
    "apgd-ce": (apgd_ce, dict(eps=0.1, steps=20, restarts=2)),
    "apgd-t": (apgd_t, dict(eps=0.1, steps=20, n_target_classes=3)),
    "apgd": (apgd, dict(eps=0.1, steps=20, n_target_classes=3)),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_same_fooled_set_with_and_without_early_exit(name):
    fn, kw = ATTACKS[name]
    model = Counter(relu_net(seed=2))
    x = torch.rand(96, 1, 3, 4, generator=gen(1))
    with torch.no_grad():
        y = model.inner(x).argmax(1)
    y[:8] = (y[:8] + 1) % 5  # a few clean errors
    g1, g2 = gen(7), gen(7)
    model.rows = 0
    slow = fn(model, x, y, generator=g1, early_exit=False, **kw)
    rows_slow = model.rows
    model.rows = 0
    fast = fn(model, x, y, generator=g2, **kw)
    rows_fast = model.rows
    with torch.no_grad():
        f_slow = model.inner(slow).argmax(1) != y
        f_fast = model.inner(fast).argmax(1) != y
    assert f_slow[:8].all() and f_fast[:8].all()
    assert 0 < int(f_slow[8:].sum()) < 88, "choose a budget where the comparison means something"
    assert torch.equal(f_slow, f_fast)
    torch.testing.assert_close(fast[f_fast], slow[f_slow], rtol=0, atol=1e-6)  # the same first successes
    assert torch.equal(g1.get_state(), g2.get_state()), "the generator stream must not depend on early exit"
    assert rows_fast < rows_slow


def test_min_norm_same_norms_with_and_without_early_exit():
    model = relu_net(seed=2)
    x = torch.rand(48, 1, 3, 4, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(eps_max=0.15, steps=15, n_target_classes=2, search_steps=4, search_iter=5)
    a = min_norm_linf(model, x, y, generator=gen(3), early_exit=False, **kw)
    b = min_norm_linf(model, x, y, generator=gen(3), **kw)
    assert torch.equal(torch.isfinite(a.norms), torch.isfinite(b.norms))
    torch.testing.assert_close(a.norms, b.norms, rtol=0, atol=1e-6)


def test_evaluation_rows_equal_with_and_without_early_exit():
    from robustprune.attacks import AttackConfig
    from robustprune.evaluation import run_attacks

    model = relu_net(seed=2)
    x = torch.rand(80, 1, 3, 4, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 5
    rows = {}
    for flag in (False, True):
        specs = [AttackConfig.build("pgd", [0.05, 0.1], steps=10, early_exit=flag),
                 AttackConfig.build("apgd", [0.1], steps=10, n_target_classes=2, early_exit=flag)]
        run = run_attacks(model, x, y, specs, default_eps=0.1, batch_size=32, seed=0)
        rows[flag] = [(r["attack"], r["eps_str"], r["robust_acc"]) for r in run.rows]
    assert rows[False] == rows[True]
