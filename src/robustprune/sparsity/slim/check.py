"""The equivalence check of a slim or folded model against its reference."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError, RobustPruneError
from robustprune.sparsity.slim.trace import UnitSite

EQUIVALENCE_RTOL: dict[str, float] = {"fp64": 1e-9, "fp32": 1e-5, "tf32": 2e-3, "bf16": 1.5e-2}
"""Largest |logits(slim) - logits(reference)| accepted, relative to max(1, max |logits|), per precision of the
computation. fp32 is IEEE float32 (unit roundoff u = 2^-24; 1e-5 leaves ~170 u for the reordered sums of a slim
layer); tf32 rounds the products of matmuls / convolutions to 10 mantissa bits (u = 2^-11 = 4.9e-4; an H200 run of
the main job's ANP model differed by 4.8e-5 relative under cuDNN's default TF32; 2e-3 is 4 u); bf16 keeps 7
(u = 2^-8 = 3.9e-3; a LeNet-5-Caffe under CPU bf16 autocast differed by 2.5e-3 relative; 1.5e-2 is 4 u). A structure
that was cut wrongly moves logits by a fraction of their scale (zeroing half of the first layer's kept units of that
LeNet: 2.7e-2), above every entry."""


def equivalence_tolerance(*precisions: str) -> float:
    """The relative tolerance of a comparison between computations in ``precisions`` (the loosest one)."""
    bad = [p for p in precisions if p not in EQUIVALENCE_RTOL]
    if bad:
        raise ConfigError(f"precision must be one of {', '.join(EQUIVALENCE_RTOL)}, got {bad[0]!r}")
    return max(EQUIVALENCE_RTOL[p] for p in precisions) if precisions else EQUIVALENCE_RTOL["fp32"]


def _precision_context(precision: str, device: torch.device) -> contextlib.ExitStack:
    """Exactly ``precision``, whatever the caller's TF32 switches or autocast state: fp64 / fp32 (TF32 off, no
    autocast), tf32 (TF32 on, no autocast), bf16 (bfloat16 autocast)."""
    from robustprune.precision import allow_tf32

    stack = contextlib.ExitStack()
    stack.enter_context(allow_tf32(precision == "tf32"))
    if precision == "bf16":
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    else:
        stack.enter_context(torch.autocast(device.type, enabled=False))
    return stack


def masked_forward_hooks(model: nn.Module, sites: Mapping[str, UnitSite], unit_scales: Mapping[str, Tensor],
                         input_scales: Mapping[str, Tensor] | None = None) -> list[Any]:
    """Register hooks that apply ``unit_scales`` / ``input_scales`` to ``model`` (the *masked* reference model
    of :func:`slim_model`); returns the handles (call ``.remove()`` on each)."""
    handles = []
    for name, s in unit_scales.items():
        site = sites[name]
        mod = model.get_submodule(site.gate_at)

        def hook(_m, _i, out, s=s):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * s.to(out.device, out.dtype).view(shape)

        handles.append(mod.register_forward_hook(hook))
    for name, t in (input_scales or {}).items():
        mod = model.get_submodule(name)

        def pre(_m, args, t=t):
            return (args[0] * t.to(args[0].device, args[0].dtype).view(1, -1),) + tuple(args[1:])

        handles.append(mod.register_forward_pre_hook(pre))
    return handles


def _logits(model: nn.Module, x: Tensor, precision: str = "fp32") -> Tensor:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if precision == "fp64":
            m64 = copy.deepcopy(model).double()
            return m64(x.double()).double()
        with _precision_context(precision, x.device):
            return model(x).float()
    finally:
        for m, t in flags:
            m.training = t


@torch.no_grad()
def check_equivalent(model: nn.Module, slim: nn.Module, sites: Mapping[str, UnitSite],
                     unit_scales: Mapping[str, Tensor], input_scales: Mapping[str, Tensor], example: Tensor,
                     *, atol: float | None = None, n: int = 8, reference: nn.Module | None = None,
                     inputs: Tensor | None = None, precision: str = "fp32",
                     reference_precision: str | None = None) -> float:
    """Max |logits(slim) - logits(reference)| (eval mode) on ``inputs`` (real inputs, when given) and ``n`` random
    inputs shaped like ``example``; raises ``RobustPruneError`` above ``atol * max(1, max |logits|)``.

    Each side is computed in exactly its precision (``precision`` for the slim model, ``reference_precision``,
    default the same, for the reference; fp64 | fp32 | tf32 | bf16), whatever TF32 switches or autocast the
    caller has on: by default both in strict IEEE fp32, so the verdict does not depend on the device (CUDA leaves
    TF32 on for convolutions by default). ``atol`` None: :func:`equivalence_tolerance` of the two precisions.

    ``reference``: the model the slim one must equal *as it is* (e.g. the masked checkpoint model). Without it the
    reference is ``model`` with ``unit_scales`` / ``input_scales`` applied by forward hooks (a gated model)."""
    ref_precision = precision if reference_precision is None else reference_precision
    tol_rel = equivalence_tolerance(precision, ref_precision) if atol is None else float(atol)
    g = torch.Generator().manual_seed(1234)
    x = torch.rand((n, *example.shape[1:]), generator=g).to(example.device, example.dtype)
    if inputs is not None and len(inputs):
        x = torch.cat([inputs[:64].to(x.device, x.dtype), x])
    if reference is not None:
        ref = _logits(reference, x, ref_precision)
        what = "the model's"
    else:
        ref_model = copy.deepcopy(model)
        handles = masked_forward_hooks(ref_model, sites, unit_scales, input_scales)
        try:
            ref = _logits(ref_model, x, ref_precision)
        finally:
            for h in handles:
                h.remove()
        what = "the masked model's"
    got = _logits(slim, x, precision)
    diff = float((got.double() - ref.double()).abs().max())
    tol = tol_rel * max(1.0, float(ref.abs().max()))
    if not diff <= tol:
        shown = precision if precision == ref_precision else f"{precision} vs {ref_precision}"
        raise RobustPruneError(
            f"the slim model's logits differ from {what} by {diff:.3g} (> {tol:.3g}, the {shown} tolerance); this "
            "model's "
            "structure is not supported for physical removal -- report unit counts from the masks instead"
        )
    return diff
