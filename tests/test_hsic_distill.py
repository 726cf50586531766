"""HSIC (HBaR), Gaussian/linear kernels, the distillation objective and teacher loading (Jian2022)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TinyConvNet, blobs
from robustprune.errors import CheckpointError, ConfigError
from robustprune.objectives import Distillation, HBaR, Natural, build_objective, default_feature_layers, kd_kl
from robustprune.objectives.hsic import (
    center,
    gaussian_kernel,
    hsic,
    hsic_reference,
    kernel_width,
    linear_kernel,
    squared_distances,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _psd(n: int, seed: int, d: int = 5) -> torch.Tensor:
    a = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    return gaussian_kernel(a)


# --------------------------------------------------------------------------- HSIC estimators
@pytest.mark.parametrize("n", [2, 7, 32])
def test_hsic_matches_the_direct_reference(n):
    kx = _psd(n, 0)
    ky = linear_kernel(torch.randint(0, 3, (n,), generator=gen(1)), 3).double()
    assert torch.allclose(hsic(kx, ky), hsic_reference(kx, ky), rtol=1e-10, atol=1e-14)
    # an asymmetric pair too (the trace formula holds for any square matrices)
    a = torch.randn(n, n, generator=gen(2), dtype=torch.float64)
    b = torch.randn(n, n, generator=gen(3), dtype=torch.float64)
    assert torch.allclose(hsic(a, b), hsic_reference(a, b), rtol=1e-10, atol=1e-12)


def test_hsic_is_batched_and_centering_matches_h():
    n = 9
    ks = torch.stack([_psd(n, s) for s in range(4)])
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    assert torch.allclose(center(ks[0]), h @ ks[0] @ h, atol=1e-12)
    ky = _psd(n, 10)
    batched = hsic(ks, ky.expand(4, n, n))
    assert torch.allclose(batched, torch.stack([hsic_reference(k, ky) for k in ks]), atol=1e-14)


@pytest.mark.parametrize("normalized", [False, True])
def test_hsic_is_invariant_to_permuting_the_batch(normalized):
    n = 16
    x = torch.randn(n, 3, 4, generator=gen(0), dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=gen(1))
    perm = torch.randperm(n, generator=gen(2))
    a = hsic(gaussian_kernel(x), linear_kernel(y, 4).double(), normalized=normalized)
    b = hsic(gaussian_kernel(x[perm]), linear_kernel(y[perm], 4).double(), normalized=normalized)
    assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_normalized_hsic_is_hbar_nocco_without_inverse():
    n, eps = 12, 1e-5
    kx, ky = _psd(n, 0), _psd(n, 1)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    rx = (h @ kx @ h) @ torch.linalg.inv(h @ kx @ h + eps * n * torch.eye(n, dtype=torch.float64))
    ry = (h @ ky @ h) @ torch.linalg.inv(h @ ky @ h + eps * n * torch.eye(n, dtype=torch.float64))
    assert torch.allclose(hsic(kx, ky, normalized=True), torch.trace(rx @ ry), rtol=1e-6)


def test_hsic_sees_dependence():
    n = 64
    z = torch.randn(n, 4, generator=gen(0), dtype=torch.float64)
    dep = z + 0.1 * torch.randn(n, 4, generator=gen(1), dtype=torch.float64)
    indep = torch.randn(n, 4, generator=gen(2), dtype=torch.float64)
    kz = gaussian_kernel(z, sigma=2.0)
    assert hsic(kz, gaussian_kernel(dep, sigma=2.0)) > 3 * hsic(kz, gaussian_kernel(indep, sigma=2.0))


# --------------------------------------------------------------------------- kernels
def test_gaussian_kernel_width_is_5_sqrt_d():
    d = 12
    z = torch.zeros(2, 3, 4, dtype=torch.float64)  # d = 12 after flattening
    z[1] = 1.0  # ||z0 - z1||^2 = 12
    s = 5 * math.sqrt(d)
    assert kernel_width(d) == pytest.approx(s)
    k = gaussian_kernel(z)
    assert k[0, 1].item() == pytest.approx(math.exp(-12 / (2 * s * s)))
    assert torch.allclose(torch.diagonal(k), torch.ones(2, dtype=torch.float64))
    assert gaussian_kernel(z, sigma=1.0)[0, 1].item() == pytest.approx(math.exp(-6))
    # HBaR's code writes the same kernel as exp(-D / (2 * 5^2 * d))
    assert k[0, 1].item() == pytest.approx(math.exp(-12 / (2 * 25 * d)))
    x = torch.randn(10, 7, generator=gen(0), dtype=torch.float64)
    assert torch.allclose(squared_distances(x), torch.cdist(x, x) ** 2, atol=1e-10)


def test_linear_kernel_on_one_hot_labels():
    y = torch.tensor([0, 2, 0, 1])
    k = linear_kernel(y, 3)
    assert torch.equal(k, (y[:, None] == y[None, :]).float())


# --------------------------------------------------------------------------- distillation
def test_kl_is_batchmean_and_matches_the_manual_formula():
    n, c, tau = 6, 10, 30.0
    s = torch.randn(n, c, generator=gen(0)) * 20
    t = torch.randn(n, c, generator=gen(1)) * 20
    pt, ps = F.softmax(t / tau, 1), F.softmax(s / tau, 1)
    manual = (pt * (pt.log() - ps.log())).sum() / n
    assert torch.allclose(kd_kl(s, t, tau), manual, rtol=1e-5)
    # PwoA's reduction="mean" divides by n * C instead of n
    with warnings.catch_warnings():  # torch warns that "mean" is not the KL divergence -- that is the point
        warnings.simplefilter("ignore", UserWarning)
        wrong = F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), reduction="mean", log_target=True)
    assert torch.allclose(wrong * c, manual, rtol=1e-5)
    torch.manual_seed(0)
    teacher, student = TinyConvNet(classes=c), TinyConvNet(classes=c)
    x = torch.rand(n, 1, 6, 6, generator=gen(2))
    y = torch.randint(0, c, (n,), generator=gen(3))
    obj = Distillation(teacher, tau=tau, alpha=2.0)
    with torch.no_grad():
        ref = 2.0 * tau * tau * kd_kl(student(x), teacher(x), tau)
    assert torch.allclose(obj(student, x, y).loss, ref, rtol=1e-5)
    obj_ce = Distillation(teacher, tau=tau, alpha=2.0, ce_weight=0.5)
    with torch.no_grad():
        ref_ce = ref + 0.5 * F.cross_entropy(student(x), y)
    assert torch.allclose(obj_ce(student, x, y).loss, ref_ce, rtol=1e-5)


def test_teacher_is_frozen_in_eval_mode_and_student_gets_gradients():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    student = TinyConvNet()
    obj = Distillation(teacher)
    teacher.train()  # someone flips it: the objective still runs it in eval mode
    running = teacher[2].running_mean.clone()
    x, y = blobs(16)
    student.train()
    out = obj(student, x, y)
    out.loss.backward()
    assert torch.equal(teacher[2].running_mean, running)  # eval mode: BN statistics untouched
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    # identical student and teacher: zero distillation loss
    same = Distillation(student)
    assert same(student, x, y).loss.abs().item() < 1e-6


def test_mix_ratio_replaces_the_first_fraction_with_pgd_examples():
    torch.manual_seed(0)
    teacher, student = TinyConvNet(), TinyConvNet()
    x, y = blobs(20)
    obj = Distillation(teacher, mix_ratio=0.25, eps=0.1, steps=3)
    xm = obj.mix(student, x, y, generator=gen(0))
    assert torch.equal(xm[5:], x[5:])
    d = (xm[:5] - x[:5]).abs()
    assert d.max() <= 0.1 + 1e-6 and d.max() > 0.05
    assert obj(student, x, y, generator=gen(0)).loss.requires_grad
    with pytest.raises(ConfigError, match="eps"):
        Distillation(teacher, mix_ratio=0.5)
    with pytest.raises(ConfigError):
        Distillation(teacher, tau=0)
    with pytest.raises(ConfigError):
        Distillation(teacher, mix_ratio=1.5, eps=0.1)


# --------------------------------------------------------------------------- HBaR
def test_hbar_default_layers_follow_hbar():
    assert default_feature_layers(TinyConvNet()) == ["2", "4", "7"]  # activation after every hidden layer
    from robustprune.models import create_model

    r = create_model("preact-resnet8", num_classes=10, in_channels=1, input_size=16)
    names = default_feature_layers(r)
    assert names[0] == "stem" and names[-1] == "flatten"
    assert all(n.startswith("layer") for n in names[1:-1]) and len(names) > 3


@pytest.mark.parametrize("normalized", [False, True])
def test_hbar_adds_the_weighted_hsic_terms(normalized):
    torch.manual_seed(0)
    model = TinyConvNet()
    x, y = blobs(24)
    obj = HBaR(Natural(), lambda_x=0.3, lambda_y=0.7, normalized=normalized)
    out, hx, hy = obj.terms(model, x, y)
    # recompute by hand from hooked features
    feats = {}
    hs = [model[i].register_forward_hook(lambda m, a, o, i=i: feats.__setitem__(i, o)) for i in (2, 4, 7)]
    logits = model(x)
    for h in hs:
        h.remove()
    kx, ky = gaussian_kernel(x), linear_kernel(y, 3)
    ex = sum(hsic(gaussian_kernel(feats[i]), kx, normalized=normalized) for i in (2, 4, 7))
    ey = sum(hsic(gaussian_kernel(feats[i]), ky, normalized=normalized) for i in (2, 4, 7))
    assert torch.allclose(hx, ex, rtol=1e-4) and torch.allclose(hy, ey, rtol=1e-4)
    total = obj(model, x, y).loss
    assert torch.allclose(total, F.cross_entropy(logits, y) + 0.3 * ex - 0.7 * ey, rtol=1e-4)
    total.backward()
    assert model[1].weight.grad is not None and torch.isfinite(model[1].weight.grad).all()
    with pytest.raises(ConfigError, match="not in the model"):
        HBaR(Natural(), layers=["nope"]).terms(model, x, y)


def test_registry_builds_distill_and_hbar(tmp_path):
    from robustprune.checkpoint import save_checkpoint
    from robustprune.models import create_model

    teacher = create_model("lenet-mnist-w", num_classes=10, in_channels=1, input_size=28)
    path = save_checkpoint(tmp_path / "t.safetensors", teacher,
                           meta={"architecture": "lenet-mnist-w", "num_classes": 10, "input_shape": (1, 28, 28)})
    d = build_objective("distill", teacher=str(path), tau=10)
    assert isinstance(d, Distillation) and d.tau == 10 and not d.teacher.training
    h = build_objective("hbar", inner="natural", lambda_x=1e-3, lambda_y=2e-3)
    assert isinstance(h, HBaR) and isinstance(h.inner, Natural)
    h2 = build_objective("hbar", inner={"name": "pgd-at", "eps": 0.1, "steps": 2})
    assert h2.inner.steps == 2
    with pytest.raises(ConfigError):
        build_objective("hbar", lambda_x=-1)


# --------------------------------------------------------------------------- teachers
def test_load_teacher_from_state_dicts_and_refuses_pickles(tmp_path):
    from safetensors.torch import save_file

    from robustprune.checkpoint import save_checkpoint
    from robustprune.data import get_spec
    from robustprune.methods import load_teacher
    from robustprune.models import model_for_dataset

    spec = get_spec("fashion-mnist")
    torch.manual_seed(0)
    src = model_for_dataset("lenet-mnist-w", spec, width=2)
    x = torch.rand(4, 1, 28, 28, generator=gen(0))
    with torch.no_grad():
        want = src(x)
    # a state dict made elsewhere: DataParallel prefix, no normalisation buffers
    foreign = {"module." + k: v.clone() for k, v in src.state_dict().items() if not k.startswith("normalize.")}
    save_file(foreign, str(tmp_path / "foreign.safetensors"))
    t = load_teacher(tmp_path / "foreign.safetensors", "lenet-mnist-w", "fashion-mnist", width=2)
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    with torch.no_grad():
        assert torch.allclose(t(x), want, atol=1e-6)
    t2 = load_teacher(src.state_dict(), "lenet-mnist-w", spec, width=2)
    with torch.no_grad():
        assert torch.allclose(t2(x), want, atol=1e-6)
    ck = save_checkpoint(tmp_path / "ck.safetensors", src, meta={
        "architecture": "lenet-mnist-w", "num_classes": 10, "input_shape": (1, 28, 28), "width": 2,
        "mean": spec.mean, "std": spec.std})
    with torch.no_grad():
        assert torch.allclose(load_teacher(ck)(x), want, atol=1e-6)
    with pytest.raises(CheckpointError, match="architecture"):
        load_teacher(tmp_path / "foreign.safetensors", "lenet-mnist-w", "fashion-mnist", width=1)
    (tmp_path / "m.pt").write_bytes(b"not really")
    with pytest.raises(CheckpointError, match="safetensors") as e:
        load_teacher(tmp_path / "m.pt")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="arch"):
        load_teacher(tmp_path / "foreign.safetensors")


def test_balance_weights_follow_appendix_b_ratios():
    from robustprune.methods.pwoa import balance_weights

    w = balance_weights(distill=2.0, admm=5.0, hsic_x=3.0, hsic_y=4.0, lambda_ratio=(4, 1))
    ld = w["alpha"] * 2.0
    assert 5.0 / ld == pytest.approx(10)  # L_ADMM / L_D = 10
    assert w["lambda_x"] / w["lambda_y"] == pytest.approx(4)
    assert ld / (w["lambda_x"] * 3.0 + w["lambda_y"] * 4.0) == pytest.approx(10)  # L_D / L_H = 10
    w0 = balance_weights(distill=0.0, admm=5.0, hsic_x=3.0, hsic_y=4.0, alpha=7.0)
    assert w0 == {"alpha": 7.0, "lambda_x": None, "lambda_y": None}
