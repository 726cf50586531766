"""What only a CUDA device can show (skipped without one): PyTorch's CUDA defaults (TF32 on for cuDNN convolutions)
do not leak into checks and measurements, one seed gives the same batches on CUDA as on the CPU, and bf16 training
runs in channels_last there and hands back a model in the default layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import blobs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _lenet(width: float = 0.5) -> nn.Module:
    from robustprune.models import create_model

    torch.manual_seed(0)
    m = create_model("lenet5-caffe", width=width)
    last = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(100)  # logits of a trained model's scale
    return m.eval()


def test_slim_check_passes_under_pytorchs_default_tf32():
    """The main job aborted on an H200 because the slim-vs-masked check compared a TF32 convolution with a 1e-5
    tolerance; the check now computes both sides in strict fp32 whatever the switches say, and leaves them as found."""
    from robustprune.precision import allow_tf32, tf32_state
    from robustprune.sparsity import slim_model, unit_sites
    from robustprune.sparsity.slim.check import EQUIVALENCE_RTOL, check_equivalent

    model = _lenet().cuda()
    g = torch.Generator().manual_seed(3)
    sites = {s.name: s for s in unit_sites(model) if s.supported}
    scales = {n: (torch.rand(s.num_units, generator=g) > 0.4).float() for n, s in sites.items()}
    x = torch.rand(64, 1, 28, 28, generator=g).cuda()
    with allow_tf32(True):
        before = tf32_state()
        res = slim_model(model, scales, example=x)  # checks by default
        diff = check_equivalent(model, res.model, sites, scales, {}, x)
        assert tf32_state() == before
    with torch.no_grad():
        scale = max(1.0, float(model(x).abs().max()))
    assert diff <= EQUIVALENCE_RTOL["fp32"] * scale


def test_fit_gives_the_same_batches_on_cuda_as_on_the_cpu():
    from robustprune.data import Split
    from robustprune.objectives.base import ObjectiveOutput
    from robustprune.train import TrainConfig, fit

    x, y = blobs(96)
    seen: dict[str, list[torch.Tensor]] = {"cpu": [], "cuda": []}
    for dev in ("cpu", "cuda"):
        def objective(model, xb, yb, *, generator=None, dev=dev):
            seen[dev].append(xb.detach().cpu())
            torch.rand(3, generator=generator, device=xb.device)
            out = model(xb)
            return ObjectiveOutput(nn.functional.cross_entropy(out, yb), out)

        model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).to(dev)
        fit(model, objective, Split(x.to(dev), y.to(dev)), None,
            TrainConfig(epochs=2, batch_size=16, seed=7, progress=False, select="last"), augment="crop-flip")
    assert len(seen["cpu"]) == len(seen["cuda"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(seen["cpu"], seen["cuda"]))


def test_bf16_training_on_cuda_is_channels_last_and_returns_the_default_layout():
    from robustprune.data import Split
    from robustprune.objectives import build_objective
    from robustprune.train import TrainConfig, fit

    x, y = blobs(128, shape=(1, 28, 28))
    model = _lenet().cuda()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    formats: set[bool] = set()
    dtypes: set[torch.dtype] = set()

    def hook(_m, args, out):
        if torch.is_grad_enabled() and model.training:
            formats.add(out.is_contiguous(memory_format=torch.channels_last))
            dtypes.add(out.dtype)

    h = conv.register_forward_hook(hook)
    fit(model, build_objective("pgd-at", eps=0.1, steps=2), Split(x.cuda(), y.cuda()), None,
        TrainConfig(epochs=1, batch_size=32, progress=False, select="last", precision="bf16"))
    h.remove()
    assert formats == {True} and dtypes == {torch.bfloat16}
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in model.parameters())


def test_validation_inside_fit_is_strict_fp32_on_cuda():
    """Selection is measured like the final numbers: TF32 off and no autocast, even in a bf16 / tf32 phase."""
    from robustprune.data import Split
    from robustprune.objectives import build_objective
    from robustprune.precision import tf32_enabled
    from robustprune.train import TrainConfig, fit

    x, y = blobs(96, shape=(1, 28, 28))
    model = _lenet().cuda()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    during_eval: list[tuple[dict, torch.dtype]] = []
    h = conv.register_forward_hook(lambda _m, _a, out: during_eval.append((tf32_enabled(), out.dtype))
                                   if not model.training else None)
    fit(model, build_objective("natural"), Split(x.cuda(), y.cuda()), Split(x[:32].cuda(), y[:32].cuda()),
        TrainConfig(epochs=1, batch_size=32, progress=False, select="val_clean", val_size=32, precision="tf32"))
    h.remove()
    assert during_eval and all(t == {"matmul": False, "conv": False} and d == torch.float32 for t, d in during_eval)
