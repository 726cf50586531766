"""Attacks against models whose nearest adversarial point is known in closed form.

Models: a 2-class linear model z = [0, w·x + b]; a 4-class linear model z = Wx + b (its decision
function max_j z_j − z_y is piecewise linear); and a small ReLU net t = |w·x + b| − c
(= relu(u) + relu(−u) − c), whose class flips where |u| crosses c.

Closed forms, when the box [0, 1] does not bind (x is kept in the interior and margins small):
- L2: min_j (z_y − z_j) / ‖w_y − w_j‖₂ (one pair for the binary model: |w·x + b| / ‖w‖₂;
  ||u| − c| / ‖w‖₂ for the ReLU net);
- L∞: the same with ‖·‖₁;
- L0 (the box always binds): per pair, greedy on |Δw_i| · (room to the box in the harmful
  direction), minimised over pairs; with channels, a pixel's contribution is the sum over them.

Stated factors: C&W-L2 lands within 2 % of the L2 optimum (and never below it); the greedy L0
attack is exact on the binary model (elements and pixels) and within +1 pixel of the optimum on
the 4-class model.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import gen
from robustprune.attacks import (
    cw_l2,
    cw_linf,
    fgsm,
    get_attack,
    greedy_l0,
    perturbation_norm,
    pgd_l2,
    pgd_linf,
    robust_accuracy_from_norms,
)
from robustprune.attacks.losses import margin

CW_FACTOR = 1.02


pytestmark = pytest.mark.usefixtures("one_thread")




class BinaryLinear(nn.Module):
    """z = [0, w·x + b]."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(t), t], dim=1)


