"""Physical removal of pruned units: the slim dense model computes exactly what the masked model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustprune.errors import ConfigError
from robustprune.methods import insert_gates
from robustprune.metrics import activation_memory, efficiency_report, flops
from robustprune.models import create_model
from robustprune.sparsity import SelectLinear, slim_model, unit_sites
from robustprune.sparsity.slim import masked_forward_hooks

ARCHS = [("lenet5-caffe", 0.5), ("cnn5", 0.25), ("vgg11", 0.125)]


def _model(name: str, width: float) -> nn.Module:
    torch.manual_seed(0)
    m = create_model(name, width=width)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.mark.parametrize("name,width", ARCHS)
def test_slim_logits_equal_masked_logits_random_masks(name, width):
    model = _model(name, width)
    g = torch.Generator().manual_seed(1)
    sites = {s.name: s for s in unit_sites(model) if s.supported}
    assert len(sites) == len(unit_sites(model))  # every hidden layer of a sequential net is supported
    scales = {n: (torch.rand(s.num_units, generator=g) > 0.4).float() * torch.rand(s.num_units, generator=g)
              for n, s in sites.items()}
    inputs = {s.consumer: (torch.rand(s.num_units * s.positions, generator=g) > 0.3).float()
              for s in sites.values() if s.positions > 1}
    res = slim_model(model, scales, inputs, check=False)
    x = torch.rand(16, 1, 28, 28, generator=g)
    handles = masked_forward_hooks(model, sites, scales, inputs)
    try:
        ref = model(x)
    finally:
        for h in handles:
            h.remove()
    got = res.model.eval()(x)
    assert torch.allclose(got, ref, atol=1e-5), float((got - ref).abs().max())
    # the units really are gone
    for n, s in sites.items():
        kept, total = res.units[n]
        assert total == s.num_units and kept <= int((scales[n] != 0).sum())
        mod = res.model.get_submodule(n)
        assert (mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features) == kept
    assert flops(res.model, (1, 28, 28))["dense"] < flops(model, (1, 28, 28))["dense"]
    assert model(x).shape == got.shape  # the original is untouched


@pytest.mark.parametrize("name,width", ARCHS)
def test_slim_of_gated_model_equals_gated_model(name, width):
    model = _model(name, width)
    gates = insert_gates(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for g in gates.gates:
            g.a_uc.uniform_(-12.0, 2.0)  # a mix of pruned (E[pi] < 1e-3) and kept units with varied scales
            g.b_uc.uniform_(-1.0, 2.0)
    x = torch.rand(12, 1, 28, 28)
    model.eval()
    res = gates.slim()
    assert torch.allclose(res.model.eval()(x), model(x), atol=1e-5)
    assert res.unit_sparsity() > 0
    assert not hasattr(res.model, "rp_gates")
    if name == "lenet5-caffe":  # Appendix-2 style unit counts: conv1-conv2-fc1 inputs-fc1
        assert res.units_string(dense=True) == "10-25-400-250"
        assert isinstance(res.model.classifier[0], SelectLinear)


def test_resnet_prunes_inner_convs_only_and_explains_the_rest():
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125).eval()
    sites = unit_sites(model)
    ok = [s.name for s in sites if s.supported]
    assert ok and all(n.endswith(".conv1") for n in ok)
    blocked = {s.name: s.reason for s in sites if not s.supported}
    assert "residual" in blocked["layer1.0.conv2"]
    with pytest.raises(ConfigError, match="residual"):
        slim_model(model, {"layer1.0.conv2": torch.ones(8)})
    scales = {n: (torch.arange(s.num_units) % 3 != 0).float() for s in sites if s.supported for n in [s.name]}
    res = slim_model(model, scales)  # checks equivalence internally
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-4
    gates = insert_gates(model)
    assert all(i.layer.endswith(".conv1") for i, _ in gates.items())


def test_activation_memory_matches_the_anp_reference_count():
    model = create_model("lenet5-caffe")
    mem = activation_memory(model, (1, 28, 28))
    # hidden feature maps: 20x24x24 + 50x8x8 + 500 (the logits are not hidden)
    assert mem["feature_maps"] == 20 * 24 * 24 + 50 * 8 * 8 + 500
    # ANP code (memory/utils.py, lenet_memory([20, 50, 800, 500])): im2col + kernels + dense weights
    assert mem["anp_code"] == (25 * 576 + 500) + (500 * 64 + 25000) + (800 * 500 + 500) + (500 * 10 + 10)
    rep = efficiency_report(model, model, (1, 28, 28))
    assert rep["xflops"] == 1.0 and rep["memory_pct"] == 100.0 and rep["weight_sparsity"] == 0.0


def test_slim_never_builds_a_zero_width_layer():
    model = _model("lenet5-caffe", 0.5)
    sites = {s.name: s for s in unit_sites(model) if s.supported}
    scales = {n: torch.zeros(s.num_units) for n, s in sites.items()}  # every unit of every layer pruned
    res = slim_model(model, scales)  # checks equivalence internally
    x = torch.rand(4, 1, 28, 28)
    handles = masked_forward_hooks(model, sites, scales, {})
    try:
        ref = model(x)
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(res.model.eval()(x), ref, atol=1e-5)
    for n in sites:
        mod = res.model.get_submodule(n)
        assert (mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features) == 1
    # a conv layer with kept units whose flattened features are all dropped downstream keeps one unit too
    conv = [n for n, s in sites.items() if s.positions > 1][0]
    site = sites[conv]
    res = slim_model(model, {conv: torch.ones(site.num_units)},
                     {site.consumer: torch.zeros(site.num_units * site.positions)})
    assert res.model.get_submodule(conv).out_channels == 1


@pytest.mark.parametrize("name,width", ARCHS)
def test_fold_gates_keeps_the_architecture_and_the_logits(name, width):
    from robustprune.methods import fold_gates
    from robustprune.sparsity import prunable_layers

    model = _model(name, width)
    plain_keys = set(create_model(name, width=width).state_dict())
    gates = insert_gates(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for g in gates.gates:
            g.a_uc.uniform_(-12.0, 2.0)
            g.b_uc.uniform_(-1.0, 2.0)
    x = torch.rand(12, 1, 28, 28)
    model.eval()
    folded, masks = fold_gates(model)
    assert set(folded.state_dict()) == plain_keys  # same architecture, loadable as a plain checkpoint
    assert torch.allclose(folded.eval()(x), model(x), atol=1e-5)
    assert masks and set(masks) <= set(prunable_layers(folded))  # keyed by module, as MaskSet / checkpoints
    for key, mask in masks.items():
        w = folded.get_submodule(key).weight
        assert mask.shape == w.shape
        assert bool((w[~mask] == 0).all())  # a masked-out weight is exactly zero
    scales = gates.output_scales()
    for layer, s in scales.items():
        rows = masks[layer].flatten(1).any(1)
        assert torch.equal(rows, s != 0)  # a removed unit's whole row is masked, a kept one is not


def test_gates_and_slim_on_a_functional_style_model():
    import torch.nn.functional as F

    class Func(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 8, 5)
            self.fc1, self.fc2 = nn.Linear(128, 20), nn.Linear(20, 10)

        def forward(self, x):
            x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.flatten(F.max_pool2d(F.relu(self.conv2(x)), 2), 1)
            return self.fc2(F.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = Func().eval()
    x = torch.rand(12, 1, 28, 28)
    gates = insert_gates(model, example=x)
    assert {i.layer for i, _ in gates.items()} == {"conv1", "conv2", "fc1"}
    torch.manual_seed(3)
    with torch.no_grad():
        for g in gates.gates:
            g.a_uc.uniform_(-12.0, 2.0)
            g.b_uc.uniform_(-1.0, 2.0)
    model.eval()
    res = gates.slim(example=x)
    assert torch.allclose(res.model.eval()(x), model(x), atol=1e-5)
    assert res.unit_sparsity() > 0


def _slim_pair(width: float = 0.5):
    """A masked lenet5-caffe (units scaled by hooks) and its slim copy, with the sites and scales."""
    model = _model("lenet5-caffe", width)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():  # logits of a trained model's scale (about 10), not an untrained one's (0.1)
        last.weight.mul_(100)
        last.bias.mul_(100)
    g = torch.Generator().manual_seed(3)
    sites = {s.name: s for s in unit_sites(model) if s.supported}
    scales = {n: (torch.rand(s.num_units, generator=g) > 0.4).float() for n, s in sites.items()}
    res = slim_model(model, scales, check=False)
    return model, res.model.eval(), sites, scales


def test_slim_check_tolerance_follows_the_precision_of_each_side():
    """One side in bf16 autocast (what a GPU's low-precision path computes) differs from the fp32 reference by far
    more than the strict-fp32 tolerance, yet far less than a wrongly cut network: the check must use the tolerance
    of the precision in effect, and still catch a real structural error at that tolerance."""
    from robustprune.errors import RobustPruneError
    from robustprune.sparsity.slim.check import EQUIVALENCE_RTOL, check_equivalent, equivalence_tolerance

    model, slim, sites, scales = _slim_pair()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    # both sides in strict fp32: equal within the fp32 tolerance (and the caller's autocast does not leak in)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d32 = check_equivalent(model, slim, sites, scales, {}, x)
    assert d32 <= EQUIVALENCE_RTOL["fp32"] * 10
    # the slim side in bf16: refused at the fp32 tolerance, accepted at the bf16 one
    with pytest.raises(RobustPruneError, match="fp32 tolerance"):
        check_equivalent(model, slim, sites, scales, {}, x, atol=equivalence_tolerance("fp32"), precision="bf16",
                         reference_precision="fp32")
    d16 = check_equivalent(model, slim, sites, scales, {}, x, precision="bf16", reference_precision="fp32")
    assert EQUIVALENCE_RTOL["fp32"] < d16 and equivalence_tolerance("bf16", "fp32") == EQUIVALENCE_RTOL["bf16"]
    # a wrong cut (one kept unit of the first layer zeroed in the slim model only) fails even at the bf16 tolerance
    broken = __import__("copy").deepcopy(slim)
    first = next(m for m in broken.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        first.weight[: max(1, first.out_channels // 2)] = 0
        if first.bias is not None:
            first.bias[: max(1, first.out_channels // 2)] = 0
    with pytest.raises(RobustPruneError, match="bf16 vs fp32 tolerance"):
        check_equivalent(model, broken, sites, scales, {}, x, precision="bf16", reference_precision="fp32")


def test_slim_check_ignores_the_callers_tf32_switches():
    """The default check computes in strict fp32 whatever TF32 switches are on (PyTorch's CUDA default turns TF32 on
    for cuDNN convolutions): the switches are restored afterwards."""
    from robustprune.sparsity.slim.check import check_equivalent
    from robustprune.precision import allow_tf32, tf32_state

    model, slim, sites, scales = _slim_pair()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with allow_tf32(True):
        before = tf32_state()
        check_equivalent(model, slim, sites, scales, {}, x)
        assert tf32_state() == before
