"""The sparsity sweep of Elhage et al. 2022, *Toy Models of Superposition*, "Uniform Superposition":
train one toy model per sparsity in a single vectorised run, measure dimensions per feature and the
geometry at each sparsity, train the small n=5, m=2 demo of the paper's introduction, and write the
numbers (toy.json) and the figures (PNG + SVG).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monosemantic.atomic import atomic_path
from monosemantic.device import resolve_device
from monosemantic.errors import UserError
from monosemantic.progress import progress
from monosemantic.toy import plots
from monosemantic.toy.geometry import Geometry, classify
from monosemantic.toy.model import ToyModel, train_toy_model


class ToyConfig(BaseModel):
    """A sparsity sweep: n features into m hidden dimensions at ``n_sparsities`` sparsities S whose
    1/(1−S) is log-spaced from 1/(1−sparsity_min) to 1/(1−sparsity_max); importance I_i =
    importance_decay^i (1 = uniform). The plane demo (n=5, m=2, I_i = 0.9^i, as in the paper's
    introduction) trains at ``plane_sparsities``. ``cpu_threads``: torch threads for the sweep on
    CPU (OpenMP threads thrash when other processes share the cores; raise it on an idle machine).
    """

    model_config = ConfigDict(extra="forbid")

    n_features: int = Field(400, ge=1)
    n_hidden: int = Field(30, ge=1)
    importance_decay: float = Field(1.0, gt=0.0, le=1.0)
    n_sparsities: int = Field(20, ge=1)
    sparsity_min: float = 0.0
    sparsity_max: float = 0.9
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-2, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)
    plane_sparsities: list[float] = Field(default_factory=lambda: [0.0, 0.5, 0.8, 0.9, 0.97])
    plane_steps: int = Field(1500, ge=1)
    plane_lr: float = Field(0.1, gt=0.0)
    seed: int = 0
    device: str = "cpu"
    # measured on a shared 2-core machine: 0.08 s/step at 1 thread, 0.41 s/step at 2 (benchmarks/toy_sweep.py)
    cpu_threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check_sparsities(self) -> "ToyConfig":
        for name, value in (("sparsity_min", self.sparsity_min), ("sparsity_max", self.sparsity_max)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1) (a feature is zero with probability S), got {value}")
        if self.sparsity_min > self.sparsity_max:
            raise ValueError(f"sparsity_min ({self.sparsity_min}) is above sparsity_max ({self.sparsity_max})")
        for value in self.plane_sparsities:
            if not 0.0 <= value < 1.0:
                raise ValueError(f"plane_sparsities must lie in [0, 1), got {value}")
        if not self.plane_sparsities:
            raise ValueError("plane_sparsities is empty")
        return self

    @classmethod
    def preset(cls, name: str) -> "ToyConfig":
        """``tiny`` (tests, seconds); ``demo`` (the essay's 400→30 sweep, 1/(1−S) from 1 to 10, in a
        few CPU minutes: 2k steps at batch 256 with a raised, cosine-decayed learning rate);
        ``paper`` (the paper notebook's recipe — AdamW at a constant 1e-3, batch 1024, 10k steps —
        on 30 sparsities out to 1/(1−S) = 20, as the notebook sweeps; about 75 minutes on one CPU thread,
        under a minute on a GPU).

        Triangles (D_i = 2/3) form only between 1/(1−S) ≈ 1.45 and 1.85, as the spread of the dense
        end gives way to digons, and only with the long recipe: measured, ``paper`` on 20 sparsities
        from 1/(1−S) = 1.1 to 2.3 gives 23 triangles, 1–7 per model at 1.50–1.82 (1,897 s on one
        shared CPU thread), while ``demo`` and cheaper variants tried (batch 256–1024, lr 3e-3–2e-2,
        1k–4k steps) leave lone features at D_i ≈ 2/3 in the spread instead. Neither recipe forms tetrahedra (3/4) with uniform importance, and in this model they
        have no band of their own: a tiling of the m dimensions by tetrahedra never has the lowest loss
        (ideal polytopes with fitted norm and bias, Monte Carlo: below triangles at every 1/(1−S) from
        1.2 to 10, below digons from 1.6 on; started from 10 tetrahedra and trained, a model keeps at most
        3 of them at 1.6–2.0 and ends with more loss than a start from one feature per dimension at
        1.2–1.6 and from digons at 1.8–2.5). Between 1/(1−S) ≈ 1.6 and 3 the fall from 1 to 1/2 is
        carried by the partial spread giving way to digons, and from 3 to 5.5 every model is 30 digons
        (3 seeds each at 3.8, 4.4, 5.2: no triangle or tetrahedron)."""
        presets = {
            "tiny": dict(n_features=20, n_hidden=5, n_sparsities=4, sparsity_max=0.9, steps=300, batch_size=128,
                         warmup_steps=20, plane_sparsities=[0.0, 0.97], plane_steps=300),
            "demo": dict(),
            "paper": dict(n_sparsities=30, sparsity_max=0.95, steps=10_000, batch_size=1024, lr=1e-3,
                          lr_schedule="constant", warmup_steps=0, plane_steps=10_000, plane_lr=1e-3),
        }
        if name not in presets:
            raise UserError(f"--preset {name}: unknown toy preset (choose one of {', '.join(presets)})")
        return cls(**presets[name])

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ToyConfig":
        """The preset with the given fields replaced, validated; bad values raise UserError."""
        fields = cls.preset(name).model_dump()
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise UserError(f"toy config: unknown option(s) {', '.join(unknown)}")
        try:
            return cls(**{**fields, **overrides})
        except ValidationError as err:
            first = err.errors()[0]
            message = first["msg"].removeprefix("Value error, ")
            if not first["loc"]:
                raise UserError(f"toy config: {message}") from None
            name = str(first["loc"][0])
            raise UserError(f"toy option {name} (--{name.replace('_', '-')}): {message} (got {first['input']!r})") from None

    def sparsities(self) -> list[float]:
        """The sweep's S values, with 1/(1−S) log-spaced."""
        lo, hi = math.log(1.0 / (1.0 - self.sparsity_min)), math.log(1.0 / (1.0 - self.sparsity_max))
        steps = max(1, self.n_sparsities - 1)
        return [1.0 - math.exp(-(lo + (hi - lo) * k / steps)) for k in range(self.n_sparsities)]


