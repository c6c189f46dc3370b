"""Figures for every plot of the package: built with matplotlib's object API and saved atomically.

A ``Figure`` made directly (not through pyplot) needs no backend to be chosen — no
``matplotlib.use("Agg")`` — and keeps no global state; ``savefig`` renders it with Agg.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from monosemantic.atomic import atomic_path


def new_figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """A figure with one axes, laid out tightly when it is drawn."""
    fig = Figure(figsize=figsize, layout="tight")
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | Path, dpi: int = 120, **savefig_options) -> Path:
    """Draw ``fig`` into ``path`` (the format its suffix names: png, svg), atomically."""
    path = Path(path)
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        # token labels may hold CJK/Arabic glyphs the default font lacks; they render as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(tmp, format=path.suffix[1:], dpi=dpi, **savefig_options)
    return path
