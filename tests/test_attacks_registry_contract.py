"""The attack registry with metadata, the attack contract for every in-house attack, min-norm
results and their helpers, argument checks, and the one-line errors of missing extras."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import robustprune.attacks.adapters as adapters
from robustprune.attacks import (
    ATTACK_INFO,
    ATTACKS,
    AttackInfo,
    MinNormResult,
    autoattack,
    bb_l0,
    cw_l2,
    cw_linf,
    get_attack,
    get_attack_info,
    greedy_l0,
    perturbation_norm,
    pgd_l2,
    robust_accuracy_from_norms,
    security_curve,
)
from robustprune.attacks.results import canonical_norm
from robustprune.errors import ConfigError, RobustPruneError, UnknownNameError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IN_HOUSE = sorted({info.name for info in ATTACK_INFO.values() if info.extra is None})
EXPECTED = {
    "fgsm": ("Linf", "budget", None),
    "pgd": ("Linf", "budget", None),
    "pgd-linf": ("Linf", "budget", None),
    "pgd-l2": ("L2", "budget", None),
    "cw-linf": ("Linf", "budget", None),
    "cw-l2": ("L2", "min-norm", None),
    "l0": ("L0", "min-norm", None),
    "autoattack": ("Linf", "budget", "autoattack"),
    "bb-l0": ("L0", "min-norm", "foolbox"),
    "apgd-ce": ("Linf", "budget", None),
    "apgd-t": ("Linf", "budget", None),
    "apgd": ("Linf", "budget", None),
    "fmn-linf": ("Linf", "min-norm", None),
    "fmn": ("Linf", "min-norm", None),
    "min-norm-linf": ("Linf", "min-norm", None),
    "min-norm": ("Linf", "min-norm", None),
}
# cheap settings per attack for the contract tests
CHEAP = {
    "fgsm": dict(eps=0.1),
    "pgd": dict(eps=0.1, steps=3, restarts=2),
    "pgd-l2": dict(eps=0.3, steps=3, restarts=2),
    "cw-linf": dict(eps=0.1, steps=3, restarts=2),
    "cw-l2": dict(steps=10, binary_search_steps=2),
    "l0": dict(steps=10),
    "apgd-ce": dict(eps=0.1, steps=5, restarts=2),
    "apgd-t": dict(eps=0.1, steps=5, n_target_classes=2),
    "apgd": dict(eps=0.1, steps=5, n_target_classes=2),
    "fmn-linf": dict(steps=20),
    "min-norm-linf": dict(eps_max=0.3, steps=5, n_target_classes=2, search_steps=3, search_iter=3),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def relu_net(d_in: int = 12, hidden: int = 32, classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def conv_net(c: int = 3, hw: int = 4, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(c, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * hw * hw, classes)
    )


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.1),
        nn.Flatten(), nn.Linear(4 * 3 * 4, 5),
    )


def norm_of(info: AttackInfo, x, x_adv):
    return perturbation_norm(x, x_adv, info.norm)


# --------------------------------------------------------------------------- registry
def test_attack_info_table():
    assert set(EXPECTED) <= set(ATTACK_INFO)
    for name, (norm, kind, extra) in EXPECTED.items():
        info = get_attack_info(name)
        assert (info.norm, info.kind, info.extra) == (norm, kind, extra), name
        assert ATTACKS.get(name) is info.fn
        assert ATTACK_INFO[name.upper()] is info  # case-insensitive
    assert get_attack_info("pgd-linf") is get_attack_info("pgd")
    assert get_attack_info("pgd-linf").name == "pgd"
    assert set(ATTACKS.names()) == set(ATTACK_INFO)
    assert get_attack("cw-linf") is cw_linf and get_attack("pgd-l2") is pgd_l2
    assert get_attack("cw-l2") is cw_l2 and get_attack("l0") is greedy_l0
    assert get_attack("autoattack") is autoattack and get_attack("bb-l0") is bb_l0
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_attack_info("pgd").norm = "L2"  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(AttackInfo)] == ["name", "fn", "norm", "kind", "extra"]


def test_unknown_attack_name():
    with pytest.raises(UnknownNameError, match="choose one of"):
        get_attack_info("nope")
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError: dict-like
        ATTACK_INFO["nope"]
    assert "nope" not in ATTACK_INFO and ATTACK_INFO.get("nope") is None


# --------------------------------------------------------------------------- contract, all in-house attacks
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", IN_HOUSE)
def test_mode_and_parameter_grads_untouched(name, training):
    model = bn_model()
    model.train(training)
    model[3].eval()
    params = list(model.parameters())
    known = {i: torch.full_like(p, 0.5 + i) for i, p in enumerate(params) if i % 2 == 0}
    for i, p in enumerate(params):
        p.grad = known[i].clone() if i in known else None
    modes = [m.training for m in model.modules()]
    x = torch.rand(6, 1, 3, 4, generator=gen(1))
    x_copy = x.clone()
    y = torch.randint(0, 5, (6,), generator=gen(2))
    get_attack(name)(model, x, y, generator=gen(0), **CHEAP[name])
    assert [m.training for m in model.modules()] == modes
    for i, p in enumerate(params):
        if i in known:
            assert torch.equal(p.grad, known[i])
        else:
            assert p.grad is None
    assert torch.equal(x, x_copy)


@pytest.mark.parametrize("name", IN_HOUSE)
def test_outputs_by_kind_and_under_no_grad(name):
    info = get_attack_info(name)
    model = conv_net()
    x = torch.rand(8, 3, 4, 4, generator=gen(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # one sample misclassified when clean
    with torch.no_grad():
        out = info.fn(model, x, y, generator=gen(0), **CHEAP[name])
    if info.kind == "budget":
        assert isinstance(out, torch.Tensor) and out.shape == x.shape and not out.requires_grad
        assert (norm_of(info, x, out) <= CHEAP[name]["eps"] + 1e-5).all()
        assert out.min() >= 0 and out.max() <= 1
    else:
        assert isinstance(out, MinNormResult) and out.norm == info.norm
        assert out.x_adv.shape == x.shape and not out.x_adv.requires_grad
        assert out.norms.shape == (8,) and out.norms[0] == 0 and torch.equal(out.x_adv[0], x[0])
        with torch.no_grad():
            wrong = model(out.x_adv).argmax(1) != y
        assert torch.equal(wrong, torch.isfinite(out.norms))
        fin = torch.isfinite(out.norms)
        torch.testing.assert_close(out.norms[fin], norm_of(info, x, out.x_adv)[fin])
        assert torch.equal(out.x_adv[~fin], x[~fin])
        assert fin[1:].any(), "found nothing at all"


@pytest.mark.parametrize("name", IN_HOUSE)
def test_every_in_house_attack_takes_eps_and_stays_in_its_ball(name):
    info = get_attack_info(name)
    model = relu_net()
    x = torch.rand(16, 1, 3, 4, generator=gen(4))
    y = torch.randint(0, 5, (16,), generator=gen(5))
    eps = {"Linf": 0.1, "L2": 0.4, "L0": 2}[info.norm]
    kw = {**CHEAP[name], "eps": eps}
    x_adv = info.fn(model, x, y, generator=gen(0), **kw)
    assert isinstance(x_adv, torch.Tensor) and x_adv.shape == x.shape
    assert (norm_of(info, x, x_adv) <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@settings(max_examples=25, deadline=None)
@given(
    eps=st.floats(0.0, 3.0),
    n=st.integers(1, 4),
    c=st.integers(1, 3),
    hw=st.integers(2, 4),
    attack=st.sampled_from(["pgd-l2", "pgd-l2-cw", "pgd-l2-dlr", "cw-linf", "cw-l2", "l0", "l0-element"]),
    seed=st.integers(0, 2**16),
)
def test_feasibility_property(eps, n, c, hw, attack, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * hw * hw, 3))
    g = gen(seed)
    x = torch.rand(n, c, hw, hw, generator=g)
    x[0].view(-1)[0] = 0.0
    x[-1].view(-1)[-1] = 1.0
    y = torch.randint(0, 3, (n,), generator=g)
    if attack.startswith("pgd-l2"):
        loss = {"pgd-l2": "ce", "pgd-l2-cw": "cw", "pgd-l2-dlr": "dlr"}[attack]
        x_adv = pgd_l2(model, x, y, eps=eps, steps=3, restarts=2, loss=loss, generator=g)
        assert (perturbation_norm(x, x_adv, 2) <= eps * (1 + 1e-5) + 1e-6).all()
    elif attack == "cw-linf":
        e = min(eps, 1.0)
        x_adv = cw_linf(model, x, y, eps=e, steps=3, generator=g)
        assert (perturbation_norm(x, x_adv, "Linf") <= e + 1e-6).all()
    else:
        if attack == "cw-l2":
            res = cw_l2(model, x, y, steps=5, binary_search_steps=2)
            p, unit = "L2", "pixel"
        else:
            unit = "element" if attack == "l0-element" else "pixel"
            res = greedy_l0(model, x, y, steps=5, l0_unit=unit)
            p = "L0"
        x_adv = res.x_adv
        fin = torch.isfinite(res.norms)
        torch.testing.assert_close(res.norms[fin], perturbation_norm(x, x_adv, p, l0_unit=unit)[fin])
        assert ((res.norms >= 0) | ~fin).all()
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1


# --------------------------------------------------------------------------- determinism / cost
@pytest.mark.parametrize("device", DEVICES)
def test_pgd_l2_deterministic_given_generator(device):
    model = relu_net().to(device)
    x = torch.rand(16, 1, 3, 4, generator=gen(5)).to(device)
    y = torch.randint(0, 5, (16,), generator=gen(6)).to(device)

    def run(seed):
        return pgd_l2(model, x, y, eps=0.5, steps=4, restarts=2, generator=gen(seed, device))

    a, b, c = run(123), run(123), run(124)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["cw-l2", "l0"])
def test_min_norm_attacks_are_deterministic(name):
    model = relu_net()
    x = torch.rand(16, 1, 3, 4, generator=gen(5))
    y = torch.randint(0, 5, (16,), generator=gen(6))
    a = get_attack(name)(model, x, y, **CHEAP[name])
    b = get_attack(name)(model, x, y, generator=gen(9), **CHEAP[name])
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.norms, b.norms)


class Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forwards = 0
        self.backwards = 0

    def forward(self, x):
        self.forwards += 1
        if x.requires_grad:
            x.register_hook(self._count)
        return self.inner(x)

    def _count(self, grad):
        self.backwards += 1
        return grad


def test_costs_per_step():
    model = Recorder(relu_net())
    x = torch.rand(4, 1, 3, 4)
    y = torch.randint(0, 5, (4,))
    pgd_l2(model, x, y, eps=0.3, steps=5, restarts=3, generator=gen(0), early_exit=False)
    assert (model.forwards, model.backwards) == (6 * 3 + 1, 5 * 3)  # + the clean point
    model.forwards = model.backwards = 0
    cw_l2(model, x, y, steps=7, binary_search_steps=3)
    assert (model.forwards, model.backwards) == (7 * 3 + 2, 7 * 3)  # + 2 checking forwards
    model.forwards = model.backwards = 0
    greedy_l0(model, x, y, steps=9)
    assert (model.forwards, model.backwards) == (9 + 1 + 2, 9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    model = relu_net().cuda()
    x = torch.rand(8, 1, 3, 4, device="cuda")
    y = torch.randint(0, 5, (8,), device="cuda")
    g = gen(1, "cuda")
    pgd_l2(model, x, y, eps=0.3, steps=2, generator=g)
    greedy_l0(model, x, y, steps=2)
    cw_l2(model, x, y, steps=2, binary_search_steps=1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        pgd_l2(model, x, y, eps=0.3, steps=3, restarts=2, loss="dlr", generator=g, early_exit=False)
        cw_linf(model, x, y, eps=0.1, steps=3, generator=g, early_exit=False)
        greedy_l0(model, x, y, steps=5)
        cw_l2(model, x, y, steps=3, binary_search_steps=2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_min_norm_attacks_on_cuda_match_cpu():
    model = relu_net()
    x = torch.rand(8, 1, 3, 4, generator=gen(3))
    y = torch.randint(0, 5, (8,), generator=gen(4))
    for name in ("cw-l2", "l0"):
        cpu = get_attack(name)(model, x, y, **CHEAP[name])
        gpu = get_attack(name)(model.cuda(), x.cuda(), y.cuda(), **CHEAP[name])
        model.cpu()
        assert gpu.norms.device.type == "cuda"
        assert torch.equal(torch.isfinite(cpu.norms), torch.isfinite(gpu.norms.cpu()))


# --------------------------------------------------------------------------- results helpers
def test_perturbation_norm_units():
    x = torch.zeros(2, 3, 2, 2)
    x_adv = x.clone()
    x_adv[0, :, 0, 0] = 0.5  # one pixel, three channels
    x_adv[1, 0, 0, 0] = 0.25
    x_adv[1, 2, 1, 1] = -0.5
    torch.testing.assert_close(perturbation_norm(x, x_adv, "L0"), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(perturbation_norm(x, x_adv, 0, l0_unit="element"), torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(perturbation_norm(x, x_adv, "Linf"), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(perturbation_norm(x, x_adv, math.inf), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(perturbation_norm(x, x_adv, 2), torch.tensor([math.sqrt(0.75), math.sqrt(0.3125)]))
    flat = torch.zeros(1, 5)
    assert perturbation_norm(flat, flat + 1, "L0").item() == 5  # a flat input: elements are pixels
    assert [canonical_norm(p) for p in ("linf", "L2", 0, 2, math.inf, "l0")] == ["Linf", "L2", "L0", "L2", "Linf", "L0"]
    with pytest.raises(ConfigError):
        perturbation_norm(x, x_adv, "L3")
    with pytest.raises(ConfigError):
        perturbation_norm(x, x_adv, 0, l0_unit="pixels")


def test_robust_accuracy_from_norms_and_curve():
    norms = torch.tensor([0.0, 0.1, 0.2, float("inf")])
    assert robust_accuracy_from_norms(norms, 0.0) == 0.75  # norm 0: misclassified when clean
    assert robust_accuracy_from_norms(norms, 0.1) == 0.5  # a norm equal to ε is within the budget
    assert robust_accuracy_from_norms(norms, 0.15) == 0.5
    assert robust_accuracy_from_norms(norms, 1e9) == 0.25  # inf: never fooled
    assert robust_accuracy_from_norms([0.3, 0.4], 0.35) == 0.5
    assert math.isnan(robust_accuracy_from_norms(torch.tensor([]), 0.1))
    curve = security_curve(norms, [0.0, 0.05, 0.1, 0.2, 1.0])
    accs = [a for _, a in curve]
    assert accs == sorted(accs, reverse=True) and curve[0] == (0.0, 0.75)
    res = MinNormResult(x_adv=torch.zeros(4, 1), norms=norms, norm="L2")
    assert res.robust_accuracy(0.15) == 0.5 and res.security_curve([0.1]) == [(0.1, 0.5)]
    with pytest.raises(ConfigError):
        robust_accuracy_from_norms(norms, -1)


# --------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    "fn,kwargs",
    [
        (pgd_l2, dict(eps=-0.1)), (pgd_l2, dict(eps=float("inf"))), (pgd_l2, dict(eps=0.5, steps=0)),
        (pgd_l2, dict(eps=0.5, alpha=0.0)),
        (cw_linf, dict(eps=2.0)),
        (cw_l2, dict(steps=0)), (cw_l2, dict(binary_search_steps=0)), (cw_l2, dict(lr=0)),
        (cw_l2, dict(initial_const=-1)), (cw_l2, dict(confidence=-1)), (cw_l2, dict(eps=-1)),
        (greedy_l0, dict(l0_unit="pixels")), (greedy_l0, dict(steps=0)),
        (greedy_l0, dict(max_pixels_per_step=0)), (greedy_l0, dict(eps=-2)),
        (autoattack, dict(eps=0.1, version="bogus")), (autoattack, dict(eps=0.1, version="custom")),
        (autoattack, dict(eps=0.1, version="custom", attacks_to_run=["apgd-xx"])),
        (autoattack, dict(eps=0.1, attacks_to_run=["apgd-ce"])), (autoattack, dict(eps=1.5)),
        (autoattack, dict(eps=0.1, norm="L0")),
        (bb_l0, dict(l0_unit="bogus")), (bb_l0, dict(steps=0)), (bb_l0, dict(momentum=1.0)),
    ],
)
def test_bad_arguments_raise_config_error(fn, kwargs):
    model = relu_net()
    x, y = torch.rand(2, 1, 3, 4), torch.tensor([0, 1])
    with pytest.raises(ConfigError):
        fn(model, x, y, **kwargs)


def test_unknown_loss_name():
    with pytest.raises(UnknownNameError):
        pgd_l2(relu_net(), torch.rand(2, 1, 3, 4), torch.tensor([0, 1]), eps=0.5, loss="nope")


def test_eps_zero_returns_clean_point():
    model = relu_net()
    x, y = torch.rand(4, 1, 3, 4), torch.randint(0, 5, (4,))
    assert torch.equal(pgd_l2(model, x, y, eps=0.0, generator=gen(0)), x)
    assert torch.equal(cw_linf(model, x, y, eps=0.0, generator=gen(0)), x)


# --------------------------------------------------------------------------- missing extras
@pytest.mark.parametrize(
    "name,kwargs,module,extra",
    [("autoattack", dict(eps=0.1), "pyautoattack", "autoattack"),
     ("bb-l0", dict(), "foolbox", "foolbox"),
     ("bb-l0", dict(), "numba", "foolbox")],
)
def test_missing_extra_is_a_one_line_error(monkeypatch, name, kwargs, module, extra):
    real = importlib.import_module

    def fake(mod, *a, **k):
        if mod == module:
            raise ModuleNotFoundError(f"No module named {mod!r}")
        return real(mod, *a, **k)

    monkeypatch.setattr(adapters.importlib, "import_module", fake)
    model = relu_net()
    x, y = torch.rand(2, 1, 3, 4), torch.tensor([0, 1])
    with pytest.raises(RobustPruneError) as err:
        get_attack(name)(model, x, y, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and f"pip install 'robustprune[{extra}]'" in msg and name in msg


def test_cw_linf_is_pgd_with_the_cw_loss_and_honours_every_setting():
    model = relu_net()
    x, y = torch.rand(6, 1, 3, 4), torch.randint(0, 5, (6,))
    for alpha in (0.005, 0.04):
        kw = dict(eps=0.1, alpha=alpha, steps=3, restarts=2)
        got = get_attack("cw-linf")(model, x, y, generator=gen(3), **kw)
        want = get_attack("pgd")(model, x, y, loss="cw", generator=gen(3), **kw)
        assert torch.equal(got, want), alpha
