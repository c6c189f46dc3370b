"""`monosemantic toy …`: the sparsity sweep of *Toy Models of Superposition* (Elhage et al. 2022)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from monosemantic.toy.config import ToyConfig
from monosemantic.toy.geometry import STRUCTURE_NAMES
from monosemantic.toy.sweep import run_toy_sweep

toy_app = typer.Typer(
    help="Toy models of superposition: train n sparse features into m < n dimensions across sparsity, "
    "measure dimensions per feature and the polytopes features form (digons, triangles, pentagons, …), plot.",
    no_args_is_help=True,
)


@toy_app.callback()
def toy() -> None:
    """Toy models of superposition (Elhage et al. 2022)."""


# short column headers (the table must fit an 80-column terminal)
_SHORT = {
    "dense": "dense",
    "tetrahedron": "tet",
    "triangle": "tri",
    "digon": "digon",
    "pentagon": "pent",
    "square_antiprism": "sqap",
    "other": "other",
    "partial": "part",
    "not_learned": "absent",
}


def summary_table(result: dict) -> Table:
    """One row per sparsity: S, 1/(1−S), D*, represented features, structure counts."""
    table = Table(
        title=f"toy sweep: {result['n_features']} features → {result['n_hidden']} dimensions "
        f"({result['seconds']:.0f} s)",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        pad_edge=False,
        caption="counts of structures (tet = tetrahedra, sqap = square antiprisms); "
        "part/absent count features kept at reduced strength / not learned",
    )
    for header in ("S", "1/(1−S)", "D*", "repr", *(_SHORT[name] for name in STRUCTURE_NAMES)):
        table.add_column(header, justify="right")
    for point in result["points"]:
        table.add_row(
            f"{point['sparsity']:.3f}",
            f"{point['inverse_density']:.2f}",
            f"{point['dims_per_feature']:.3f}",
            str(point["n_represented"]),
            *(str(point["structures"][name]) for name in STRUCTURE_NAMES),
        )
    return table


@toy_app.command("sweep")
def sweep(
    out: Path = typer.Option(..., "--out", help="Directory to write toy.json and the figures into (replaced)."),
    preset: str = typer.Option("demo", "--preset", help="tiny | demo (400→30, a few CPU minutes) | paper."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (same seed → same numbers on CPU)."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda | auto."),
    n_features: int | None = typer.Option(None, "--n-features", help="Number of features n."),
    n_hidden: int | None = typer.Option(None, "--n-hidden", help="Number of hidden dimensions m."),
    n_sparsities: int | None = typer.Option(None, "--n-sparsities", help="Sparsity points (instances)."),
    sparsity_min: float | None = typer.Option(None, "--sparsity-min", help="Smallest S, in [0, 1)."),
    sparsity_max: float | None = typer.Option(None, "--sparsity-max", help="Largest S, in [0, 1)."),
    importance_decay: float | None = typer.Option(
        None, "--importance-decay", help="Importance I_i = decay^i (1 = uniform)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Training steps of the sweep."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size per instance."),
    lr: float | None = typer.Option(None, "--lr", help="Peak AdamW learning rate."),
    cpu_threads: int | None = typer.Option(None, "--cpu-threads", help="torch CPU threads (default 1)."),
) -> None:
    """Train the sweep and the n=5, m=2 demo; write toy.json + PNG/SVG figures; print a summary."""
    overrides = {
        name: value
        for name, value in dict(
            seed=seed,
            device=device,
            n_features=n_features,
            n_hidden=n_hidden,
            n_sparsities=n_sparsities,
            sparsity_min=sparsity_min,
            sparsity_max=sparsity_max,
            importance_decay=importance_decay,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            cpu_threads=cpu_threads,
        ).items()
        if value is not None
    }
    cfg = ToyConfig.from_preset(preset, **overrides)
    result = run_toy_sweep(cfg, out)
    Console().print(summary_table(result))
    Console().print(f"figures and toy.json in {out}")
