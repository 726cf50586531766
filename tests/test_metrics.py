"""Tests of robustprune.metrics: accuracy, robust accuracy, parameter counts, FLOPs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from robustprune.errors import ConfigError
from robustprune.metrics import (
    accuracy,
    correct_under_attack,
    count_params,
    flops,
    layer_flops,
    predict,
    robust_accuracy,
)


# ---------------------------------------------------------------- FLOPs


def conv_linear():
    """Conv2d(1->2, 3x3) on 1x5x5 -> 2x3x3 -> flatten 18 -> Linear(18->4)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4))


def test_flops_dense_by_hand():
    model = conv_linear()
    # conv: 3x3 outputs per channel, each output of each of 2 channels costs 1*3*3 MACs
    #       -> 9 positions * 18 weights = 162;  linear: 18*4 = 72
    assert flops(model, (1, 5, 5)) == {"dense": 162 + 72, "effective": 162 + 72}
    assert layer_flops(model, (1, 5, 5)) == {
        "0": {"dense": 162, "effective": 162},
        "3": {"dense": 72, "effective": 72},
    }


def test_flops_effective_with_mask_and_with_zeros():
    model = conv_linear()
    conv_mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    conv_mask[0, 0, :, :2] = False  # 6 conv weights pruned
    lin_mask = torch.ones(4, 18, dtype=torch.bool)
    lin_mask[1] = False  # 18 linear weights pruned
    lin_mask[2, :5] = False  # 5 more
    masks = {"0": conv_mask, "3": lin_mask}
    expected = {"dense": 234, "effective": 9 * (18 - 6) + (72 - 23)}
    assert flops(model, (1, 5, 5), masks=masks) == expected
    assert count_params(model)["nonzero_prunable"] == 90  # the model itself is unchanged
    # the same numbers from zeros actually present in the weights
    with torch.no_grad():
        model[0].weight.masked_fill_(~conv_mask, 0)
        model[3].weight.masked_fill_(~lin_mask, 0)
    assert flops(model, (1, 5, 5)) == expected
    # a MaskSet-like object (anything with .masks) works too
    assert flops(model, (1, 5, 5), masks=SimpleNamespace(masks=masks)) == expected


def test_flops_grouped_strided_conv_and_batchnorm_untouched():
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),  # weight (6, 2, 3, 3) = 108
        nn.BatchNorm2d(6),
        nn.Conv2d(6, 2, 1, stride=2),  # 8x8 -> 4x4, weight 12
        nn.Flatten(),
        nn.Linear(32, 3),
    )
    model.train()
    bn_mean = model[1].running_mean.clone()
    f = flops(model, (4, 8, 8))
    # grouped conv: 64 positions * 6 outputs * (2 in/group * 9) = 64 * 108
    assert f["dense"] == 64 * 108 + 16 * 12 + 32 * 3
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert torch.equal(model[1].running_mean, bn_mean)  # dummy pass ran in eval mode
    with pytest.raises(ConfigError):
        flops(model, (4, 0, 8))


def test_flops_reused_module_counted_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x.flatten(1)))

    assert flops(Twice(), (1, 2, 2))["dense"] == 2 * 16


# ---------------------------------------------------------------- parameter counts


def test_count_params():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 4))
    # conv 18 + 2 bias, bn 2 + 2, linear 72 + 4
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    c = count_params(model)
    assert c == {"total": 100, "prunable": 90, "nonzero": 100, "nonzero_prunable": 90}
    with torch.no_grad():
        model[0].weight[0] = 0  # 9
        model[3].weight[:, :3] = 0  # 12
        model[3].bias[0] = 0  # 1 (not prunable, but a zero present)
    c = count_params(model)
    assert c == {"total": 100, "prunable": 90, "nonzero": 78, "nonzero_prunable": 69}
    mask = torch.ones(4, 18, dtype=torch.bool)
    mask[3] = False  # 18 more, 3 of which are already zero
    c = count_params(model, masks={"3": mask})
    assert c["nonzero_prunable"] == 69 - 15 and c["nonzero"] == 78 - 15


def test_count_params_shared_weight_counted_once():
    fc = nn.Linear(3, 3)
    model = nn.Sequential(fc, nn.ReLU(), fc)
    assert count_params(model) == {"total": 12, "prunable": 9, "nonzero": 12, "nonzero_prunable": 9}


# ---------------------------------------------------------------- accuracy


class Identity3(nn.Module):
    """Logits = the first 3 input pixels; has dropout so train/eval mode matters."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3))
        self.drop = nn.Dropout(0.9)

    def forward(self, x):
        return self.drop(self.fc(x.flatten(1)[:, :3]))


def known_data():
    """10 examples, 7 labelled with their argmax class."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 1, 3, generator=g)
    pred = x.flatten(1).argmax(1)
    y = pred.clone()
    y[[1, 4, 8]] = (pred[[1, 4, 8]] + 1) % 3
    return x, y


def test_accuracy_known_predictions_and_forms():
    model = Identity3()
    x, y = known_data()
    model.train()
    model.drop.eval()  # a mixed state must come back exactly as it was
    assert accuracy(model, x, y, batch_size=3) == pytest.approx(0.7)
    assert model.training and not model.drop.training and model.fc.training
    assert accuracy(model, (x, y)) == pytest.approx(0.7)
    assert accuracy(model, SimpleNamespace(x=x, y=y), batch_size=4) == pytest.approx(0.7)
    assert accuracy(model, SimpleNamespace(x=x, y=y), 4) == pytest.approx(0.7)  # contract form
    assert torch.equal(predict(model, x, batch_size=2), x.flatten(1).argmax(1))
    with pytest.raises(ConfigError):
        accuracy(model, x[:0], y[:0])
    with pytest.raises(ConfigError):
        accuracy(model, x, y[:5])


def test_robust_accuracy_identity_attack_equals_clean():
    model = Identity3()
    x, y = known_data()
    model.train()
    seen = []

    def no_attack(m, xb, yb, *, eps, note=None):
        seen.append((m.training, eps, note, len(xb)))
        return xb

    ra = robust_accuracy(model, x, y, no_attack, batch_size=4, eps=0.1, note="k")
    assert ra == pytest.approx(accuracy(model, x, y)) == pytest.approx(0.7)
    assert [s[3] for s in seen] == [4, 4, 2]
    assert all(s[:3] == (False, 0.1, "k") for s in seen)  # eval mode during the attack, kwargs passed
    assert model.training  # restored


def test_robust_accuracy_with_a_real_perturbation():
    model = Identity3()
    x, y = known_data()

    def swap_to_next_class(m, xb, yb, **_):
        # move all mass to class (y + 1) mod 3: every example becomes wrong
        out = torch.zeros_like(xb)
        out.view(len(xb), -1)[torch.arange(len(xb)), (yb + 1) % 3] = 1.0
        return out

    assert robust_accuracy(model, x, y, swap_to_next_class) == 0.0
    correct = correct_under_attack(model, x, y, lambda m, xb, yb: xb, batch_size=3)
    assert correct.dtype == torch.bool and int(correct.sum()) == 7
