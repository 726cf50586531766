"""Unit gates: multiplicative masks on the output units of a layer. :class:`UnitGate` is the interface;
:class:`BetaBernoulliGate` the Beta-Bernoulli dropout gate of Lee2019 used by Madaan2020 (see
:mod:`robustprune.methods.bayesian` for the model and its KL); :class:`robustprune.methods.vib.VIBGate` the
information-bottleneck gate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.errors import ConfigError

EULER_GAMMA = 0.5772156649015329
#: attribute under which the gates are stored on the model
GATE_ATTR = "rp_gates"


class UnitGate(nn.Module):
    """A multiplicative mask on ``num_units`` units. Subclasses define :meth:`kl_per_unit`,
    :meth:`test_scale` (deterministic, pruned units exactly 0) and :meth:`sample_scale` (training).

    ``frozen``: the test-time mask is used in training too and the parameters get no gradients (PAT).
    ``generator``: optional ``torch.Generator`` (on the parameters' device) for the training noise.
    ``positions``: elements per unit at the gated site (``H*W`` for a conv map; VIB's KL counts them).
    """

    def __init__(self, num_units: int, positions: int = 1) -> None:
        super().__init__()
        if int(num_units) < 1:
            raise ConfigError(f"a gate needs at least one unit, got {num_units}")
        self.num_units = int(num_units)
        self.positions = int(positions)
        self.frozen = False
        self.generator: torch.Generator | None = None

    # -- to override
    def kl_per_unit(self) -> Tensor:
        raise NotImplementedError

    def test_scale(self) -> Tensor:
        raise NotImplementedError

    def sample_scale(self, batch: int) -> Tensor:
        raise NotImplementedError

    # -- shared
    def kl(self) -> Tensor:
        return self.kl_per_unit().sum()

    @torch.no_grad()
    def keep(self) -> Tensor:
        """Bool mask of the units the test-time mask keeps."""
        return self.test_scale() != 0

    def scale(self, batch: int) -> Tensor:
        """``(batch, units)`` multipliers: sampled in training mode, deterministic otherwise (or when frozen)."""
        if self.training and not self.frozen:
            return self.sample_scale(batch)
        return self.test_scale().unsqueeze(0).expand(batch, -1)

    def gate_tensor(self, x: Tensor, unit_dim: int = 1) -> Tensor:
        """``x`` with unit ``k`` (along ``unit_dim``) multiplied by its mask."""
        if x.shape[unit_dim] != self.num_units:
            raise ConfigError(f"gate for {self.num_units} units applied to a tensor of shape {tuple(x.shape)}")
        z = self.scale(x.shape[0]).to(x.dtype)
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        shape[unit_dim] = self.num_units
        return x * z.reshape(shape)

    def freeze(self, frozen: bool = True) -> None:
        self.frozen = bool(frozen)
        for p in self.parameters():
            p.requires_grad_(not frozen)

    def _uniform(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        g = self.generator
        if g is not None and g.device.type != like.device.type:
            g = None
        return torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)

    def extra_repr(self) -> str:
        return f"units={self.num_units}" + (", frozen" if self.frozen else "")


def keep_at_least_one(keep: Tensor, score: Tensor) -> Tensor:
    """``keep`` (bool per unit), or, when it keeps nothing, only the unit with the largest ``score``.

    The rule of every gate's test-time mask (and the same as magnitude pruning, which keeps at least one group per
    layer): a gated layer keeps at least one unit, so a too strong sparsity pressure (e.g. a large KL scale gamma)
    thins a layer down to its most important unit instead of removing it -- a zero-width layer would cut the
    network and cannot be built by :func:`robustprune.sparsity.slim.slim_model`."""
    if keep.numel() == 0 or bool(keep.any()):
        return keep
    out = torch.zeros_like(keep)
    out[int(torch.argmax(score.detach()))] = True
    return out


def kumaraswamy_beta_kl(a: Tensor, b: Tensor, prior_alpha: float) -> Tensor:
    """Closed-form ``KL[Kumaraswamy(a, b) || Beta(prior_alpha, 1)]`` per element (module docstring)."""
    return ((a - prior_alpha) / a * (-EULER_GAMMA - torch.digamma(b) - 1.0 / b)
            + torch.log(a * b / prior_alpha) - (b - 1.0) / b)


def kumaraswamy_mean(a: Tensor, b: Tensor) -> Tensor:
    """``E[pi] = b B(1 + 1/a, b)`` for ``pi ~ Kumaraswamy(a, b)``."""
    return b * torch.exp(torch.lgamma(1.0 + 1.0 / a) + torch.lgamma(b) - torch.lgamma(1.0 + 1.0 / a + b))


class BetaBernoulliGate(UnitGate):
    """Beta-Bernoulli dropout gate (module docstring). ``alpha`` is the prior's ``alpha/K`` (1e-4),
    ``temperature`` the concrete relaxation's (0.1), ``threshold`` the pruning threshold on ``E[pi]`` (1e-3)."""

    def __init__(self, num_units: int, positions: int = 1, *, alpha: float = 1e-4, a_uc_init: float = -1.0,
                 b_uc_init: float = 0.5413, temperature: float = 0.1, threshold: float = 1e-3) -> None:
        super().__init__(num_units, positions)
        for v, who in ((alpha, "alpha"), (temperature, "temperature")):
            if not (math.isfinite(float(v)) and float(v) > 0):
                raise ConfigError(f"Beta-Bernoulli {who} must be > 0, got {v!r}")
        if not 0 <= float(threshold) < 1:
            raise ConfigError(f"Beta-Bernoulli threshold must be in [0, 1), got {threshold!r}")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.a_uc = nn.Parameter(torch.full((self.num_units,), float(a_uc_init)))
        self.b_uc = nn.Parameter(torch.full((self.num_units,), float(b_uc_init)))

    def ab(self) -> tuple[Tensor, Tensor]:
        """``a = softplus(max(a_uc, -10))``, ``b = softplus(clip(b_uc, -10, 50))`` (the reference clamps)."""
        return F.softplus(self.a_uc.clamp(min=-10.0)), F.softplus(self.b_uc.clamp(-10.0, 50.0))

    def kl_per_unit(self) -> Tensor:
        a, b = self.ab()
        return kumaraswamy_beta_kl(a, b, self.alpha)

    def expected_pi(self) -> Tensor:
        a, b = self.ab()
        return kumaraswamy_mean(a, b)

    def test_scale(self) -> Tensor:
        """``E[pi_k]`` where ``E[pi_k] >= threshold``, else 0 -- but never 0 for every unit: when all of a layer's
        units fall below the threshold, the one with the largest ``E[pi]`` is kept (:func:`keep_at_least_one`),
        so a layer is never removed whole and slimming never builds a zero-width layer."""
        e = self.expected_pi()
        keep = keep_at_least_one(e >= self.threshold, e)
        return torch.where(keep, e, torch.zeros_like(e))

    def sample_pi(self) -> Tensor:
        a, b = self.ab()
        u = self._uniform((self.num_units,), a).clamp(1e-6, 1 - 1e-6)
        return (1 - u.pow(1.0 / b)).pow(1.0 / a)

    def sample_scale(self, batch: int) -> Tensor:
        pi = self.sample_pi()
        eps = torch.finfo(pi.dtype).eps
        pi = pi.clamp(eps, 1 - eps)
        v = self._uniform((batch, self.num_units), pi).clamp(eps, 1 - eps)
        logits = (torch.log(pi) - torch.log1p(-pi)) + (torch.log(v) - torch.log1p(-v))
        return torch.sigmoid(logits / self.temperature)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha/K={self.alpha:g}, tau={self.temperature:g}, thres={self.threshold:g}"


