"""Shared pieces of the attacks: argument checks, random draws, projection, input gradients.

Everything here is device-agnostic and free of host synchronisation (no ``.item()``, no Python
branches on tensor values), so it can sit inside an attack's step loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from robustprune.attacks.results import MinNormResult, perturbation_norm
from robustprune.errors import ConfigError

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- argument checks
def check_eps(eps: float, name: str = "eps") -> float:
    """ε as a float in [0, 1] (pixel units); 0 is allowed for attacks (returns the clean point)."""
    if isinstance(eps, Tensor):
        if eps.numel() != 1:
            raise ConfigError(f"{name} must be a single number, got a tensor of shape {tuple(eps.shape)}")
        eps = float(eps)
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1] (pixel units), got {eps!r}") from None
    if not math.isfinite(eps) or eps < 0 or eps > 1:
        raise ConfigError(f"{name} must be in [0, 1] (pixel units, e.g. 8/255), got {eps}")
    return eps


def check_positive(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value}")
    return v


def check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        value = int(as_float)
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_inputs(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ConfigError("x must be a floating-point tensor of images in [0, 1]")
    if not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1]:
        raise ConfigError(
            f"y must be a tensor with one entry per sample of x (x has {x.shape[0]}, "
            f"y has shape {tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__})"
        )


# --------------------------------------------------------------------------- randomness
def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    ia = a.index if a.index is not None else torch.cuda.current_device() if a.type == "cuda" else 0
    ib = b.index if b.index is not None else torch.cuda.current_device() if b.type == "cuda" else 0
    return ia == ib


def _draw(kind: str, like: Tensor, generator: torch.Generator | None) -> Tensor:
    fn = torch.rand if kind == "uniform" else torch.randn
    if generator is None:
        return fn(like.shape, device=like.device, dtype=like.dtype)
    if _same_device(generator.device, like.device):
        return fn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    # a generator lives on one device: draw there, then move
    return fn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def rand_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """U[0, 1) shaped like ``x``, drawn from ``generator`` (on its own device if it differs)."""
    return _draw("uniform", x, generator)


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """N(0, 1) shaped like ``x``, drawn from ``generator`` (on its own device if it differs)."""
    return _draw("normal", x, generator)


def uniform_start(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """A uniform random point of the L∞ ε-ball around ``x``, clipped to [0, 1]."""
    delta = (2.0 * rand_like(x, generator) - 1.0) * eps
    return (x + delta).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- projection
def project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Projection onto {‖x_adv − x‖∞ ≤ ε} ∩ [0, 1]^d (both are boxes, so clamping twice is exact)."""
    return torch.clamp(torch.clamp(x_adv, min=x - eps, max=x + eps), 0.0, 1.0)


# --------------------------------------------------------------------------- gradients
def input_grad(
    model: nn.Module, x_adv: Tensor, target: Tensor, loss_fn: LossFn
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward and one input-gradient backward.

    Returns ``(grad, logits, loss)``: ``grad`` is d(Σ_i loss_i)/d x_adv, ``logits`` and the
    per-sample ``loss`` are those of this same forward at ``x_adv`` (detached). The loss is summed over the
    batch, so each sample's gradient is independent of the others. Only ``x_adv`` is
    differentiated (``torch.autograd.grad``): no parameter ``.grad`` is written and the weight
    gradients are not even computed.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss = loss_fn(logits, target)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return grad, logits.detach(), loss.detach()


# --------------------------------------------------------------------------- L2 pieces
def check_radius(eps: float, name: str = "eps") -> float:
    """A budget ≥ 0 with no upper bound (L2 radii in pixel units may exceed 1)."""
    if isinstance(eps, Tensor):
        if eps.numel() != 1:
            raise ConfigError(f"{name} must be a single number, got a tensor of shape {tuple(eps.shape)}")
        eps = float(eps)
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number >= 0 (pixel units), got {eps!r}") from None
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"{name} must be a finite number >= 0 (pixel units), got {eps}")
    return eps


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``(N,)`` tensor viewed as ``(N, 1, ..., 1)`` to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def l2_norms(t: Tensor) -> Tensor:
    """Per-sample L2 norm ``(N,)`` of an ``(N, ...)`` tensor."""
    return t.reshape(t.shape[0], -1).norm(dim=1)


def normalize_l2(t: Tensor, tiny: float = 1e-12) -> Tensor:
    """Each sample of ``t`` scaled to unit L2 norm (a zero sample stays zero)."""
    return t / bcast(l2_norms(t).clamp_min(tiny), t)


def project_l2(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Onto {‖x_adv − x‖₂ ≤ ε}, then clipped to [0, 1].

    Clipping moves every coordinate towards ``x`` (which lies in [0, 1]), so the result stays in
    the ball; it is feasible, though not the exact Euclidean projection onto the intersection.
    """
    delta = x_adv - x
    scale = (eps / l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
    return torch.clamp(x + delta * bcast(scale, delta), 0.0, 1.0)


def uniform_l2_start(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """A uniform random point of the L2 ε-ball around ``x`` (radius ε·U^(1/d)), clipped to [0, 1]."""
    direction = normalize_l2(randn_like(x, generator))
    d = x[0].numel()
    u = rand_like(x.new_empty(x.shape[0]), generator)
    radius = eps * u.pow(1.0 / max(d, 1))
    return (x + direction * bcast(radius, x)).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- misc
def misclassified(logits: Tensor, y: Tensor) -> Tensor:
    """Bool ``(N,)``: the prediction differs from ``y``."""
    return logits.argmax(dim=1) != y


@torch.no_grad()
def finish_min_norm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_found: Tensor,
    found: Tensor,
    *,
    norm: str,
    l0_unit: str = "pixel",
    eps: float | None = None,
) -> MinNormResult | Tensor:
    """Package a minimal-norm attack's answer as a :class:`MinNormResult` (or, with ``eps``, the
    budget attack's ``x_adv``).

    Two no-grad forwards check what is returned: a sample misclassified when clean gets ``x`` and
    norm 0; a found point is kept only if it is misclassified (norm = its actual ‖x_adv − x‖_p);
    anything else gets ``x`` and norm ``inf``. With ``eps`` the result is
    :meth:`MinNormResult.at_eps`: the point where its norm ≤ ε, else ``x``.
    """
    x = x.detach()
    clean_bad = misclassified(model(x), y)
    take = found & ~clean_bad
    x_adv = torch.where(bcast(take, x), x_found.detach(), x)
    ok = misclassified(model(x_adv), y)  # True where clean_bad too, since x_adv = x there
    x_adv = torch.where(bcast(ok, x), x_adv, x)
    norms = perturbation_norm(x, x_adv, norm, l0_unit=l0_unit)
    norms = torch.where(ok, norms, torch.full_like(norms, float("inf")))
    result = MinNormResult(x_adv=x_adv.detach(), norms=norms, norm=norm, l0_unit=l0_unit)
    return result if eps is None else result.at_eps(x, eps)
