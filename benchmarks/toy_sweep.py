"""Speed of the toy-model sweep: seconds per training step for a preset's shape, at 1 and at all CPU
threads, and the whole sweep's projected time. Prints a table.

    python benchmarks/toy_sweep.py [--preset demo] [--steps 40]
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from monosemantic.toy.config import ToyConfig
from monosemantic.toy.model import ToyModel, train_toy_model
from monosemantic.toy.sweep import cpu_threads


def seconds_per_step(cfg: ToyConfig, steps: int) -> float:
    generator = torch.Generator().manual_seed(cfg.seed)
    model = ToyModel(cfg.n_sparsities, cfg.n_features, cfg.n_hidden, generator)
    density_I = 1.0 - torch.tensor(cfg.sparsities())
    importance_N = torch.ones(cfg.n_features)
    run = dict(
        batch_size=cfg.batch_size, lr=cfg.lr, schedule=cfg.lr_schedule, warmup=0, weight_decay=0.01, generator=generator
    )
    train_toy_model(model, density_I, importance_N, steps=3, **run)  # warm-up
    started = time.perf_counter()
    train_toy_model(model, density_I, importance_N, steps=steps, **run)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cfg = ToyConfig.preset(args.preset)
    table = Table(
        title=f"toy sweep '{args.preset}': {cfg.n_sparsities} sparsities × batch {cfg.batch_size} × "
        f"n={cfg.n_features}, m={cfg.n_hidden}, {cfg.steps} steps"
    )
    for column in ("threads", "s/step", "sweep (projected s)"):
        table.add_column(column, justify="right")
    for threads in sorted({1, 2, torch.get_num_threads()}):
        with cpu_threads(threads):
            per_step = seconds_per_step(cfg, args.steps)
        table.add_row(str(threads), f"{per_step:.4f}", f"{per_step * cfg.steps:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
