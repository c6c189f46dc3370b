"""A 2-D map of the decoder directions of every dictionary of a sweep, coloured by size.

Bricken et al. 2023 lay out the dictionary vectors of runs of several sizes with UMAP (cosine
metric, 15 neighbours): a feature and the features it splits into land together, so families show
up as clusters. We use umap-learn when it is installed (``method="auto"``) and otherwise a PCA of
the unit-normalised directions (torch), which is exact and fast but separates clusters less.
``feature_map`` writes ``RUN/feature_map/map.png`` and ``map.json`` — per point its SAE, size,
feature index, coordinates and, when ``RUN/splitting/families.json`` exists, its label, density
and parent at the next smaller size — for the browser to draw interactively. The SAEs mapped
together read one hook point; at another than the run's main one, the files are
``map@<hook>.png`` and ``map@<hook>.json``, annotated from ``families@<hook>.json``.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

from monosemantic.activations.store import hook_tag
from monosemantic.atomic import write_json
from monosemantic.compare.config import FeatureMapConfig
from monosemantic.compare.splitting import sae_hook_point
from monosemantic.errors import UserError
from monosemantic.figures import new_figure, save_figure
from monosemantic.sae.io import load_sae


def project_2d(directions_ND: np.ndarray, cfg: FeatureMapConfig) -> tuple[np.ndarray, str]:
    """[N, D] directions → ([N, 2] coordinates, the method used). Rows are unit-normalised first."""
    unit_ND = directions_ND / np.linalg.norm(directions_ND, axis=1, keepdims=True).clip(1e-12)
    method = cfg.method
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") is not None else "pca"
    if method == "umap":
        if importlib.util.find_spec("umap") is None:
            raise UserError("feature map method umap: umap-learn is not installed (pip install umap-learn, or use pca)")
        import umap

        reducer = umap.UMAP(
            n_neighbors=min(cfg.n_neighbors, len(unit_ND) - 1),
            min_dist=cfg.min_dist,
            metric="cosine",
            random_state=cfg.seed,
            n_jobs=1,
        )
        return np.asarray(reducer.fit_transform(unit_ND), dtype=np.float64), "umap"
    torch.manual_seed(cfg.seed)  # pca_lowrank's random sketch
    x_ND = torch.from_numpy(unit_ND).double()
    _, _, V_D2 = torch.pca_lowrank(x_ND, q=min(6, *x_ND.shape), center=True, niter=6)
    coords_N2 = ((x_ND - x_ND.mean(dim=0)) @ V_D2[:, :2]).numpy()
    return coords_N2 * np.sign(coords_N2[np.abs(coords_N2).argmax(axis=0), [0, 1]]), "pca"  # fix PCA's sign freedom


def feature_map(run_dir: str | Path, sae_names: list[str], cfg: FeatureMapConfig | None = None) -> dict:
    """Map the decoder directions of ``sae_names`` (under ``RUN/saes/``) together; returns figures
    for ``run.json``: method, number of points, seconds and artifact paths."""
    cfg = cfg or FeatureMapConfig()
    run = Path(run_dir)
    if not sae_names:
        raise UserError("feature map: no SAEs given")
    tag = hook_tag(*sae_hook_point(run, sae_names))
    decoders = {name: load_sae(run / "saes" / name).W_dec.detach().double().numpy() for name in sae_names}
    start = time.perf_counter()
    coords_N2, method = project_2d(np.concatenate(list(decoders.values())), cfg)
    seconds = time.perf_counter() - start

    extra = _splitting_annotations(run / "splitting" / f"families{tag}.json", sae_names)
    points, at = [], 0
    for name, W_dec_FD in decoders.items():
        for f in range(len(W_dec_FD)):
            point = {
                "sae": name,
                "size": len(W_dec_FD),
                "feature": f,
                "x": round(float(coords_N2[at, 0]), 4),
                "y": round(float(coords_N2[at, 1]), 4),
            }
            point.update({key: values[f] for key, values in extra.get(name, {}).items()})
            points.append(point)
            at += 1
    out = run / "feature_map"
    write_json(
        out / f"map{tag}.json", {"method": method, "config": cfg.model_dump(), "saes": sae_names, "points": points}
    )
    _plot(points, method, out / f"map{tag}.png")
    return {
        "method": method,
        "n_points": len(points),
        "seconds": round(seconds, 2),
        "artifacts": {"data": f"feature_map/map{tag}.json", "picture": f"feature_map/map{tag}.png"},
    }


def _splitting_annotations(path: Path, sae_names: list[str]) -> dict[str, dict[str, list]]:
    """Label, density and parent of each feature from the splitting stage's ``path``, when it ran."""
    if not path.exists():
        return {}
    families = json.loads(path.read_text())
    extra = {
        name: {"label": feats["label"], "density": feats["density"]}
        for name, feats in families["features"].items()
        if name in sae_names
    }
    for link in families["links"]:
        if link["to"] in extra:
            extra[link["to"]]["parent"] = link["parent"]
    return extra


def _plot(points: list[dict], method: str, path: Path) -> None:
    from matplotlib import colormaps

    sizes = sorted({p["size"] for p in points})
    colours = colormaps["viridis"](np.linspace(0, 0.9, len(sizes)))
    fig, ax = new_figure((7, 6.5))
    for size, colour in zip(reversed(sizes), reversed(colours)):  # small dictionaries drawn on top
        xy = np.array([(p["x"], p["y"]) for p in points if p["size"] == size])
        ax.scatter(
            xy[:, 0],
            xy[:, 1],
            s=3 + 12 * (sizes[0] / size),
            color=colour,
            alpha=0.7,
            linewidths=0,
            label=f"{size} features",
        )
    ax.set_title(f"Decoder directions of all dictionaries ({method.upper()})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, frameon=False, loc="best")
    save_figure(fig, path)
