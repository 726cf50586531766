"""The equivalence check of a slim or folded model against its reference."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.errors import RobustPruneError
from robustprune.sparsity.slim.trace import UnitSite


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


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(x)
    finally:
        for m, t in flags:
            m.training = t


@torch.no_grad()
def check_equivalent(model: nn.Module, slim: nn.Module, sites: Mapping[str, UnitSite],
                     unit_scales: Mapping[str, Tensor], input_scales: Mapping[str, Tensor], example: Tensor,
                     *, atol: float = 1e-5, n: int = 8, reference: nn.Module | None = None,
                     inputs: Tensor | None = None) -> float:
    """Max |logits(slim) - logits(reference)| (eval mode) on ``inputs`` (real inputs, when given) and ``n`` random
    inputs shaped like ``example``; raises ``RobustPruneError`` above ``atol * max(1, max |logits|)``.

    ``reference``: the model the slim one must equal *as it is* (e.g. the masked checkpoint model). Without it the
    reference is ``model`` with ``unit_scales`` / ``input_scales`` applied by forward hooks (a gated model)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.rand((n, *example.shape[1:]), generator=g).to(example.device, example.dtype)
    if inputs is not None and len(inputs):
        x = torch.cat([inputs[:64].to(x.device, x.dtype), x])
    if reference is not None:
        ref = _logits(reference, x)
        what = "the model's"
    else:
        ref_model = copy.deepcopy(model)
        handles = masked_forward_hooks(ref_model, sites, unit_scales, input_scales)
        try:
            ref = _logits(ref_model, x)
        finally:
            for h in handles:
                h.remove()
        what = "the masked model's"
    got = _logits(slim, x)
    diff = float((got - ref).abs().max())
    tol = atol * max(1.0, float(ref.abs().max()))
    if not diff <= tol:
        raise RobustPruneError(
            f"the slim model's logits differ from {what} by {diff:.3g} (> {tol:.3g}); this model's "
            "structure is not supported for physical removal -- report unit counts from the masks instead"
        )
    return diff
