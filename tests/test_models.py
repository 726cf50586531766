"""Tests for robustprune.models, parametrised over the whole registry (timm style)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustprune.errors import ConfigError, UnknownNameError
from robustprune.models import MODELS, Normalize, create_model, model_for_dataset, model_names

ALL = model_names()
# Widths that keep the big nets fast in the shape/semantics tests (full size is tested once below).
TEST_WIDTH = {"wrn-34-10": 0.1, "wrn-28-4": 0.25, "vgg16": 0.25, "resnet18": 0.25,
              "preact-resnet18": 0.25, "vgg11": 0.25, "wrn-28-10": 0.1, "wrn-70-16": 0.05,
              "preact-resnet18-rb": 0.25, "resnet18-tv": 0.25, "resnet50-tv": 0.125, "dm-wrn-28-10": 0.1,
              "dm-wrn-34-10": 0.1, "dm-wrn-34-20": 0.05, "dm-wrn-70-16": 0.05, "dm-preact-resnet18": 0.25}
W_NETS = ["lenet-mnist-w", "lenet-cifar-w", "vgg-cifar-w", "resnet18-w"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def build(name: str, **kw) -> nn.Module:
    kw.setdefault("width", TEST_WIDTH.get(name, 1.0))
    return create_model(name, **kw)


def test_registry_lists_all_architectures():
    expected = {
        "lenet5-caffe", "lenet-mnist-w", "lenet-cifar-w", "vgg-cifar-w", "resnet18-w", "vgg16",
        "vgg11", "cnn5", "preact-resnet8", "preact-resnet18", "resnet18", "wrn-28-4", "wrn-34-10",
    }
    assert expected <= set(ALL)
    assert ALL == sorted(ALL)
    for name in ALL:
        assert MODELS.describe(name)  # one-line help for `robustprune list models`


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("chw", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("classes", [10, 100])
def test_output_shape(name, chw, classes):
    c, h, w = chw
    torch.manual_seed(0)
    m = build(name, num_classes=classes, in_channels=c, input_size=h).eval()
    with torch.no_grad():
        out = m(torch.rand(2, c, h, w))
    assert isinstance(out, torch.Tensor)  # logits only, never a tuple
    assert out.shape == (2, classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_first_module_is_normalize_with_buffers(name):
    m = build(name, in_channels=3, input_size=32, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2))
    assert isinstance(m, nn.Sequential)
    first_name, first = next(iter(m.named_children()))
    assert first_name == "normalize" and isinstance(first, Normalize)
    assert isinstance(m[0], Normalize)
    buffers = dict(m.named_buffers())
    assert buffers["normalize.mean"].shape == (1, 3, 1, 1)
    assert buffers["normalize.std"].shape == (1, 3, 1, 1)
    assert "normalize.mean" in m.state_dict()
    assert not any(n.startswith("normalize.") for n, _ in m.named_parameters())


def test_normalize_closed_form():
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    x = torch.rand(4, 3, 5, 6)
    y = Normalize(mean, std)(x)
    for c in range(3):
        torch.testing.assert_close(y[:, c], (x[:, c] - mean[c]) / std[c])
    with pytest.raises(ConfigError):
        Normalize((0.0,), (0.0,))
    with pytest.raises(ConfigError):
        Normalize((0.0, 0.0), (1.0,))


@pytest.mark.parametrize("name", ALL)
def test_mean_std_act_as_input_affine_map(name):
    """model(mean=m, std=s)(x) == model(mean=0, std=1)((x - m) / s) with identical weights."""
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    torch.manual_seed(0)
    a = build(name, in_channels=3, input_size=32, mean=mean, std=std).eval()
    b = build(name, in_channels=3, input_size=32).eval()
    state = {k: v for k, v in a.state_dict().items() if not k.startswith("normalize.")}
    b.load_state_dict(state, strict=False)
    x = torch.rand(2, 3, 32, 32)
    m_t = torch.tensor(mean).view(1, 3, 1, 1)
    s_t = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out_a = a(x)
        out_b = b((x - m_t) / s_t)
        out_plain = b(x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out_a, out_plain)  # changing mean/std changes the output


def test_single_mean_std_broadcast_to_channels():
    m = create_model("lenet-mnist-w", in_channels=3, input_size=32, mean=0.5, std=(0.25,))
    assert m[0].mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert m[0].std.flatten().tolist() == [0.25, 0.25, 0.25]
    with pytest.raises(ConfigError):
        create_model("lenet-mnist-w", in_channels=3, mean=(0.1, 0.2))


def test_lenet5_caffe_parameter_count():
    # conv1 20*1*5*5+20, conv2 50*20*5*5+50, fc1 800*500+500, fc2 500*10+10
    expected = (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
    assert expected == 431_080
    m = create_model("lenet5-caffe", num_classes=10, in_channels=1, input_size=28)
    assert n_params(m) == expected
    assert m.classifier[0].in_features == 800
    assert [type(x).__name__ for x in m.features] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d"]


def _lenet_mnist_expected(w: int, classes: int = 10) -> int:
    c1, c2, f = 2 * w, 4 * w, 64 * w
    return (c1 * 1 * 25 + c1) + (c2 * c1 * 25 + c2) + (196 * w * f + f) + (f * classes + classes)


def test_lenet_mnist_w_exact_counts():
    assert _lenet_mnist_expected(1) == 52 + 204 + 12_608 + 650 == 13_514
    assert _lenet_mnist_expected(2) == 104 + 808 + 50_304 + 1_290 == 52_506
    for w in (1, 2):
        m = create_model("lenet-mnist-w", width=w)
        assert n_params(m) == _lenet_mnist_expected(w)
        assert m.classifier[0].in_features == 196 * w


def test_lenet_cifar_w_flatten_is_400w():
    for w in (1, 2):
        m = create_model("lenet-cifar-w", in_channels=3, input_size=32, width=w)
        assert [lin.out_features for lin in m.classifier if isinstance(lin, nn.Linear)] == [
            120 * w, 84 * w, 10]
        assert m.classifier[0].in_features == 400 * w


def test_vgg_cifar_w_skips_pools_on_small_inputs():
    m28 = create_model("vgg-cifar-w", input_size=28, width=2)
    m32 = create_model("vgg-cifar-w", in_channels=3, input_size=32, width=2)
    pools = lambda m: sum(isinstance(x, nn.MaxPool2d) for x in m.features)  # noqa: E731
    assert pools(m32) == 5 and pools(m28) == 4  # 28 -> 14 -> 7 -> 3 -> 1, 5th pool skipped
    assert m32.classifier[0].in_features == 64
    assert sum(isinstance(x, nn.Conv2d) for x in m32.features) == 13
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m32.features) == 13


def test_resnet18_w_at_16_is_resnet18():
    a = create_model("resnet18-w", in_channels=3, input_size=32, width=16)
    b = create_model("resnet18", in_channels=3, input_size=32)
    assert n_params(a) == n_params(b) == 11_173_962
    assert create_model("resnet18-w", width=1).stem[0].out_channels == 4


def test_known_full_size_counts():
    assert n_params(create_model("vgg16", in_channels=3, input_size=32)) == 14_724_042
    assert n_params(create_model("preact-resnet8", in_channels=3, input_size=32)) == 77_850


def _wrn_expected(depth, k, c_in=3, classes=10):
    n = (depth - 4) // 6
    widths = [16 * k, 32 * k, 64 * k]
    total = c_in * 16 * 9  # stem
    prev = 16
    for stage, w in enumerate(widths):
        for j in range(n):
            cin = prev if j == 0 else w
            stride = 2 if stage > 0 and j == 0 else 1
            total += 2 * cin + cin * w * 9 + 2 * w + w * w * 9  # bn1, conv1, bn2, conv2
            if cin != w or stride != 1:
                total += cin * w  # 1x1 projection shortcut
        prev = w
    return total + 2 * prev + prev * classes + classes  # final bn, fc


def test_wrn_34_10_full_size_once():
    m = create_model("wrn-34-10", in_channels=3, input_size=32).eval()
    assert n_params(m) == _wrn_expected(34, 10) == 46_160_474
    with torch.no_grad():
        assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    assert n_params(create_model("wrn-28-4", in_channels=3, input_size=32)) == _wrn_expected(28, 4)


@pytest.mark.parametrize("name", W_NETS)
def test_width_scales_params_quadratically(name):
    p2 = n_params(create_model(name, in_channels=3, input_size=32, width=2))
    p4 = n_params(create_model(name, in_channels=3, input_size=32, width=4))
    assert 3.0 < p4 / p2 <= 4.0


@pytest.mark.parametrize("name", sorted(set(ALL) - set(W_NETS)))
def test_width_scales_other_nets(name):
    p1 = n_params(create_model(name, in_channels=3, input_size=32, width=0.125))
    p2 = n_params(create_model(name, in_channels=3, input_size=32, width=0.25))
    assert 2.5 < p2 / p1 <= 4.0


@pytest.mark.parametrize("name", ALL)
def test_eval_is_deterministic_and_grads_reach_input(name):
    torch.manual_seed(0)
    m = build(name, in_channels=3, input_size=32).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out1 = m(x)
    out2 = m(x)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(out1, torch.tensor([1, 2])), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_train_mode_forward_backward(name):
    torch.manual_seed(0)
    m = build(name, in_channels=1, input_size=28).train()
    out = m(torch.rand(2, 1, 28, 28))
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("name", ALL)
def test_seeded_construction_is_reproducible(name):
    torch.manual_seed(3)
    a = build(name)
    torch.manual_seed(3)
    b = build(name)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_readable_module_names():
    m = create_model("lenet5-caffe")
    names = dict(m.named_modules())
    assert isinstance(names["features.0"], nn.Conv2d)
    assert isinstance(names["classifier.2"], nn.Linear)
    r = dict(create_model("resnet18", width=0.125).named_modules())
    assert isinstance(r["layer2.0.conv1"], nn.Conv2d) and isinstance(r["layer2.0.shortcut.0"], nn.Conv2d)
    assert isinstance(r["fc"], nn.Linear) and isinstance(r["stem.0"], nn.Conv2d)
    p = dict(create_model("preact-resnet8").named_modules())
    assert isinstance(p["final.0"], nn.BatchNorm2d)


def test_no_inplace_relu():
    for name in ALL:
        for mod in build(name).modules():
            if isinstance(mod, nn.ReLU):
                assert not mod.inplace, name


def test_other_input_sizes():
    for name in ("lenet5-caffe", "cnn5", "vgg-cifar-w", "preact-resnet8", "lenet-cifar-w"):
        m = create_model(name, in_channels=3, input_size=64, num_classes=7).eval()
        with torch.no_grad():
            assert m(torch.rand(1, 3, 64, 64)).shape == (1, 7)
    m = create_model("resnet18-w", in_channels=3, input_size=8).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 8, 8)).shape == (1, 10)
    m = create_model("lenet5-caffe", in_channels=1, input_size=(28, 40)).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 1, 28, 40)).shape == (1, 10)


def test_unknown_name_and_bad_arguments():
    with pytest.raises(UnknownNameError, match="lenet5-caffe"):
        create_model("no-such-net")
    with pytest.raises(ConfigError):
        create_model("lenet5-caffe", input_size=8)  # conv stack leaves nothing
    with pytest.raises(ConfigError):
        create_model("lenet5-caffe", num_classes=0)
    with pytest.raises(ConfigError):
        create_model("lenet5-caffe", width=0)
    with pytest.raises(ConfigError):
        create_model("lenet5-caffe", in_channels=0)
    with pytest.raises(ConfigError):
        create_model("lenet5-caffe", std=(0.0,))


def test_name_lookup_is_case_insensitive_and_config_recorded():
    m = create_model("LeNet-MNIST-W", width=2, num_classes=5)
    assert m.arch_config["name"] == "lenet-mnist-w"
    assert m.arch_config["width"] == 2.0 and m.arch_config["num_classes"] == 5
    clone = create_model(**m.arch_config)
    assert n_params(clone) == n_params(m)


@dataclass(frozen=True)
class _Spec:
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def test_model_for_dataset():
    spec = _Spec((3, 32, 32), 100, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    m = model_for_dataset("preact-resnet8", spec, width=0.5).eval()
    assert m[0].mean.flatten().tolist() == pytest.approx(spec.mean)
    assert m[0].std.flatten().tolist() == pytest.approx(spec.std)
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    m = model_for_dataset("lenet-mnist-w", _Spec((1, 28, 28), 10, (0.1307,), (0.3081,)))
    assert n_params(m) == 13_514
