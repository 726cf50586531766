"""Tests for robustprune.attacks: closed forms on linear models, the contract, determinism, cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustprune.attacks import (
    ATTACKS,
    attack_names,
    cw_loss,
    dlr_loss,
    fgsm,
    get_attack,
    get_loss,
    margin,
    pgd_linf,
    pgd_linf_last,
)
from robustprune.errors import ConfigError, UnknownNameError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


class BinaryLinear(nn.Module):
    """Logits z = [0, w·x + b]; the margin of label y is s·(w·x + b) with s = 2y − 1."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(t), t], dim=1)


def closed_form(model: BinaryLinear, x: torch.Tensor, y: torch.Tensor, eps: float):
    """The L∞ worst case x − ε·sign(w)·s clipped to [0, 1], and its margin."""
    s = (2 * y - 1).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    sign_w = model.w.detach().sign().view(1, *x.shape[1:])
    x_star = (x - eps * s * sign_w).clamp(0, 1)
    with torch.no_grad():
        return x_star, margin(model(x_star), y)


def relu_net(d_in: int = 12, hidden: int = 32, classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def linear_setup(n: int = 64, d: int = 16, seed: int = 0, interior: float = 0.0):
    g = gen(seed)
    w = torch.randn(d, generator=g)
    w[w.abs() < 0.05] = 0.3  # every coordinate moves
    x = interior + (1 - 2 * interior) * torch.rand(n, 1, 4, d // 4, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return BinaryLinear(w, 0.1), x, y


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_pgd_reaches_closed_form_on_linear_model(loss, random_start, eps):
    model, x, y = linear_setup(n=128, seed=1)
    x_star, m_star = closed_form(model, x, y, eps)
    x_adv = pgd_linf(model, x, y, eps=eps, steps=12, loss=loss, random_start=random_start, generator=gen(0))
    with torch.no_grad():
        m_adv = margin(model(x_adv), y)
    robust = m_star > 1e-3
    fooled = m_star < -1e-3
    assert robust.any() and fooled.any()
    # not foolable: PGD finds the exact worst case (the clipped corner of the box)
    torch.testing.assert_close(m_adv[robust], m_star[robust], atol=1e-4, rtol=0)
    torch.testing.assert_close(x_adv[robust], x_star[robust], atol=1e-5, rtol=0)
    # foolable: PGD returns a misclassified point
    assert (m_adv[fooled] <= 0).all()


def test_fgsm_reaches_closed_form_when_no_clipping_binds():
    eps = 0.1
    model, x, y = linear_setup(n=128, seed=2, interior=eps)
    x_star, m_star = closed_form(model, x, y, eps)
    x_adv = fgsm(model, x, y, eps=eps)
    with torch.no_grad():
        m_adv = margin(model(x_adv), y)
    torch.testing.assert_close(x_adv, x_star, atol=1e-6, rtol=0)
    torch.testing.assert_close(m_adv, m_star, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_fooled_iff_margin_below_eps_l1(attack):
    eps = 0.08
    model, x, y = linear_setup(n=256, seed=3, interior=eps)
    with torch.no_grad():
        m0 = margin(model(x), y)
    budget = eps * model.w.detach().abs().sum()
    weak = m0 < budget - 1e-3
    strong = m0 > budget + 1e-3
    assert weak.any() and strong.any()
    x_adv = get_attack(attack)(model, x, y, eps=eps, generator=gen(0))
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert (pred[weak] != y[weak]).all()
    assert (pred[strong] == y[strong]).all()


# --------------------------------------------------------------------------- feasibility
@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(0.0, 1.0),
    n=st.integers(1, 5),
    c=st.integers(1, 3),
    hw=st.integers(2, 5),
    attack=st.sampled_from(["fgsm", "fgsm-rs", "pgd", "pgd-cw", "pgd-dlr"]),
    seed=st.integers(0, 2**16),
)
def test_x_adv_stays_in_ball_and_box(eps, n, c, hw, attack, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * hw * hw, 3)
    )
    g = gen(seed)
    x = torch.rand(n, c, hw, hw, generator=g)
    x[0].view(-1)[0] = 0.0  # touch the box edges
    x[-1].view(-1)[-1] = 1.0
    y = torch.randint(0, 3, (n,), generator=g)
    if attack == "fgsm":
        x_adv = fgsm(model, x, y, eps=eps)
    elif attack == "fgsm-rs":
        x_adv = fgsm(model, x, y, eps=eps, random_start=True, generator=g)
    else:
        loss = {"pgd": "ce", "pgd-cw": "cw", "pgd-dlr": "dlr"}[attack]
        x_adv = pgd_linf(model, x, y, eps=eps, steps=3, restarts=2, loss=loss, generator=g)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attack", ["fgsm-rs", "pgd"])
def test_deterministic_given_generator(device, attack):
    model = relu_net().to(device)
    x = torch.rand(16, 1, 3, 4, generator=gen(5)).to(device)
    y = torch.randint(0, 5, (16,), generator=gen(6)).to(device)

    def run(seed):
        g = gen(seed, device)
        if attack == "fgsm-rs":
            return fgsm(model, x, y, eps=0.1, random_start=True, generator=g)
        return pgd_linf(model, x, y, eps=0.1, steps=5, restarts=2, generator=g)

    a, b, c = run(123), run(123), run(124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_with_cuda_inputs():
    model = relu_net().cuda()
    x = torch.rand(8, 1, 3, 4, device="cuda")
    y = torch.randint(0, 5, (8,), device="cuda")
    a = pgd_linf(model, x, y, eps=0.1, steps=3, generator=gen(1, "cpu"))
    b = pgd_linf(model, x, y, eps=0.1, steps=3, generator=gen(1, "cpu"))
    assert a.device == x.device and torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_inside_the_loop_on_cuda():
    model = relu_net().cuda()
    x = torch.rand(8, 1, 3, 4, device="cuda")
    y = torch.randint(0, 5, (8,), device="cuda")
    g = gen(1, "cuda")
    pgd_linf(model, x, y, eps=0.1, steps=2, generator=g)  # warm up
    torch.cuda.set_sync_debug_mode("error")
    try:
        pgd_linf(model, x, y, eps=0.1, steps=3, restarts=2, loss="dlr", generator=g, early_exit=False)
        fgsm(model, x, y, eps=0.1, random_start=True, generator=g)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --------------------------------------------------------------------------- contract
class Recorder(nn.Module):
    """Wraps a model; counts forwards, backwards through it, and the mode seen at each forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forwards = 0
        self.backwards = 0
        self.modes: list[bool] = []

    def forward(self, x):
        self.forwards += 1
        self.modes.append(self.training)
        if x.requires_grad:
            x.register_hook(self._count)
        return self.inner(x)

    def _count(self, grad):
        self.backwards += 1
        return grad


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.1),
        nn.Flatten(), nn.Linear(4 * 3 * 4, 5),
    )


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("attack", ["fgsm", "fgsm-rs", "pgd", "pgd-cw"])
def test_mode_and_parameter_grads_untouched(training, attack):
    model = bn_model()
    model.train(training)
    model[3].eval()  # a submodule in its own mode stays so
    params = list(model.parameters())
    known = {i: torch.full_like(p, 0.5 + i) for i, p in enumerate(params) if i % 2 == 0}
    for i, p in enumerate(params):
        p.grad = known[i].clone() if i in known else None
    modes = [m.training for m in model.modules()]
    x = torch.rand(6, 1, 3, 4)
    y = torch.randint(0, 5, (6,))
    if attack == "fgsm":
        fgsm(model, x, y, eps=0.1)
    elif attack == "fgsm-rs":
        fgsm(model, x, y, eps=0.1, random_start=True, generator=gen(0))
    else:
        pgd_linf(model, x, y, eps=0.1, steps=3, restarts=2, loss=attack[4:] or "ce", generator=gen(0))
    assert [m.training for m in model.modules()] == modes
    for i, p in enumerate(params):
        if i in known:
            assert torch.equal(p.grad, known[i])
        else:
            assert p.grad is None


def test_works_under_no_grad_and_leaves_input_alone():
    model = relu_net()
    x = torch.rand(4, 1, 3, 4)
    x_copy = x.clone()
    y = torch.randint(0, 5, (4,))
    with torch.no_grad():
        x_adv = pgd_linf(model, x, y, eps=0.1, steps=3, generator=gen(0))
    assert torch.equal(x, x_copy) and not x.requires_grad
    assert (x_adv - x).abs().max() > 0


@pytest.mark.parametrize("steps,restarts", [(1, 1), (5, 1), (4, 3)])
def test_pgd_cost_is_one_forward_and_one_input_backward_per_step(steps, restarts):
    model = Recorder(relu_net())
    x = torch.rand(4, 1, 3, 4)
    y = torch.randint(0, 5, (4,))
    pgd_linf(model, x, y, eps=0.1, steps=steps, restarts=restarts, generator=gen(0), early_exit=False)
    assert model.backwards == steps * restarts
    assert model.forwards == (steps + 1) * restarts + 1  # + one final forward per restart + the clean point
    model.forwards = model.backwards = 0
    pgd_linf(model, x, y, eps=0.1, steps=steps, restarts=restarts, generator=gen(0))  # early exit: never more
    assert model.backwards <= steps * restarts and model.forwards <= (steps + 1) * restarts + 1
    model.forwards = model.backwards = 0
    pgd_linf_last(model, x, y, eps=0.1, steps=steps, generator=gen(0))
    assert (model.forwards, model.backwards) == (steps, steps)
    model.forwards = model.backwards = 0
    fgsm(model, x, y, eps=0.1, random_start=True, generator=gen(0))
    assert (model.forwards, model.backwards) == (1, 1)


# --------------------------------------------------------------------------- restarts / strength
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_restarts_never_worse_than_the_first_run(loss):
    model = relu_net(seed=3)
    x = torch.rand(128, 1, 3, 4, generator=gen(7))
    with torch.no_grad():
        y = model(x).argmax(1)  # all clean-correct
    eps = 0.15
    single = pgd_linf(model, x, y, eps=eps, steps=5, restarts=1, loss=loss, generator=gen(11))
    multi = pgd_linf(model, x, y, eps=eps, steps=5, restarts=4, loss=loss, generator=gen(11))
    loss_fn = get_loss(loss)
    with torch.no_grad():
        z1, z4 = model(single), model(multi)
    f1, f4 = z1.argmax(1) != y, z4.argmax(1) != y
    l1, l4 = loss_fn(z1, y), loss_fn(z4, y)
    assert 0 < f1.sum() < len(y)  # a non-trivial case
    assert (f4 | ~f1).all()  # success is never lost
    assert torch.equal(multi[f1], single[f1])  # first success kept
    still = ~f4
    assert (l4[still] >= l1[still] - 1e-6).all()
    assert f4.sum() >= f1.sum()


def test_pgd_at_least_as_strong_as_fgsm_on_relu_net():
    # On a piecewise-linear net PGD is not guaranteed per sample to beat FGSM (it can stall in a
    # linear region), so check what must hold in practice: PGD fools whatever FGSM fools, and its
    # margin is lower on average and for (nearly) every sample it does not fool.
    model = relu_net(seed=4)
    x = torch.rand(256, 1, 3, 4, generator=gen(8))
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.1
    x_f = fgsm(model, x, y, eps=eps)
    x_p = pgd_linf(model, x, y, eps=eps, steps=20, loss="cw", restarts=3, generator=gen(0))
    with torch.no_grad():
        m_f, m_p = margin(model(x_f), y), margin(model(x_p), y)
    fooled_f, fooled_p = m_f < 0, m_p <= 0
    assert fooled_f.any() and (~fooled_p).any()
    assert (fooled_p | ~fooled_f).all()  # whatever FGSM fools, PGD fools
    assert fooled_p.sum() > fooled_f.sum()
    robust = ~fooled_p
    assert m_p[robust].mean() < m_f[robust].mean()
    assert (m_p[robust] <= m_f[robust] + 1e-5).float().mean() >= 0.95


# --------------------------------------------------------------------------- losses / registry / errors
def test_losses():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(cw_loss(z, y), torch.tensor([1.0 - 3.0, 5.0 - 2.0]))
    torch.testing.assert_close(margin(z, y), -cw_loss(z, y))
    # DLR: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-(3.0 - 1.0) / (3.0 - 0.0), -(2.0 - 5.0) / (5.0 - 1.0)]))
    # DLR is shift- and scale-invariant
    torch.testing.assert_close(dlr_loss(2.5 * z + 7, y), dlr_loss(z, y))
    torch.testing.assert_close(get_loss("ce")(z, y), F.cross_entropy(z, y, reduction="none"))
    with pytest.raises(ConfigError):
        dlr_loss(z[:, :2], y)


def test_registry():
    assert {"fgsm", "pgd", "pgd-linf"} <= set(attack_names())
    assert get_attack("pgd") is pgd_linf and get_attack("PGD-Linf") is pgd_linf
    assert get_attack("fgsm") is fgsm
    with pytest.raises(UnknownNameError, match="choose one of"):
        get_attack("nope")
    with pytest.raises(UnknownNameError):
        get_loss("nope")


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_registered_attack_shares_the_signature(name):
    from robustprune.attacks import get_attack_info

    extra = get_attack_info(name).extra
    if extra:  # adapters of optional libraries run only where the extra is installed
        pytest.importorskip({"autoattack": "pyautoattack", "foolbox": "foolbox"}[extra])
    model = relu_net()
    x = torch.rand(3, 1, 3, 4)
    y = torch.randint(0, 5, (3,))
    x_adv = get_attack(name)(model, x, y, eps=0.05, generator=gen(0))
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 0.05 + 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [dict(eps=-0.1), dict(eps=1.5), dict(eps=float("nan")), dict(eps=0.1, steps=0),
     dict(eps=0.1, restarts=0), dict(eps=0.1, alpha=-1.0), dict(eps=0.1, steps=2.5)],
)
def test_bad_arguments_raise_config_error(kwargs):
    model = relu_net()
    x, y = torch.rand(2, 1, 3, 4), torch.tensor([0, 1])
    with pytest.raises(ConfigError):
        pgd_linf(model, x, y, **kwargs)


def test_eps_zero_returns_clean_point():
    model = relu_net()
    x, y = torch.rand(4, 1, 3, 4), torch.randint(0, 5, (4,))
    assert torch.equal(pgd_linf(model, x, y, eps=0.0, generator=gen(0)), x)
    assert torch.equal(fgsm(model, x, y, eps=0.0), x)
