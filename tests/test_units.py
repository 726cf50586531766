"""A pruned unit is removed entirely (weights, bias, BatchNorm), stays removed through fine-tuning, counts as gone
in effective FLOPs only then, and the slim model equals the pruned model as it is"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustprune.errors import ConfigError
from robustprune.metrics import flops
from robustprune.models import create_model
from robustprune.sparsity import MaskSet, compute_masks, slim_model, unit_sites


def _lenet_with_biases() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("lenet5-caffe").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(0.1, 0.5)  # positive: a unit left with only its bias emits relu(bias) > 0
    return model


def _x(n: int = 32, c: int = 1, s: int = 28) -> torch.Tensor:
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(5))


def test_filter_pruning_removes_the_bias_of_pruned_filters():
    model = _lenet_with_biases()
    masks = compute_masks(model, group="filter", score="magnitude", scope="local", keep=0.5)
    masks.apply(model)
    conv = model.get_submodule("features.0")  # first conv: 20 filters, 10 pruned
    dead = ~masks["features.0"].flatten(1).any(1)
    assert int(dead.sum()) == 10
    assert bool((conv.bias[dead] == 0).all()) and bool((conv.bias[~dead] != 0).all())
    # the pruned filters' feature maps are exactly zero
    out = {}
    h = conv.register_forward_hook(lambda _m, _i, o: out.update(y=o))
    model(_x(4))
    h.remove()
    assert bool((out["y"][:, dead] == 0).all())


def test_slim_of_a_filter_pruned_model_equals_the_pruned_model():
    model = _lenet_with_biases()
    masks = compute_masks(model, group="filter", score="magnitude", scope="local", keep=0.5)
    masks.apply(model)
    x = _x(64)
    res = slim_model(model, masks=masks, example=x)
    ref = model(x)
    got = res.model.eval()(x)
    assert float((got - ref).abs().max().detach()) < 1e-5
    assert res.units["features.0"] == (10, 20) and res.units["features.3"] == (25, 50)
    # the unit-scale path (scales read off the masks' rows) agrees with the pruned model too
    scales = {n: m.flatten(1).any(1).float() for n, m in masks.masks.items()}
    got2 = slim_model(model, scales).model.eval()(x)
    assert float((got2 - ref).abs().max()) < 1e-5


def test_slim_refuses_units_whose_bias_is_still_alive():
    model = _lenet_with_biases()
    masks = compute_masks(model, group="filter", score="magnitude", scope="local", keep=0.5)
    with torch.no_grad():  # only the weights zeroed, as before the fix: the pruned filters still emit relu(bias)
        for name, m in masks.masks.items():
            model.get_submodule(name).weight.mul_(m)
    with pytest.raises(ConfigError, match="MaskSet.apply") as exc:
        slim_model(model, masks=masks)
    assert "\n" not in str(exc.value)


def _bn_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.2, 0.6)
    return net


def test_masked_fine_tuning_keeps_pruned_units_removed_with_batchnorm():
    net = _bn_net()
    masks = compute_masks(net, group="filter", score="magnitude", scope="local", keep=0.5)
    # as train.loop.fit does: apply, attach, then apply after every optimiser step
    masks.apply(net)
    masks.attach(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(5):
        x = torch.rand(8, 3, 8, 8, generator=g)
        y = torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        for name, bn in (("0", "1"), ("3", "4")):
            dead = ~masks[name].flatten(1).any(1)
            assert bool((net.get_submodule(bn).weight.grad[dead] == 0).all())
            assert bool((net.get_submodule(name).bias.grad[dead] == 0).all())
        opt.step()
        masks.apply(net)
    masks.detach()
    for name, bn in (("0", "1"), ("3", "4")):
        dead = ~masks[name].flatten(1).any(1)
        assert int(dead.sum()) == 4
        for p in (net.get_submodule(name).bias, net.get_submodule(bn).weight, net.get_submodule(bn).bias):
            assert bool((p[dead] == 0).all()) and bool((p[~dead] != 0).all())
    # a removed unit outputs exactly zero after its BatchNorm, in training and eval mode
    seen = {}
    h = net.get_submodule("1").register_forward_hook(lambda _m, _i, o: seen.update(y=o))
    net.eval()(torch.rand(2, 3, 8, 8))
    h.remove()
    assert bool((seen["y"][:, ~masks["0"].flatten(1).any(1)] == 0).all())
    res = slim_model(net, masks=masks, example=torch.rand(4, 3, 8, 8))
    assert res.units == {"0": (4, 8), "3": (4, 8)} and res.max_abs_diff < 1e-5


def test_units_false_masks_weights_only():
    net = _bn_net()
    masks = compute_masks(net, group="filter", score="magnitude", scope="local", keep=0.5)
    plain = MaskSet(masks.masks, units=False)
    before = net.get_submodule("1").bias.detach().clone()
    plain.apply(net)
    assert torch.equal(net.get_submodule("1").bias, before)


def test_effective_flops_count_a_unit_as_gone_only_when_bias_and_norm_are_gone():
    model = _lenet_with_biases()
    masks = compute_masks(model, group="filter", score="magnitude", scope="local", keep=0.5)
    with torch.no_grad():  # weights only: the pruned conv1 filters still feed conv2 with relu(bias)
        for name, m in masks.masks.items():
            model.get_submodule(name).weight.mul_(m)
    half = flops(model, (1, 28, 28))["effective"]
    masks.apply(model)  # now the pruned filters are gone: conv2 no longer multiplies their (zero) maps
    gone = flops(model, (1, 28, 28))["effective"]
    # conv2 (8x8 outputs, 5x5 kernels) reads 10 removed conv1 channels with its 25 kept filters; fc1 (500 outputs)
    # reads 25 removed conv2 channels of 4x4 positions
    assert half - gone == 64 * 25 * 10 * 25 + 500 * 25 * 16
    slim = slim_model(model, masks=masks).model
    assert flops(slim, (1, 28, 28))["dense"] == gone


class FunctionalNet(nn.Module):
    """LeNet-style model written in the functional style (no activation / pooling / flatten modules)."""

    def __init__(self, flatten: str = "view") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 8, 5)
        self.fc1 = nn.Linear(8 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 10)
        self.flatten = flatten

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        if self.flatten == "view":
            x = x.view(x.size(0), -1)
        elif self.flatten == "torch.flatten":
            x = torch.flatten(x, 1)
        elif self.flatten == "reshape":
            x = x.reshape(x.shape[0], -1)
        else:
            x = x.view(-1, 8 * 4 * 4)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


@pytest.mark.parametrize("style", ["view", "torch.flatten", "reshape"])
def test_functional_style_model_has_supported_sites_and_slims_exactly(style):
    torch.manual_seed(0)
    net = FunctionalNet(style).eval()
    x = _x(16)
    sites = {s.name: s for s in unit_sites(net, x)}
    assert set(sites) == {"conv1", "conv2", "fc1"} and all(s.supported for s in sites.values())
    assert (sites["conv1"].consumer, sites["conv2"].consumer, sites["conv2"].positions) == ("conv2", "fc1", 16)
    masks = compute_masks(net, group="filter", score="magnitude", scope="local", keep=0.5)
    masks.apply(net)
    res = slim_model(net, masks=masks, example=x)
    assert res.units == {"conv1": (3, 6), "conv2": (4, 8)}
    assert float((res.model.eval()(x) - net(x)).abs().max()) < 1e-5


class DataDependentNet(FunctionalNet):
    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value: torch.fx cannot trace this
            x = torch.relu(self.conv1(x))
        return self.fc2(torch.relu(self.fc1(F.max_pool2d(torch.relu(self.conv2(x)), 2).view(x.size(0), -1)[:, :128])))


def test_hard_coded_view_size_is_explained():
    net = FunctionalNet("hard-coded").eval()
    sites = {s.name: s for s in unit_sites(net, _x(2))}
    assert sites["conv1"].supported and not sites["conv2"].supported
    assert "torch.flatten(x, 1)" in sites["conv2"].reason


def test_untraceable_functional_model_gets_a_one_line_reason():
    net = DataDependentNet().eval()
    sites = {s.name: s for s in unit_sites(net, _x(2))}
    assert not sites["conv1"].supported
    reason = sites["conv1"].reason
    assert "torch.fx" in reason and "control flow" in reason and "\n" not in reason
    with pytest.raises(ConfigError, match="torch.fx"):
        slim_model(net, {"conv1": torch.ones(6)}, example=_x(2))


def test_kernel_pruning_removes_filters_that_lost_every_kernel():
    model = _lenet_with_biases()
    masks = compute_masks(model, group="kernel", score="magnitude", scope="local", keep=0.02)
    masks.apply(model)
    dead = ~masks["features.3"].flatten(1).any(1)
    assert 0 < int(dead.sum()) < 50
    conv2 = model.get_submodule("features.3")
    assert bool((conv2.bias[dead] == 0).all()) and bool((conv2.bias[~dead] != 0).all())
    x = _x(32)
    res = slim_model(model, masks=masks, example=x)
    assert res.units["features.3"] == (int((~dead).sum()), 50)
    assert float((res.model.eval()(x) - model(x)).abs().max()) < 1e-5


def test_column_pruning_cuts_the_units_no_one_reads():
    model = _lenet_with_biases()
    masks = compute_masks(model, group="column", score="magnitude", scope="local", keep=0.01)
    masks.apply(model)
    read = masks["features.3"].transpose(0, 1).flatten(1).any(1)  # conv1 channels conv2 still reads
    assert 0 < int(read.sum()) < 20
    x = _x(32)
    res = slim_model(model, masks=masks, example=x)
    assert res.units["features.0"] == (int(read.sum()), 20)
    assert float((res.model.eval()(x) - model(x)).abs().max()) < 1e-5


def test_fold_unit_scales_leaves_removed_units_entirely_zero():
    from robustprune.sparsity import fold_unit_scales

    net = _bn_net()
    net.arch_config = {"in_channels": 3, "input_size": 8}
    scales = {"0": torch.tensor([1.0, 0, 0.5, 0, 1, 1, 0, 2]), "3": torch.tensor([0.0, 1, 1, 1, 0, 1, 1, 1])}
    folded, masks = fold_unit_scales(net, scales)
    ms = MaskSet(masks)
    assert ms.unit_masks(folded)  # the removed units have bias / BatchNorm masks ...
    before = {k: v.clone() for k, v in folded.state_dict().items()}
    ms.apply(folded)  # ... and applying them changes nothing: fold already removed the units entirely
    assert all(torch.equal(before[k], v) for k, v in folded.state_dict().items())


class BNDataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 26 * 26, 3)
        self.arch_config = {"in_channels": 1, "input_size": 28}

    def forward(self, x):
        if x.mean() > 2:  # never true for [0, 1] inputs; torch.fx cannot trace it
            x = x / 2
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def test_untraceable_model_finds_its_batchnorm_by_a_traced_forward_pass():
    net = BNDataDependent()
    with torch.no_grad():
        net.bn.bias.fill_(0.5)
    mask = torch.ones(4, 1, 3, 3, dtype=torch.bool)
    mask[1] = False
    MaskSet({"conv": mask}).apply(net)
    assert net.bn.weight[1] == 0 and net.bn.bias[1] == 0 and net.conv.bias[1] == 0
    assert bool((net.bn.bias[[0, 2, 3]] == 0.5).all())
