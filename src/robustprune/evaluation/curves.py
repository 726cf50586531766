"""Security curves: robust accuracy against ε from the per-sample norms of one minimal-norm attack run.

A minimal-norm attack returns, per sample, the smallest perturbation it found that changes the prediction
(0 for a sample misclassified when clean, inf where it found none). The robust accuracy at any budget ε is then
the fraction of samples whose norm exceeds ε (Merkle2022, Sec. 3.5), so one run gives the whole curve, which is
non-increasing in ε by construction.

The accuracies come from :func:`robustprune.attacks.security_curve` (``[(ε, accuracy), ...]``); this module adds
the default ε grid, input checks and the JSON-ready summary a report stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from robustprune.attacks import security_curve as _accuracy_curve
from robustprune.errors import ConfigError
from robustprune.utils import eps_to_str


def _as_norms(norms: Tensor | Sequence[float]) -> Tensor:
    t = norms.detach().double().cpu() if isinstance(norms, Tensor) else torch.as_tensor(norms, dtype=torch.float64)
    if t.dim() != 1 or len(t) == 0:
        raise ConfigError("norms must be a non-empty 1-D sequence (one minimal norm per sample)")
    if bool(torch.isnan(t).any()) or bool((t < 0).any()):
        raise ConfigError("norms must be >= 0 (inf where no adversarial example was found), not NaN")
    return t


def default_eps_grid(norms: Tensor | Sequence[float], points: int = 51, extra: Sequence[float] = ()) -> list[float]:
    """``points`` budgets evenly spaced from 0 to a little past the largest finite norm, plus ``extra``."""
    t = _as_norms(norms)
    finite = t[torch.isfinite(t)]
    top = float(finite.max()) * 1.05 if len(finite) and float(finite.max()) > 0 else 1.0
    grid = set(float(v) for v in torch.linspace(0.0, top, max(int(points), 2), dtype=torch.float64).tolist())
    grid.update(float(e) for e in extra)
    return sorted(grid)


def security_curve(norms: Tensor | Sequence[float], eps_grid: Sequence[float] | int | None = None) -> dict[str, Any]:
    """Robust accuracy at every ε of ``eps_grid`` (sorted ascending) from per-sample minimal norms, as a report
    stores it (the accuracies are :func:`robustprune.attacks.security_curve`'s).

    ``eps_grid``: the budgets, or a number of evenly spaced points (default 51) from 0 past the largest finite
    norm. Returns a JSON-able dict: ``eps``, ``eps_str``, ``robust_acc`` (non-increasing), ``n_points``,
    ``n_found`` (finite norms), ``median_norm`` (None when half the samples or more have no adversarial) and
    ``mean_found_norm`` (mean over the finite norms; None when none).
    """
    t = _as_norms(norms)
    if eps_grid is None or isinstance(eps_grid, int):
        grid = default_eps_grid(t, 51 if eps_grid is None else eps_grid)
    else:
        grid = sorted(float(e) for e in eps_grid)
        if any(not math.isfinite(e) or e < 0 for e in grid):
            raise ConfigError("eps_grid values must be finite and >= 0")
    acc = [a for _, a in _accuracy_curve(t, grid)]
    finite = t[torch.isfinite(t)]
    median = float(t.median()) if len(t) else math.inf
    return {
        "eps": grid,
        "eps_str": [eps_to_str(e) for e in grid],
        "robust_acc": acc,
        "n_points": int(len(t)),
        "n_found": int(len(finite)),
        "median_norm": median if math.isfinite(median) else None,
        "mean_found_norm": float(finite.mean()) if len(finite) else None,
    }