class AbsNet(nn.Module):
    """z = [0, |w·x + b| − c] written as a ReLU net: Linear(d, 2) -> ReLU -> Linear(2, 1)."""

    def __init__(self, w: torch.Tensor, b: float, c: float) -> None:
        super().__init__()
        self.w, self.b, self.c = w.clone(), b, c
        self.hidden = nn.Linear(w.numel(), 2)
        self.out = nn.Linear(2, 1)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.stack([w, -w]))
            self.hidden.bias.copy_(torch.tensor([b, -b]))
            self.out.weight.fill_(1.0)
            self.out.bias.fill_(-c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.out(torch.relu(self.hidden(x.flatten(1)))).squeeze(1)
        return torch.stack([torch.zeros_like(t), t], dim=1)


def multi_linear(d: int, classes: int = 4, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(d, classes)
    with torch.no_grad():
        lin.weight.mul_(3.0)
    return nn.Sequential(nn.Flatten(), lin)


def weights_of(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    lin = model[1]
    return lin.weight.detach(), lin.bias.detach()


def labels_and_margins(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels = the model's predictions (clean points all correct)."""
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    return y, margin(z, y)


def interior_points(n: int, shape: tuple[int, ...], lo: float, seed: int) -> torch.Tensor:
    return lo + (1 - 2 * lo) * torch.rand(n, *shape, generator=gen(seed))


# --------------------------------------------------------------------------- closed forms
def opt_dist_multi(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """min_{j≠y} (z_y − z_j) / ‖w_y − w_j‖_q, q the dual of p (q = 2 for L2, 1 for L∞)."""
    W, b = weights_of(model)
    z = x.flatten(1) @ W.T + b
    dw = W[y][:, None, :] - W[None, :, :]  # (N, C, d)
    gaps = z.gather(1, y[:, None]) - z
    q = 2 if p == 2 else 1
    dist = gaps / dw.norm(p=q, dim=2).clamp_min(1e-12)
    dist = dist.scatter(1, y[:, None], float("inf"))
    return dist.min(1).values


def opt_l0_pair(xf: torch.Tensor, dw: torch.Tensor, gap: torch.Tensor, channels: int) -> torch.Tensor:
    """Fewest pixels to make dw·x' ≤ dw·x − gap (i.e. lower the gap below 0) within [0, 1].

    ``xf``, ``dw``: (N, C*P) in channel-major order; moving x_i to 0 (dw_i > 0) or to 1 (dw_i < 0)
    lowers the gap by |dw_i| · room_i; a pixel's gain is the sum over its channels.
    """
    room = torch.where(dw > 0, xf, 1 - xf)
    gain = (dw.abs() * room).view(len(xf), channels, -1).sum(1)
    csum = gain.sort(1, descending=True).values.cumsum(1)
    k = (csum < gap[:, None]).sum(1).float() + 1
    return torch.where(csum[:, -1] < gap, torch.full_like(k, float("inf")), k)


def opt_l0_multi(model: nn.Module, x: torch.Tensor, y: torch.Tensor, channels: int = 1) -> torch.Tensor:
    W, b = weights_of(model)
    xf = x.flatten(1)
    z = xf @ W.T + b
    best = torch.full((len(x),), float("inf"))
    for j in range(W.shape[0]):
        dw = W[y] - W[j]  # gap z_y − z_j = dw·x + (b_y − b_j)
        gap = z.gather(1, y[:, None]).squeeze(1) - z[:, j]
        k = opt_l0_pair(xf, dw, gap, channels)
        best = torch.minimum(best, torch.where(y == j, torch.full_like(k, float("inf")), k))
    return best


def binary_setup(n: int = 96, d: int = 16, seed: int = 0, lo: float = 0.25, b: float = 0.0, channels: int = 1):
    g = gen(seed)
    w = torch.randn(channels * d, generator=g)
    w[w.abs() < 0.1] = 0.3
    x = interior_points(n, (channels, 4, d // 4), lo, seed + 1)
    model = BinaryLinear(w, b)
    y, m = labels_and_margins(model, x)
    return model, x, y, m


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


# --------------------------------------------------------------------------- budget attacks
@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_l2_fooled_iff_margin_below_eps_l2_binary(loss, random_start):
    eps = 0.2
    model, x, y, m = binary_setup(n=256, seed=3, lo=eps)  # the ball never leaves the box
    w = model.w.detach()
    opt = m / w.norm()
    must, cannot = opt < eps - 1e-3, opt > eps + 1e-3
    assert must.any() and cannot.any()
    x_adv = pgd_l2(model, x, y, eps=eps, steps=10, loss=loss, random_start=random_start, generator=gen(0))
    ok = accuracy(model, x_adv, y)
    assert (~ok[must]).all() and ok[cannot].all()
    with torch.no_grad():
        m_adv = margin(model(x_adv), y)
    m_star = m - eps * w.norm()  # the closed-form worst margin
    if random_start:  # the random start's orthogonal part shrinks at every projection
        assert (m_adv[cannot] <= m_star[cannot] + 0.1 * eps * w.norm()).all()  # within 10 % of the drop
    else:  # exactly the closed-form worst case x − ε s w/‖w‖
        s = (2 * y - 1).float().view(-1, 1, 1, 1)
        x_star = x - eps * s * (w / w.norm()).view(1, *x.shape[1:])
        torch.testing.assert_close(x_adv[cannot], x_star[cannot], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attack", ["pgd", "cw-linf", "pgd-l2"])
def test_budget_attacks_fool_where_they_must_on_four_class_linear(attack):
    # On a multi-class model the CE / CW gradient follows one class pair at a time, so a point
    # whose nearest boundary is just inside the ball can be missed; below 0.6 ε none may be, and
    # robust accuracy is within 6 points of the closed form's.
    d, n = 12, 200
    model = multi_linear(d, seed=1)
    norm_p = 2 if attack == "pgd-l2" else math.inf
    eps = 0.25 if norm_p == 2 else 0.06
    x = interior_points(n, (1, 3, 4), eps, seed=4)
    y, _ = labels_and_margins(model, x)
    opt = opt_dist_multi(model, x, y, norm_p)
    must, cannot = opt < 0.6 * eps, opt > eps + 1e-4
    assert must.sum() > 10 and cannot.sum() > 10
    x_adv = get_attack(attack)(model, x, y, eps=eps, steps=20, restarts=2, generator=gen(0))
    ok = accuracy(model, x_adv, y)
    assert (~ok[must]).all()
    assert ok[cannot].all()
    assert float(ok.float().mean()) - float((opt > eps).float().mean()) <= 0.06
    assert (perturbation_norm(x, x_adv, norm_p) <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_cw_linf_is_pgd_with_the_cw_loss():
    model = multi_linear(12, seed=2)
    x = torch.rand(32, 1, 3, 4, generator=gen(1))
    y, _ = labels_and_margins(model, x)
    a = cw_linf(model, x, y, eps=0.05, steps=5, restarts=2, generator=gen(3))
    b = pgd_linf(model, x, y, eps=0.05, steps=5, restarts=2, loss="cw", generator=gen(3))
    assert torch.equal(a, b)


def test_fgsm_rs_fools_where_it_must_on_binary_linear():
    # FGSM-RS: start δ0 uniform in [−ε, ε], step 1.25 ε · sign, clip to the ball: every coordinate
    # ends at least 0.25 ε in the harmful direction, so margins below 0.25 ε‖w‖₁ must flip.
    eps = 0.08
    model, x, y, m = binary_setup(n=256, seed=5, lo=eps)
    budget = eps * model.w.detach().abs().sum()
    must, cannot = m < 0.25 * budget - 1e-3, m > budget + 1e-3
    assert must.any() and cannot.any()
    x_adv = fgsm(model, x, y, eps=eps, random_start=True, generator=gen(1))
    ok = accuracy(model, x_adv, y)
    assert (~ok[must]).all() and ok[cannot].all()


# --------------------------------------------------------------------------- C&W-L2
def _check_min_norm_l2(model, x, y, opt, **kw):
    res = cw_l2(model, x, y, **kw)
    assert torch.isfinite(res.norms).all(), "C&W failed on a point it must fool"
    assert (~accuracy(model, res.x_adv, y)).all()
    ratio = res.norms / opt
    assert ratio.min() >= 1 - 1e-4, f"below the optimum? {ratio.min()}"
    assert ratio.max() <= CW_FACTOR, f"C&W norm {ratio.max():.4f} x the optimum"
    torch.testing.assert_close(res.norms, perturbation_norm(x, res.x_adv, 2))
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    return res


# Margins are kept in [0.02, 0.2]: small enough that the box does not bind (x is ≥ 0.3 from it),
# large enough for C&W's resolution (Adam's first steps move each coordinate by about lr).
def test_cw_l2_within_factor_of_optimum_binary_linear():
    model, x, y, m = binary_setup(n=96, seed=6, lo=0.3)
    opt = m / model.w.detach().norm()
    keep = (opt < 0.2) & (opt > 0.02)
    _check_min_norm_l2(model, x[keep], y[keep], opt[keep])


def test_cw_l2_within_factor_of_optimum_four_class_linear():
    model = multi_linear(12, seed=3)
    x = interior_points(160, (1, 3, 4), 0.3, seed=7)
    y, _ = labels_and_margins(model, x)
    opt = opt_dist_multi(model, x, y, 2)
    keep = (opt < 0.2) & (opt > 0.02)
    assert keep.sum() > 20
    _check_min_norm_l2(model, x[keep], y[keep], opt[keep])


def test_cw_l2_within_factor_of_optimum_relu_abs_net():
    g = gen(8)
    w = torch.randn(12, generator=g)
    b, c = -0.5 * float(w.sum()), 0.3  # u = w·(x − 0.5): both classes near x = 0.5
    model = AbsNet(w, b=b, c=c)
    x = interior_points(128, (1, 3, 4), 0.3, seed=9)
    with torch.no_grad():
        u = x.flatten(1) @ w + b
    y = (u.abs() > c).long()
    opt = (u.abs() - c).abs() / w.norm()
    keep = (opt < 0.2) & (opt > 0.02)
    assert (y[keep] == 0).sum() > 5 and (y[keep] == 1).sum() > 5
    _check_min_norm_l2(model, x[keep], y[keep], opt[keep])


def test_cw_l2_security_curve_matches_pgd_l2_on_linear_model():
    model, x, y, m = binary_setup(n=128, seed=10, lo=0.3)
    res = cw_l2(model, x, y)
    for eps in (0.05, 0.1, 0.2):
        x_adv = pgd_l2(model, x, y, eps=eps, steps=10, generator=gen(0))
        pgd_acc = float(accuracy(model, x_adv, y).float().mean())
        assert abs(robust_accuracy_from_norms(res.norms, eps) - pgd_acc) <= 2 / len(x)
    # the budget form of the min-norm attack agrees with its norms
    eps = 0.1
    xe = cw_l2(model, x, y, eps=eps)
    assert float(accuracy(model, xe, y).float().mean()) == pytest.approx(res.robust_accuracy(eps))
    assert torch.equal(xe, res.at_eps(x, eps))
    assert (perturbation_norm(x, xe, 2) <= eps + 1e-6).all()


# --------------------------------------------------------------------------- L0
@pytest.mark.parametrize("channels,unit", [(1, "pixel"), (1, "element"), (3, "pixel"), (3, "element")])
def test_l0_exact_on_binary_linear(channels, unit):
    model, x, y, m = binary_setup(n=96, d=64, seed=11, lo=0.0, b=0.0, channels=channels)
    with torch.no_grad():
        model.b.fill_(0.0)
    s = (2 * y - 1).float()
    dw = s[:, None] * model.w.detach()[None]
    c = channels if unit == "pixel" else 1
    opt = opt_l0_pair(x.flatten(1), dw, m, c)
    res = greedy_l0(model, x, y, l0_unit=unit, steps=60)
    assert torch.isfinite(opt).all() and opt.max() >= 3  # non-trivial
    assert torch.equal(res.norms, opt)
    assert (~accuracy(model, res.x_adv, y)).all()
    torch.testing.assert_close(res.norms, perturbation_norm(x, res.x_adv, 0, l0_unit=unit))


def test_l0_within_one_pixel_on_four_class_linear():
    model = multi_linear(48, seed=4)
    x = torch.rand(96, 1, 6, 8, generator=gen(12))
    y, _ = labels_and_margins(model, x)
    opt = opt_l0_multi(model, x, y)
    res = greedy_l0(model, x, y, steps=60)
    found = torch.isfinite(opt)
    assert found.all() and opt.max() >= 3
    assert (res.norms >= opt).all()
    assert (res.norms <= opt + 1).all(), (res.norms - opt).max()
    assert (res.norms == opt).float().mean() >= 0.9


def test_l0_budget_form_counts_pixels():
    model, x, y, m = binary_setup(n=64, d=64, seed=13, lo=0.0, channels=3)
    res = greedy_l0(model, x, y)
    for k in (1, 2, 4, 8):
        xe = greedy_l0(model, x, y, eps=k)
        changed = perturbation_norm(x, xe, "L0")
        assert (changed <= k).all()
        fooled = ~accuracy(model, xe, y)
        assert torch.equal(fooled, res.norms <= k)
        assert robust_accuracy_from_norms(res.norms, k) == pytest.approx(1 - float(fooled.float().mean()))
