"""Loss surface around data points (Madaan2020 Fig. 5): the loss at ``x + a d_1 + b d_2`` on a grid of ``(a, b)``,
with ``d_1 = sign(grad_x CE(f(x), y))`` (the gradient-sign direction) and ``d_2`` a random sign (Rademacher)
direction, per example; ``a, b`` range over ``[-radius, radius]`` in pixel units. Perturbed inputs are clipped to
[0, 1] (valid images) unless ``clip=False``. The model runs in eval mode; only input gradients are taken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.analysis._plot import pyplot, save_figure
from robustprune.errors import ConfigError
from robustprune.metrics.accuracy import _model_device, eval_mode


@dataclass
class LossSurface:
    """``loss[i, j]`` = mean cross-entropy at ``x + alphas[i] d_sign + betas[j] d_random``."""

    alphas: Tensor
    betas: Tensor
    loss: Tensor
    radius: float
    n_points: int

    def curvature(self) -> float:
        """A scalar summary: max loss on the grid minus the loss at the centre (flatter = smaller)."""
        c = self.loss[len(self.alphas) // 2, len(self.betas) // 2]
        return float(self.loss.max() - c)


def loss_surface(model: nn.Module, x: Tensor, y: Tensor, *, radius: float = 0.1, steps: int = 21,
                 generator: torch.Generator | None = None, clip: bool = True, batch_size: int = 2048) -> LossSurface:
    """The loss surface of ``model`` around ``(x, y)`` (module docstring); ``steps`` grid points per axis."""
    if int(steps) < 2 or not radius > 0:
        raise ConfigError(f"loss_surface needs steps >= 2 and radius > 0, got steps={steps}, radius={radius}")
    dev = _model_device(model, x.device)
    x, y = x.to(dev), y.to(dev)
    with eval_mode(model):
        xg = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
        d1 = grad.sign()
        g = generator if generator is not None and generator.device.type == dev.type else None
        d2 = torch.randint(0, 2, x.shape, generator=g, device=dev).to(x.dtype) * 2 - 1
        a = torch.linspace(-radius, radius, int(steps))
        b = torch.linspace(-radius, radius, int(steps))
        grid = torch.zeros(len(a), len(b), dtype=torch.float64)
        coeffs = [(i, j) for i in range(len(a)) for j in range(len(b))]
        per = max(1, int(batch_size) // max(len(x), 1))
        with torch.no_grad():
            for k in range(0, len(coeffs), per):
                chunk = coeffs[k:k + per]
                xs = torch.cat([x + float(a[i]) * d1 + float(b[j]) * d2 for i, j in chunk])
                if clip:
                    xs = xs.clamp(0, 1)
                ce = F.cross_entropy(model(xs), y.repeat(len(chunk)), reduction="none").view(len(chunk), -1)
                for (i, j), v in zip(chunk, ce.mean(1)):
                    grid[i, j] = float(v)
    return LossSurface(a, b, grid, float(radius), len(x))


def plot_loss_surfaces(surfaces: Mapping[str, LossSurface], path: str | Path, *, title: str | None = None,
                       order: Sequence[str] | None = None) -> Path:
    """One 3-D surface per method (x: gradient-sign direction, y: random direction, z: loss), shared z range."""
    plt = pyplot()
    names = list(order) if order is not None else list(surfaces)
    zmax = max(float(s.loss.max()) for s in surfaces.values())
    fig = plt.figure(figsize=(3.4 * len(names), 3.2))
    for k, name in enumerate(names):
        s = surfaces[name]
        ax = fig.add_subplot(1, len(names), k + 1, projection="3d")
        A, B = torch.meshgrid(s.alphas, s.betas, indexing="ij")
        ax.plot_surface(A.numpy(), B.numpy(), s.loss.numpy(), cmap="viridis", linewidth=0)
        ax.set_zlim(0, zmax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("sign(grad)", fontsize=7)
        ax.set_ylabel("random", fontsize=7)
        ax.tick_params(labelsize=6)
    return save_figure(fig, path, title)
