"""Matplotlib set-up shared by the analysis plots (headless backend, output folder created)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def out_path(path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def save_figure(fig, path: str | Path, title: str | None = None) -> Path:
    """Add the title, lay out, write ``path`` (folder created) at 120 dpi, close the figure; return the path."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    p = out_path(path)
    fig.savefig(p, dpi=120)
    pyplot().close(fig)
    return p
