"""How fast ``CrossStats`` correlates two sets of units: sparse SAE latents and dense neurons.

Synthetic activations with the sparsity of real ones (each feature fires independently with a
log-uniform density, L0 per token as given), streamed in chunks; prints tokens/s and the projected
time for the issue's target (4096 × 4096 features over 1M tokens). CPU seconds (all threads of
this process) are printed beside wall seconds because a shared machine inflates the latter. Also
times the forced-dense and forced-sparse paths on one chunk, which is how ``SPARSE_COST`` was chosen.

    python benchmarks/correlation_speed.py                 # defaults: 4096×4096, L0 16, 131k tokens
    python benchmarks/correlation_speed.py --tokens 1048576 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from monosemantic.analysis import correlation
from monosemantic.compare.correlation import CrossStats, best_matches


def sparse_latents(n: int, units: int, l0: float, generator: torch.Generator) -> torch.Tensor:
    """[n, units] nonnegative activations, unit u firing with a log-uniform density, mean L0 ``l0``."""
    density_U = 10 ** (-3 * torch.rand(units, generator=generator))
    density_U *= l0 / density_U.sum()
    fires_NU = torch.rand(n, units, generator=generator) < density_U.clamp(max=1)
    return fires_NU * torch.rand(n, units, generator=generator)


def time_run(
    n_tokens: int, n_a: int, n_b: int, l0: float, chunk: int, device: str, dense_units: bool
) -> tuple[float, float, CrossStats]:
    """(wall seconds, process CPU seconds, stats) of streaming ``n_tokens`` synthetic tokens."""
    generator = torch.Generator().manual_seed(0)
    stats = CrossStats(n_a, n_b, device=device)
    seconds = cpu = 0.0
    for _ in range(0, n_tokens, chunk):
        if dense_units:
            a, b = (
                torch.randn(chunk, n_a, generator=generator).relu(),
                torch.randn(chunk, n_b, generator=generator).relu(),
            )
        else:
            a, b = sparse_latents(chunk, n_a, l0, generator), sparse_latents(chunk, n_b, l0, generator)
        start, start_cpu = time.perf_counter(), time.process_time()
        stats.update(a, b)
        if stats.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    start, start_cpu = time.perf_counter(), time.process_time()
    best_matches(stats)
    return seconds + time.perf_counter() - start, cpu + time.process_time() - start_cpu, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131_072)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--neurons", type=int, default=512)
    parser.add_argument("--l0", type=float, default=16.0)
    parser.add_argument("--chunk", type=int, default=16_384)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rows = []
    for label, units, dense in (
        ("SAE features", args.features, False),
        ("neurons (ReLU, ~50% on)", args.neurons, True),
    ):
        seconds, cpu, stats = time_run(args.tokens, units, units, args.l0, args.chunk, args.device, dense)
        rate = args.tokens / seconds
        rows.append(
            (
                f"{label} {units}×{units}",
                f"{args.tokens:,}",
                f"{seconds:.1f}",
                f"{cpu:.1f}",
                f"{rate:,.0f}",
                f"{1_048_576 / rate / 60:.1f}",
                f"{stats.sparse_chunks}/{stats.dense_chunks}",
            )
        )

    generator = torch.Generator().manual_seed(1)
    a, b = (sparse_latents(args.chunk, args.features, args.l0, generator) for _ in range(2))
    path_rows = []
    saved = correlation.SPARSE_COST
    for path, cost in (("sparse", 0.0), ("dense", float("inf"))):
        correlation.SPARSE_COST = cost
        stats = CrossStats(args.features, args.features, device="cpu")
        start = time.perf_counter()
        stats.update(a, b)
        path_rows.append((path, f"{time.perf_counter() - start:.3f}"))
    correlation.SPARSE_COST = saved
    products = float(((a != 0).sum(1).double() * (b != 0).sum(1).double()).sum())

    print(f"device {args.device}, torch threads {torch.get_num_threads()}, L0 {args.l0}, chunk {args.chunk:,}")
    header = ("units", "tokens", "wall s", "CPU s", "tokens/s", "wall min per 1M tokens", "sparse/dense chunks")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(
        f"\none CPU chunk of {args.chunk:,} tokens, {args.features}×{args.features} features, "
        f"{products:,.0f} product terms vs {args.chunk * args.features**2:,.0f} dense multiply-adds:"
    )
    for path, seconds in path_rows:
        print(f"  {path:6s} {seconds} s")


if __name__ == "__main__":
    main()
