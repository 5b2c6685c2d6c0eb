"""Figures: matplotlib `Figure`s not registered with pyplot, and saving them as PNGs."""

from __future__ import annotations

import os


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 5.0, height: float = 3.6):
    """A pyplot-free Figure and a flat list of its axes."""
    try:
        from matplotlib.figure import Figure  # optional: matplotlib (notebooks and test extras)
    except ImportError as e:  # pragma: no cover - matplotlib is in the notebooks and test extras
        raise ImportError("the figures need matplotlib: pip install -e '.[notebooks]'") from e
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def note(ax, text: str) -> None:
    """Marks an empty panel with why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, plots_dir: str, name: str, *, dpi: int = 110) -> str:
    """Writes `fig` to `plots_dir/name.png` (directory created; written to a temp name, then renamed)."""
    os.makedirs(plots_dir, exist_ok=True)
    path = os.path.join(plots_dir, name if name.endswith(".png") else name + ".png")
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)
    return path
