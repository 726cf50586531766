"""Variational information bottleneck pruning (Dai et al. 2018, "VIBNet") and its adversarial version ANP-VIB
(Madaan2020 App. B).

Each gated hidden layer's output ``h_i = f_i(h_{i-1}) * z_i`` with ``z_i ~ N(mu_i, diag(sigma_i^2))`` per unit
(per channel for conv maps), i.e. ``p(h_i | h_{i-1}) = N(f_i(h_{i-1}) mu_i, diag(f_i(h_{i-1})^2 sigma_i^2))``
with the prior ``q(h_i) = N(0, diag(xi_i))`` whose variances ``xi_i`` are optimised out in closed form (Madaan2020
Eq. 14-15; Dai et al. Eq. 9-10). The compression term is then::

    gamma_i * sum_j log(1 + mu_ij^2 / sigma_ij^2)

per element of ``h_i``; following the VIBNet code we use ``1/2 log(1 + mu^2/sigma^2)`` per unit, counted once per
spatial position of the unit (``H*W`` for a conv map). Loss (Madaan2020 Eq. 16, per data point):

    L = CE(x or x_adv) + gamma / N * sum_i sum_j 1/2 log(1 + mu_ij^2 / sigma_ij^2) * positions_i

(``N`` = training set size, as for the Beta-Bernoulli ELBO; the VIBNet code uses a fixed factor instead).
Training samples ``z = mu + sigma * eps`` per example; at test time ``z = mu`` and a unit is pruned when
``log alpha = log sigma^2 - log mu^2 >= 0`` (VIBNet's ``mask_thresh = 0``). Initialisation as VIBNet:
``mu ~ N(1, 0.01)``, ``log sigma^2 ~ N(-9, 0.01)``.

BP (VIB) trains weights and masks on clean data; ANP-VIB uses :class:`robustprune.methods.bayesian.ANPObjective`
with VIB gates (masks on the adversarial ELBO of Eq. 16, weights on the clean/adversarial mix).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.methods.gates import UnitGate, keep_at_least_one

VIB_EPS = 1e-8


class VIBGate(UnitGate):
    """Information-bottleneck gate: ``z ~ N(mu, sigma^2)`` per unit in training, ``mu * [log alpha < threshold]``
    at test time (module docstring)."""

    def __init__(self, num_units: int, positions: int = 1, *, init_mu: float = 1.0, init_log_sigma2: float = -9.0,
                 init_std: float = 0.01, threshold: float = 0.0) -> None:
        super().__init__(num_units, positions)
        if not math.isfinite(float(threshold)):
            raise ConfigError(f"VIB threshold must be finite, got {threshold!r}")
        self.threshold = float(threshold)
        self.mu = nn.Parameter(float(init_mu) + float(init_std) * torch.randn(self.num_units))
        self.log_sigma2 = nn.Parameter(float(init_log_sigma2) + float(init_std) * torch.randn(self.num_units))

    def log_alpha(self) -> Tensor:
        return self.log_sigma2 - torch.log(self.mu.pow(2) + VIB_EPS)

    def kl_per_unit(self) -> Tensor:
        """``1/2 log(1 + mu^2 / sigma^2) * positions`` (VIBNet's closed-form KL with optimal prior variances)."""
        return 0.5 * torch.log1p(self.mu.pow(2) / (self.log_sigma2.exp() + VIB_EPS)) * self.positions

    def test_scale(self) -> Tensor:
        log_alpha = self.log_alpha()
        # never prune a whole layer: when every unit is above the threshold, keep the one with the smallest log alpha
        keep = keep_at_least_one(log_alpha < self.threshold, -log_alpha)
        return torch.where(keep, self.mu, torch.zeros_like(self.mu))

    def sample_scale(self, batch: int) -> Tensor:
        g = self.generator
        if g is not None and g.device.type != self.mu.device.type:
            g = None
        noise = torch.randn((batch, self.num_units), generator=g, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + noise * (0.5 * self.log_sigma2).exp()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", positions={self.positions}, log_alpha_thres={self.threshold:g}"
