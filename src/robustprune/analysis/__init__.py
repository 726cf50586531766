"""Analyses of Madaan2020: per-feature vulnerability histograms (Fig. 4 bottom), loss surfaces along the
gradient-sign and a random direction (Fig. 5) and the sparsity sweep over the KL scale gamma (Fig. 3).

Each analysis returns plain data (dataclasses of tensors / floats) and has a matplotlib plotting function that
writes a PNG; plotting never runs a model.
"""

from robustprune.analysis.loss_surface import LossSurface, loss_surface, plot_loss_surfaces
from robustprune.analysis.sweep import SweepPoint, gamma_sweep, plot_sweep
from robustprune.analysis.vulnerability import (
    VulnerabilityHistogram,
    plot_vulnerability_histograms,
    vulnerability_histogram,
)

__all__ = [
    "LossSurface",
    "SweepPoint",
    "VulnerabilityHistogram",
    "gamma_sweep",
    "loss_surface",
    "plot_loss_surfaces",
    "plot_sweep",
    "plot_vulnerability_histograms",
    "vulnerability_histogram",
]
