"""Figures for the toy models of Elhage et al. 2022, *Toy Models of Superposition*: the feature
dimensionality figure of "Uniform Superposition", the n=5, m=2 pentagon of the introduction, and
WᵀW across sparsity. Each figure is saved as PNG and SVG (matplotlib's object API, no pyplot state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from monosemantic.figures import save_figure
from monosemantic.toy.geometry import STRUCTURE_NAMES, Geometry

# guide lines of the paper's figure: D value → label
GUIDES: dict[float, str] = {
    1.0: "1 (dense)",
    3 / 4: "3/4 tetrahedron",
    2 / 3: "2/3 triangle",
    1 / 2: "1/2 digon",
    2 / 5: "2/5 pentagon",
    3 / 8: "3/8 square antiprism",
}
STRUCTURE_COLOURS: dict[str, str] = {
    "dense": "#1f77b4",
    "tetrahedron": "#9467bd",
    "triangle": "#2ca02c",
    "digon": "#d62728",
    "pentagon": "#ff7f0e",
    "square_antiprism": "#8c564b",
    "other": "#7f7f7f",
    "partial": "#17becf",
    "not_learned": "#c7c7c7",
}
# legend names where the structure name alone would mislead
LEGEND_NAMES: dict[str, str] = {
    "partial": "partial (spread: WᵀW a projection over many features)",
    "other": "other (incl. a lone feature in a spread)",
    "not_learned": "not learned",
}


def save_png_and_svg(fig: Figure, out_dir: Path, name: str) -> dict[str, str]:
    """Write ``name``.png and ``name``.svg into out_dir; return {"png": …, "svg": …} relative names."""
    return {
        extension: save_figure(fig, out_dir / f"{name}.{extension}", dpi=150, bbox_inches="tight").name
        for extension in ("png", "svg")
    }


def plot_dimensionality(sparsities: list[float], geometries: list[Geometry], n_features: int, n_hidden: int) -> Figure:
    """D* (black line) and every feature's D_i (dots, coloured by structure) against 1/(1−S)."""
    fig = Figure(figsize=(9, 5.5))
    ax = fig.add_subplot()
    inverse_density = np.array([1.0 / (1.0 - s) for s in sparsities])
    x_max = inverse_density.max() * 1.15
    for value, label in GUIDES.items():
        ax.axhline(value, color="#bbbbbb", lw=0.8, ls="--", zorder=0)
        # 2/5 and 3/8 are close: put one label above its line and the other below
        ax.text(
            x_max,
            value,
            f" {label}",
            va={0.4: "bottom", 0.375: "top"}.get(value, "center"),
            fontsize=8,
            color="#555555",
        )
    ax.plot(
        inverse_density,
        [g.dims_per_feature for g in geometries],
        color="black",
        lw=2,
        marker="o",
        ms=3,
        label="dimensions per feature D* = m/‖W‖²",
        zorder=3,
    )
    rng = np.random.default_rng(0)
    for x, geometry in zip(inverse_density, geometries):
        labels = np.array(geometry.label_N)
        for name, colour in STRUCTURE_COLOURS.items():
            chosen = labels == name
            if chosen.any():
                # a little horizontal jitter (in log space) so the dots of one sparsity do not hide each other
                jitter = np.exp(rng.uniform(-0.03, 0.03, int(chosen.sum())))
                ax.scatter(
                    x * jitter,
                    geometry.dimensionality_N.numpy()[chosen],
                    s=6,
                    color=colour,
                    alpha=0.5,
                    linewidths=0,
                    label=LEGEND_NAMES.get(name, name.replace("_", " ")),
                    zorder=2,
                )
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(
        unique.values(),
        unique.keys(),
        fontsize=7,
        loc="upper right",
        markerscale=2,
        title="feature D_i, by structure",
        title_fontsize=7,
    )
    ax.set_xscale("log")
    ax.set_xlim(inverse_density.min() / 1.1, x_max)
    ax.set_ylim(-0.03, 1.1)
    ax.set_xlabel("1 / (1 − S)   (S = sparsity)")
    ax.set_ylabel("dimensions per feature")
    ax.set_title(f"Feature dimensionality: n = {n_features} features in m = {n_hidden} dimensions")
    return fig


def plot_plane(sparsities: list[float], W_INM: torch.Tensor, importance_N: torch.Tensor) -> Figure:
    """One panel per sparsity: each feature's direction W_i ∈ R² drawn from the origin."""
    fig = Figure(figsize=(2.4 * len(sparsities), 2.6))
    relative_N = (importance_N / importance_N.max()).tolist()
    colours = [
        colormaps["viridis"](0.15 + 0.85 * (r - min(relative_N)) / max(1e-9, 1 - min(relative_N))) for r in relative_N
    ]
    limit = max(1.2, float(W_INM.abs().max()) * 1.15)
    for k, sparsity in enumerate(sparsities):
        ax = fig.add_subplot(1, len(sparsities), k + 1)
        for i, (x, y) in enumerate(W_INM[k].tolist()):
            ax.plot([0, x], [0, y], color=colours[i], lw=1.5)
            ax.scatter([x], [y], color=colours[i], s=14, zorder=3)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"S = {sparsity:g}", fontsize=9)
    fig.suptitle(
        f"n = {W_INM.shape[1]} features in m = 2 dimensions (colour = importance, yellow highest)", fontsize=10
    )
    return fig


def plot_gram(
    sparsities: list[float], W_INM: torch.Tensor, geometries: list[Geometry], columns: int = 4, max_features: int = 80
) -> Figure:
    """WᵀW (feature overlaps Wᵢ · Wⱼ) at up to ``columns`` sparsities, features grouped by tegum factor.

    Features are ordered by structure then factor, so digons, triangles, … show as blocks on the
    diagonal; unlearned features are left out, and at most ``max_features`` are drawn so the blocks
    stay visible when n is large.
    """
    picks = np.unique(np.linspace(0, len(sparsities) - 1, min(columns, len(sparsities))).round().astype(int))
    fig = Figure(figsize=(3.2 * len(picks), 3.4))
    order_of = {name: rank for rank, name in enumerate(STRUCTURE_NAMES)}
    image = None
    for column, k in enumerate(picks):
        geometry = geometries[k]
        learned = [i for i in range(W_INM.shape[1]) if geometry.label_N[i] != "not_learned"] or [0]
        order = sorted(
            learned, key=lambda i: (order_of[geometry.label_N[i]], geometry.factor_N[i], -float(geometry.norm_N[i]))
        )[:max_features]
        gram_NN = (W_INM[k][order] @ W_INM[k][order].T).numpy()
        ax = fig.add_subplot(1, len(picks), column + 1)
        image = ax.imshow(gram_NN, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(
            f"S = {sparsities[k]:.3f}, D* = {geometry.dims_per_feature:.2f}\n"
            f"{len(order)} of {len(learned)} learned features",
            fontsize=9,
        )
    fig.colorbar(image, ax=fig.axes, shrink=0.8, label="Wᵢ · Wⱼ")
    fig.suptitle("WᵀW across sparsity (features grouped by structure)", fontsize=10)
    return fig
