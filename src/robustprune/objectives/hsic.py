"""HSIC and the HSIC bottleneck as a regulariser (HBaR, Wang et al. 2021; Jian2022 Eq. 6-7 and 11).

Kernels (Jian2022 App. B, following HBaR):

* :func:`gaussian_kernel`: ``K_ij = exp(-||z_i - z_j||^2 / (2 s^2))`` with ``s = sigma_scale * sqrt(d)``
  (``sigma_scale = 5``), ``d`` the flattened dimension of ``z``. This is exactly HBaR's code
  (``variance = 2 * sigma^2 * d`` with ``sigma = 5``). Used for the input ``X`` and the hidden ``Z_l``.
* :func:`linear_kernel`: ``K = Y Y^T`` on one-hot labels. Used for ``Y``.

Both are computed batched on the tensors' device: squared distances come from one Gram matrix
(``|a|^2 + |b|^2 - 2 a.b``), never a Python loop, never a copy to the CPU.

Estimators (:func:`hsic`), with ``H = I - 11^T / n`` applied as row/column mean subtraction
(:func:`center`; no ``n x n`` matrix products with ``H``):

* ``normalized=False`` -- the biased empirical HSIC of Gretton et al. 2005 as written in Jian2022
  Eq. 7 and in the HBaR paper: ``HSIC = tr(K_X H K_Y H) / (n - 1)^2``.
* ``normalized=True`` -- the normalised cross-covariance form (NOCCO, Fukumizu et al. 2008) that the
  HBaR and PwoA *codes* actually optimise (``hsic_normalized_cca``):
  ``tr(R_X R_Y)`` with ``R = K~ (K~ + eps n I)^-1``, ``K~ = H K H``, ``eps = 1e-5``. The reference code
  forms ``K H`` and calls ``torch.inverse`` on the CPU; here ``R`` is obtained with one batched
  ``torch.linalg.solve`` (``R = (K~ + eps n I)^-1 K~``: both factors are functions of ``K~``, so they
  commute) in float64, on the device, without forming an inverse. It is scale-free (kernel width and
  batch statistics cancel), which is why the lambda values of Jian2022 Table IX are of order 1e-4:
  with the unnormalised estimator and s = 5 sqrt(d) the HSIC values are ~1e-5 and those lambdas would
  make the term vanish.

:class:`HBaR` uses the normalised form by default (as HBaR/PwoA ran it); pass ``normalized=False``
for the paper's Eq. 7.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.objectives.base import ObjectiveOutput
from robustprune.objectives.standard import OBJECTIVES

#: Jian2022 App. B / HBaR: Gaussian kernel width s = 5 sqrt(d)
DEFAULT_SIGMA_SCALE = 5.0
#: HBaR code's ridge for the normalised estimator (eps * n added to the diagonal)
NOCCO_EPS = 1e-5


# --------------------------------------------------------------------------- kernels
def _flat(z: Tensor) -> Tensor:
    """``(n, ...)`` -> ``(n, d)``; half precision is promoted to float32 (distances need the range)."""
    z = z.reshape(z.shape[0], -1)
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    return z


def squared_distances(z: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``(n, n)`` of the rows of ``z`` (flattened), >= 0."""
    z = _flat(z)
    sq = (z * z).sum(dim=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (z @ z.t())
    return d.clamp_min(0.0)


def kernel_width(d: int, sigma_scale: float = DEFAULT_SIGMA_SCALE) -> float:
    """``s = sigma_scale * sqrt(d)`` (Jian2022 App. B: sigma = 5 sqrt(d))."""
    return float(sigma_scale) * math.sqrt(d)


def gaussian_kernel(z: Tensor, sigma: float | None = None, *, sigma_scale: float = DEFAULT_SIGMA_SCALE) -> Tensor:
    """``exp(-||z_i - z_j||^2 / (2 sigma^2))``; ``sigma`` defaults to ``sigma_scale * sqrt(d)``."""
    z = _flat(z)
    s = kernel_width(z.shape[1], sigma_scale) if sigma is None else float(sigma)
    if not s > 0:
        raise ConfigError(f"kernel width sigma must be > 0, got {s!r}")
    return torch.exp(-squared_distances(z) / (2.0 * s * s))


def one_hot(y: Tensor, num_classes: int | None = None) -> Tensor:
    """Integer labels ``(n,)`` -> float one-hot ``(n, C)``; a 2-D float tensor is returned unchanged."""
    if y.dim() == 2 and y.is_floating_point():
        return y
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.numel() else 1
    return F.one_hot(y.long(), num_classes).float()


def linear_kernel(y: Tensor, num_classes: int | None = None) -> Tensor:
    """``Y Y^T`` on one-hot labels (integer labels are one-hot encoded first) or on any ``(n, d)`` tensor."""
    if y.dim() == 1:
        y = one_hot(y, num_classes)
    y = _flat(y).float() if not y.is_floating_point() else _flat(y)
    return y @ y.t()


# --------------------------------------------------------------------------- estimators
def center(k: Tensor) -> Tensor:
    """``H K H`` for ``H = I - 11^T / n``, batched over leading dims: subtract row and column means,
    add back the grand mean (no products with ``H``)."""
    return k - k.mean(dim=-1, keepdim=True) - k.mean(dim=-2, keepdim=True) + k.mean(dim=(-2, -1), keepdim=True)


def _check_pair(kx: Tensor, ky: Tensor) -> int:
    if kx.shape[-1] != kx.shape[-2] or ky.shape[-1] != ky.shape[-2] or kx.shape[-1] != ky.shape[-1]:
        raise ConfigError(
            f"hsic needs square kernel matrices of the same size, got {tuple(kx.shape)} and {tuple(ky.shape)}"
        )
    n = kx.shape[-1]
    if n < 2:
        raise ConfigError("hsic needs at least 2 samples")
    return n


def nocco_operator(k: Tensor, eps: float = NOCCO_EPS) -> Tensor:
    """``R = K~ (K~ + eps n I)^-1`` with ``K~ = H K H``, via ``linalg.solve`` in float64 (batched)."""
    n = k.shape[-1]
    kc = center(k.double())
    eye = torch.eye(n, dtype=kc.dtype, device=kc.device)
    return torch.linalg.solve(kc + (eps * n) * eye, kc)


def hsic(kx: Tensor, ky: Tensor, *, normalized: bool = False, eps: float = NOCCO_EPS) -> Tensor:
    """HSIC of two kernel matrices ``(..., n, n)`` (leading dims are a batch of pairs).

    ``normalized=False``: ``tr(K_X H K_Y H) / (n - 1)^2`` (Jian2022 Eq. 7), computed as
    ``sum((H K_X H) * K_Y^T) / (n - 1)^2``. ``normalized=True``: ``tr(R_X R_Y)``, the NOCCO form of
    HBaR's code (module docstring). Differentiable in both arguments; invariant to permuting the batch.
    """
    n = _check_pair(kx, ky)
    if normalized:
        rx = nocco_operator(kx, eps)
        ry = nocco_operator(ky, eps)
        out = (rx * ry.transpose(-1, -2)).sum(dim=(-2, -1))
        return out.to(kx.dtype if kx.is_floating_point() else torch.float32)
    return (center(kx) * ky.transpose(-1, -2)).sum(dim=(-2, -1)) / float((n - 1) ** 2)


def hsic_reference(kx: Tensor, ky: Tensor) -> Tensor:
    """Direct ``tr(K H L H) / (n - 1)^2`` with an explicit ``H`` (O(n^3); for tests)."""
    n = kx.shape[-1]
    h = torch.eye(n, dtype=kx.dtype, device=kx.device) - torch.full((n, n), 1.0 / n, dtype=kx.dtype, device=kx.device)
    return torch.trace(kx @ h @ ky @ h) / (n - 1) ** 2


# --------------------------------------------------------------------------- which features
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


def _is_block(m: nn.Module) -> bool:
    from robustprune.models import BasicBlock, PreActBlock

    return isinstance(m, (BasicBlock, PreActBlock)) or (
        isinstance(getattr(m, "shortcut", None), nn.Module) and any(isinstance(c, nn.Conv2d) for c in m.modules())
    )


def default_feature_layers(model: nn.Module) -> list[str]:
    """The hidden representations ``Z_l`` HBaR regularises, as module names (outputs taken by hooks).

    As in the HBaR code: for residual nets, the stem output, every residual block's output and the
    pooled, flattened features (``stem``, ``layer1.0``, ..., ``flatten``); for plain nets, the
    activation after every hidden Conv2d / Linear (every activation module, i.e. all layers but the
    logits). Fallback: the output of every Conv2d / Linear except the last one.
    """
    named = list(model.named_modules())
    blocks = [n for n, m in named if n and _is_block(m)]
    if blocks:
        inside = [n for n in blocks if any(n.startswith(b + ".") for b in blocks)]
        blocks = [b for b in blocks if b not in inside]
        mods = dict(named)
        out = ["stem"] if "stem" in mods else []
        out += blocks
        if "flatten" in mods:
            out.append("flatten")
        return out
    acts = [n for n, m in named if n and isinstance(m, _ACTIVATIONS)]
    if acts:
        return acts
    lin = [n for n, m in named if isinstance(m, (nn.Conv2d, nn.Linear))]
    return lin[:-1]


class FeatureRecorder:
    """Context manager: forward hooks on ``layers`` (and a pre-hook on ``model``) that keep the outputs
    and the input of the *last* forward pass of ``model`` run inside the ``with`` block."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        mods = dict(model.named_modules())
        missing = [n for n in layers if n not in mods]
        if missing:
            raise ConfigError(
                f"HBaR layers not in the model: {', '.join(missing[:5])}; use module names such as "
                f"{', '.join(default_feature_layers(model)[:3]) or 'features.1'}"
            )
        self.model = model
        self.modules = [(n, mods[n]) for n in layers]
        self.inputs: Tensor | None = None
        self.features: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> FeatureRecorder:
        def pre(_m: nn.Module, args: tuple) -> None:
            self.inputs = args[0] if args else None
            self.features = {}

        self._handles.append(self.model.register_forward_pre_hook(pre))
        for name, mod in self.modules:
            def hook(_m: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
                if isinstance(out, Tensor):
                    self.features[name] = out

            self._handles.append(mod.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# --------------------------------------------------------------------------- the objective
def _lam(value: Any, who: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{who} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"{who} must be a finite number >= 0, got {value!r}")
    return v


@OBJECTIVES.register("hbar")
@dataclass
class HBaR:
    """``inner`` loss + ``lambda_x`` sum_l HSIC(X, Z_l) - ``lambda_y`` sum_l HSIC(Y, Z_l) (Jian2022 Eq. 11).

    ``inner``: an objective, a registry name (built without arguments, e.g. ``"natural"``) or a dict
    ``{"name": ..., **kwargs}``. ``layers``: module names whose outputs are the ``Z_l`` (default
    :func:`default_feature_layers`). ``X`` and ``Z_l`` come from the last forward pass of the model
    inside ``inner`` (its training pass: for distillation with a mix ratio that is the mixed batch, as
    in PwoA's code); ``Y`` is the one-hot label (repeated if that pass saw a concatenated batch).
    Gaussian kernels (width ``sigma_scale * sqrt(d)``) for X and Z, a linear kernel for Y; the HSIC
    values of all layers are computed in one batched call on the device. ``normalized``: see the
    module docstring (default True, as HBaR's and PwoA's code).
    """

    inner: Any = "natural"
    lambda_x: float = 4e-4  # Jian2022 Table IX, MNIST
    lambda_y: float = 1e-4
    layers: Sequence[str] | None = None
    sigma_scale: float = DEFAULT_SIGMA_SCALE
    normalized: bool = True
    last: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from robustprune.objectives.standard import build_objective

        if isinstance(self.inner, str):
            if self.inner.lower() == "hbar":
                raise ConfigError("hbar cannot wrap itself; give an inner objective such as 'natural' or 'distill'")
            self.inner = build_objective(self.inner)
        elif isinstance(self.inner, dict):
            kw = dict(self.inner)
            name = kw.pop("name", None)
            if not name:
                raise ConfigError("hbar inner given as a dict needs a 'name' key, e.g. {'name': 'pgd-at', 'eps': 0.1}")
            self.inner = build_objective(name, **kw)
        if not callable(self.inner):
            raise ConfigError(f"hbar inner must be an objective, a name or a dict, got {type(self.inner).__name__}")
        self.lambda_x = _lam(self.lambda_x, "hbar lambda_x")
        self.lambda_y = _lam(self.lambda_y, "hbar lambda_y")
        s = _lam(self.sigma_scale, "hbar sigma_scale")
        if s == 0:
            raise ConfigError("hbar sigma_scale must be > 0 (Jian2022 uses 5)")
        self.sigma_scale = s
        if self.layers is not None:
            if isinstance(self.layers, str):
                self.layers = [self.layers]
            self.layers = [str(n) for n in self.layers]
            if not self.layers:
                raise ConfigError("hbar layers must name at least one module (or be omitted for the default)")
        self.normalized = bool(self.normalized)

    @property
    def full_precision(self) -> bool:
        """Float32 under a bf16 phase when the inner objective needs it (PwoA's distillation does)."""
        return bool(getattr(self.inner, "full_precision", False))

    def terms(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[ObjectiveOutput, Tensor, Tensor]:
        """``(inner output, sum_l HSIC(X, Z_l), sum_l HSIC(Y, Z_l))`` (tensors, with gradients)."""
        layers = list(self.layers) if self.layers is not None else default_feature_layers(model)
        if not layers:
            raise ConfigError("hbar found no hidden layers in the model; pass layers=[module names]")
        with FeatureRecorder(model, layers) as rec:
            out = self.inner(model, x, y, generator=generator)
        feats = [rec.features[n] for n in layers if n in rec.features]
        if not feats or rec.inputs is None:
            raise ConfigError(
                f"hbar saw no outputs of {', '.join(layers[:3])} during the forward pass; check the layer names"
            )
        xin = rec.inputs
        n = xin.shape[0]
        labels = y
        if n != y.shape[0]:
            if n % y.shape[0]:
                raise ConfigError(f"hbar: the training pass saw {n} inputs for {y.shape[0]} labels")
            labels = y.repeat(n // y.shape[0])
        kx = gaussian_kernel(xin.detach(), sigma_scale=self.sigma_scale)
        ky = linear_kernel(labels, out.logits.shape[1]).to(kx.dtype)
        kz = torch.stack([gaussian_kernel(f, sigma_scale=self.sigma_scale) for f in feats])  # (L, n, n)
        ref = torch.stack([kx, ky])  # (2, n, n)
        vals = hsic(kz.unsqueeze(0), ref.unsqueeze(1), normalized=self.normalized)  # (2, L)
        hx, hy = vals[0].sum(), vals[1].sum()
        self.last = {"hsic_x": hx.detach(), "hsic_y": hy.detach()}
        return out, hx, hy

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        out, hx, hy = self.terms(model, x, y, generator=generator)
        loss = out.loss + self.lambda_x * hx - self.lambda_y * hy
        return ObjectiveOutput(loss, out.logits, adv_logits=out.adv_logits)
