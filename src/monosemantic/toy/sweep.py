"""The sparsity sweep of Elhage et al. 2022, *Toy Models of Superposition*, "Uniform Superposition":
train one toy model per sparsity in a single vectorised run, measure dimensions per feature and the
geometry at each sparsity, train the small n=5, m=2 demo of the paper's introduction, and write the
numbers (toy.json) and the figures (PNG + SVG).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from monosemantic.atomic import atomic_path
from monosemantic.device import resolve_device
from monosemantic.progress import progress
from monosemantic.toy import plots
from monosemantic.toy.config import ToyConfig
from monosemantic.toy.geometry import Geometry, classify
from monosemantic.toy.model import ToyModel, train_toy_model


@contextmanager
def cpu_threads(n_threads: int) -> Iterator[None]:
    """Run the block with torch limited to n_threads CPU threads (then restore the previous count)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_sweep(
    n_features: int,
    n_hidden: int,
    sparsities: list[float],
    importance_N: torch.Tensor,
    *,
    steps: int,
    lr: float,
    cfg: ToyConfig,
    seed: int,
    description: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train one instance per sparsity; return (W_INM, final per-instance loss_I) on the CPU."""
    device = resolve_device(cfg.device)
    generator = torch.Generator(device=device).manual_seed(seed)
    model = ToyModel(len(sparsities), n_features, n_hidden, generator, device)
    density_I = 1.0 - torch.tensor(sparsities, dtype=torch.float32, device=device)
    # a 5-feature model is far too small for threads to pay; on a busy machine they cost 10-100×
    threads = cfg.cpu_threads if n_features * len(sparsities) * cfg.batch_size >= 1_000_000 else 1
    with cpu_threads(threads), progress(description, total=steps, unit="step") as advance:

        def on_step(step: int, loss_I: torch.Tensor) -> None:
            report = step % 100 == 0 or step == steps - 1
            advance(1, info=f"loss {float(loss_I.sum()):.4f}" if report else None)

        loss_I = train_toy_model(
            model,
            density_I,
            importance_N.to(device),
            steps=steps,
            batch_size=cfg.batch_size,
            lr=lr,
            schedule=cfg.lr_schedule,
            warmup=cfg.warmup_steps,
            weight_decay=cfg.weight_decay,
            generator=generator,
            on_step=on_step,
        )
    return model.W_INM.detach().cpu(), loss_I.cpu()


def importance(n_features: int, decay: float) -> torch.Tensor:
    """I_i = decay^i, shape N."""
    return decay ** torch.arange(n_features, dtype=torch.float32)


def _point(sparsity: float, geometry: Geometry, loss: float) -> dict[str, Any]:
    return {
        "sparsity": sparsity,
        "inverse_density": 1.0 / (1.0 - sparsity),
        "dims_per_feature": geometry.dims_per_feature,
        "n_represented": geometry.n_represented,
        "structures": geometry.counts,
        "loss": loss,
    }


def _features(geometry: Geometry) -> dict[str, list]:
    return {
        "dimensionality": [round(float(d), 5) for d in geometry.dimensionality_N],
        "norm": [round(float(v), 5) for v in geometry.norm_N],
        "interference": [round(float(v), 5) for v in geometry.interference_N],
        "structure": geometry.label_N,
        "factor": geometry.factor_N,
    }


def run_toy_sweep(cfg: ToyConfig, out_dir: Path) -> dict[str, Any]:
    """Train the sweep and the plane demo, write toy.json and the figures into out_dir (atomically).

    Returns the summary for run.json: ``points`` (per sparsity: sparsity, inverse_density = 1/(1−S),
    dims_per_feature D*, n_represented, structures — counts of tegum factors per polytope name and
    of "other" factors, and counts of features under ``partial`` and ``not_learned`` — and loss),
    ``plane_demo`` (the same for n=5, m=2), ``seconds`` (training, measuring and plotting),
    ``plots`` ({name: {"png": path, "svg": path}}, paths relative to
    out_dir) and ``details`` ("toy.json", which adds every feature's D_i, norm, interference and
    structure, and W at every demo sparsity).
    """
    started = time.perf_counter()
    sparsities = cfg.sparsities()
    importance_N = importance(cfg.n_features, cfg.importance_decay)
    W_INM, loss_I = train_sweep(
        cfg.n_features,
        cfg.n_hidden,
        sparsities,
        importance_N,
        steps=cfg.steps,
        lr=cfg.lr,
        cfg=cfg,
        seed=cfg.seed,
        description=f"toy sweep {cfg.n_features}→{cfg.n_hidden}",
    )
    geometries = [classify(W_NM) for W_NM in W_INM]

    plane_importance_N = importance(5, 0.9)
    plane_W_INM, plane_loss_I = train_sweep(
        5,
        2,
        cfg.plane_sparsities,
        plane_importance_N,
        steps=cfg.plane_steps,
        lr=cfg.plane_lr,
        cfg=cfg,
        seed=cfg.seed + 1,
        description="toy plane demo 5→2",
    )
    plane_geometries = [classify(W_NM) for W_NM in plane_W_INM]

    summary: dict[str, Any] = {
        "n_features": cfg.n_features,
        "n_hidden": cfg.n_hidden,
        "points": [_point(s, g, float(l)) for s, g, l in zip(sparsities, geometries, loss_I)],
        "plane_demo": [_point(s, g, float(l)) for s, g, l in zip(cfg.plane_sparsities, plane_geometries, plane_loss_I)],
        "details": "toy.json",
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        summary["plots"] = {
            "dimensionality": plots.save_png_and_svg(
                plots.plot_dimensionality(sparsities, geometries, cfg.n_features, cfg.n_hidden), tmp, "dimensionality"
            ),
            "plane_demo": plots.save_png_and_svg(
                plots.plot_plane(cfg.plane_sparsities, plane_W_INM, plane_importance_N), tmp, "plane_demo"
            ),
            "gram": plots.save_png_and_svg(plots.plot_gram(sparsities, W_INM, geometries), tmp, "gram"),
        }
        summary["seconds"] = round(time.perf_counter() - started, 2)
        details = {
            **summary,
            "config": cfg.model_dump(),
            "points": [{**p, "features": _features(g)} for p, g in zip(summary["points"], geometries)],
            "plane_demo": [
                {**p, "features": _features(g), "W": [[round(v, 5) for v in row] for row in W.tolist()]}
                for p, g, W in zip(summary["plane_demo"], plane_geometries, plane_W_INM)
            ],
        }
        (tmp / "toy.json").write_text(json.dumps(details, indent=1) + "\n")
    return summary