@contextmanager
def cpu_threads(n_threads: int) -> Iterator[None]:
    """Run the block with torch limited to n_threads CPU threads (then restore the previous count)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_sweep(n_features: int, n_hidden: int, sparsities: list[float], importance_N: torch.Tensor, *,
                steps: int, lr: float, cfg: ToyConfig, seed: int, description: str) -> tuple[torch.Tensor, torch.Tensor]:
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
            model, density_I, importance_N.to(device), steps=steps,
            batch_size=cfg.batch_size, lr=lr, schedule=cfg.lr_schedule, warmup=cfg.warmup_steps,
            weight_decay=cfg.weight_decay, generator=generator, on_step=on_step)
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
    W_INM, loss_I = train_sweep(cfg.n_features, cfg.n_hidden, sparsities, importance_N, steps=cfg.steps, lr=cfg.lr,
                                cfg=cfg, seed=cfg.seed, description=f"toy sweep {cfg.n_features}→{cfg.n_hidden}")
    geometries = [classify(W_NM) for W_NM in W_INM]

    plane_importance_N = importance(5, 0.9)
    plane_W_INM, plane_loss_I = train_sweep(5, 2, cfg.plane_sparsities, plane_importance_N, steps=cfg.plane_steps,
                                            lr=cfg.plane_lr, cfg=cfg, seed=cfg.seed + 1,
                                            description="toy plane demo 5→2")
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
            "dimensionality": plots.save_figure(
                plots.plot_dimensionality(sparsities, geometries, cfg.n_features, cfg.n_hidden), tmp, "dimensionality"),
            "plane_demo": plots.save_figure(
                plots.plot_plane(cfg.plane_sparsities, plane_W_INM, plane_importance_N), tmp, "plane_demo"),
            "gram": plots.save_figure(plots.plot_gram(sparsities, W_INM, geometries), tmp, "gram"),
        }
        summary["seconds"] = round(time.perf_counter() - started, 2)
        details = {
            **summary,
            "config": cfg.model_dump(),
            "points": [{**p, "features": _features(g)} for p, g in zip(summary["points"], geometries)],
            "plane_demo": [{**p, "features": _features(g), "W": [[round(v, 5) for v in row] for row in W.tolist()]}
                           for p, g, W in zip(summary["plane_demo"], plane_geometries, plane_W_INM)],
        }
        (tmp / "toy.json").write_text(json.dumps(details, indent=1) + "\n")
    return summary
