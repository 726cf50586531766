"""In-house APGD (Croce2020): the checkpoint schedule, targeted APGD on a closed-form linear model (it finds the
known nearest boundary), the contract, and a cross-check against the official code (``pyautoattack``, the
``[autoattack]`` extra; skipped when missing) on a small trained model: robust accuracy within 0.5 points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from robustprune.attacks import AttackConfig, apgd, apgd_ce, apgd_t, autoattack, dlr_targeted_loss, get_attack_info
from robustprune.attacks.apgd import checkpoints
from robustprune.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import LinearModel, gen, train_blobs_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def test_checkpoints_are_croce2020_schedule():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times 100 iterations
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_dlr_targeted_loss_value():
    z = torch.tensor([[5.0, 3.0, 2.0, 1.0, 0.0]])
    got = dlr_targeted_loss(z, torch.tensor([0]), torch.tensor([3]))
    torch.testing.assert_close(got, torch.tensor([-(5.0 - 1.0) / (5.0 - 0.5 * (2.0 + 1.0))]))
    with pytest.raises(ConfigError):
        dlr_targeted_loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([1]))


def linear_case(n=64, d=16, c=5, seed=0):
    g = gen(seed)
    w = torch.randn(c, d, generator=g)
    b = 0.1 * torch.randn(c, generator=g)
    x = 0.35 + 0.3 * torch.rand(n, 1, 4, d // 4, generator=g)  # interior: no clipping at the budgets used
    model = LinearModel(w, b)
    with torch.no_grad():
        y = model(x).argmax(1)
        z = model(x)
    # L∞ distance to the boundary with class j: (z_y - z_j) / ||w_y - w_j||_1
    dist = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None, :, :]).abs().sum(-1)
    dist[torch.arange(n), y] = float("inf")
    return model, x, y, dist


def test_targeted_apgd_finds_the_nearest_boundary_of_a_linear_model():
    model, x, y, dist = linear_case()
    nearest = dist.min(1).values
    for eps in (0.02, 0.04, 0.06):
        x_adv = apgd_t(model, x, y, eps=eps, steps=50, n_target_classes=4, generator=gen(0))
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != y
        must = nearest < eps * 0.98   # the boundary lies inside the ball: a targeted linear attack reaches it
        cannot = nearest > eps * 1.02  # no point of the ball crosses any boundary
        assert must.any() and cannot.any()
        assert fooled[must].all(), eps
        assert not fooled[cannot].any(), eps
        assert ((x_adv - x).abs().flatten(1).amax(1) <= eps + 1e-6).all()


def test_targeted_apgd_crosses_to_the_target_class():
    model, x, y, dist = linear_case(seed=1)
    eps = 0.1
    x_adv = apgd_t(model, x, y, eps=eps, steps=50, n_target_classes=1, generator=gen(0))
    with torch.no_grad():
        z = model(x)
        second = z.argsort(1, descending=True)[:, 1]
        pred = model(x_adv).argmax(1)
    reachable = dist.gather(1, second[:, None]).squeeze(1) < eps * 0.98
    fooled = pred != y
    assert reachable.any() and fooled[reachable].all()


def test_registered_and_in_attack_config():
    for name in ("apgd", "apgd-ce", "apgd-t"):
        info = get_attack_info(name)
        assert (info.norm, info.kind, info.extra) == ("Linf", "budget", None)
    cfg = AttackConfig(name="apgd", eps=[0.1])
    assert cfg.steps is None and cfg.restarts == 1 and cfg.settings() == {"name": "apgd", "restarts": 1}
    assert AttackConfig.build("apgd", ["8/255"], n_target_classes=3).options == {"restarts": 1,
                                                                                 "n_target_classes": 3}
    with pytest.raises(ConfigError):
        AttackConfig.build("apgd", [0.1], alpha=0.01)  # APGD's step size is its own


def test_apgd_is_at_least_as_strong_as_its_parts_and_deterministic():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 5))
    x = torch.rand(64, 1, 3, 4, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(eps=0.08, steps=20, n_target_classes=3)
    a = apgd(model, x, y, generator=gen(0), **kw)
    b = apgd(model, x, y, generator=gen(0), **kw)
    assert torch.equal(a, b)
    ce = apgd_ce(model, x, y, eps=0.08, steps=20, generator=gen(0))
    with torch.no_grad():
        f_all, f_ce = model(a).argmax(1) != y, model(ce).argmax(1) != y
    assert (f_all | ~f_ce).all()  # APGD-T runs on the survivors: what APGD-CE fooled stays fooled
    assert f_all.sum() >= f_ce.sum()


@pytest.fixture(scope="module")
def trained4():
    """A small conv net trained on 4-class blobs (8x8), and 1,000 test points."""
    model, xt, yt = train_blobs_model(classes=4, size=8, n_train=2048, n_test=1000, epochs=10)
    return model, xt, yt


def test_apgd_matches_the_official_code_within_half_a_point(trained4):
    pytest.importorskip("pyautoattack")
    model, x, y = trained4
    x, y = x[:500], y[:500]
    eps = 0.08

    def acc(xa):
        with torch.no_grad():
            return float((model(xa).argmax(1) == y).float().mean())

    official = acc(autoattack(model, x, y, eps=eps, version="custom", attacks_to_run=["apgd-ce", "apgd-t"],
                              apgd_n_restarts=1, seed=0))
    ours = acc(apgd(model, x, y, eps=eps, generator=gen(0)))
    assert 0.2 < official < 0.8, "choose eps where the comparison means something"
    assert abs(ours - official) <= 0.005, (ours, official)
