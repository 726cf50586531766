"""The sparsity sweep of Madaan2020 Fig. 3: train a Bayesian pruning method at several KL scales ``gamma``
(App. C: {1, 4, 8, 10, 12} for LeNet-5) and plot clean / white-box / black-box accuracy against the sparsity
reached. The training and the evaluation are the caller's (a model factory and an ``evaluate`` callback), so
the sweep works for any dataset, architecture and attack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from robustprune.analysis._plot import pyplot, save_figure
from robustprune.errors import ConfigError


@dataclass
class SweepPoint:
    """One trained model of the sweep: its ``gamma``, unit sparsity (fraction of gated units pruned) and whatever
    ``evaluate`` returned (e.g. ``{"clean": .., "white_box": .., "black_box": ..}``)."""

    method: str
    gamma: float
    unit_sparsity: float
    metrics: dict[str, float] = field(default_factory=dict)
    units: str = ""


def gamma_sweep(make_model: Callable[[], nn.Module], gammas: Sequence[float], *, method: str = "anp",
                evaluate: Callable[[nn.Module, Any], Mapping[str, float]] | None = None, gate: str = "bbd",
                **prune_kwargs: Any) -> list[SweepPoint]:
    """For each ``gamma``: ``model = make_model()`` (e.g. a copy of a pre-trained network), then
    :func:`robustprune.methods.bayesian_prune` (``method``, ``gate``, ``prune_kwargs``: train/val/cfg/eps...),
    then ``evaluate(model, result)`` (the gated model in eval mode and the :class:`BayesianResult`)."""
    from robustprune.methods.bayesian import bayesian_prune

    if not gammas:
        raise ConfigError("gamma_sweep needs at least one gamma")
    points = []
    for gamma in gammas:
        model = make_model()
        res = bayesian_prune(model, method, gamma=float(gamma), gate=gate, **prune_kwargs)
        metrics = dict(evaluate(model, res)) if evaluate is not None else {}
        points.append(SweepPoint(method, float(gamma), res.unit_sparsity, metrics, res.units_string()))
    return points


def plot_sweep(points: Mapping[str, Sequence[SweepPoint]], path: str | Path, *,
               metrics: Sequence[str] = ("clean", "white_box", "black_box"),
               references: Mapping[str, Mapping[str, float]] | None = None, title: str | None = None) -> Path:
    """One panel per metric: accuracy (%) against sparsity (%), one line per method; ``references`` draws
    unpruned models (e.g. ``{"AT": {"clean": 0.85, ...}}``) as horizontal lines."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, pts in points.items():
            pts = sorted((p for p in pts if metric in p.metrics), key=lambda p: p.unit_sparsity)
            if pts:
                ax.plot([100 * p.unit_sparsity for p in pts], [100 * p.metrics[metric] for p in pts], "o-",
                        label=name)
        styles = [("black", "--"), ("gray", ":"), ("tab:brown", "-."), ("tab:olive", "--")]
        for k, (name, vals) in enumerate((references or {}).items()):
            if metric in vals:
                color, ls = styles[k % len(styles)]
                ax.axhline(100 * vals[metric], linestyle=ls, linewidth=1, label=name, color=color)
        ax.set_xlabel("sparsity (% units pruned)")
        ax.set_ylabel(f"{metric} accuracy (%)")
        ax.legend(fontsize=7)
    return save_figure(fig, path, title)
