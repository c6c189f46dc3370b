"""Activation store throughput: writing, sequential chunks, shuffled batches and random row reads.

    python benchmarks/activation_reader.py [--rows 1048576] [--d-in 512] [--buffer-rows 262144]

Writes a temporary store per dtype (``--rows`` × ``--d-in``, deleted afterwards) and prints rows/s
for each way of reading it. Shuffled reading uses a buffer smaller than the store, so it exercises
the streamed path (random blocks read from disk by the background thread), not the in-RAM one.
Figures are for a store in the OS page cache; a store larger than RAM reads at disk speed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from monosemantic.activations import ActivationStore, ActivationWriter


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:>14,.0f}"


def bench(tmp: Path, dtype: str, args: argparse.Namespace) -> list[tuple[str, str, str]]:
    chunk = 65_536
    rng = np.random.default_rng(0)
    acts_ND = np.maximum(rng.standard_normal((chunk, args.d_in), dtype=np.float32), 0)
    origin_N = np.zeros(chunk, dtype=np.int64)
    path = tmp / f"store-{dtype}"
    results = []

    t0 = time.perf_counter()
    with ActivationWriter(path, args.d_in, "blocks.0.mlp.hook_post", dtype=dtype) as writer:
        for start in range(0, args.rows, chunk):
            n = min(chunk, args.rows - start)
            writer.append(acts_ND[:n], origin_N[:n], origin_N[:n], origin_N[:n], origin_N[:n])
    results.append((dtype, "write (append 65,536-row chunks)", rate(args.rows, time.perf_counter() - t0)))

    store = ActivationStore(path)
    t0 = time.perf_counter()
    n = sum(len(acts) for _, acts in store.iter_chunks(chunk))
    results.append((dtype, "sequential iter_chunks(65,536)", rate(n, time.perf_counter() - t0)))

    for batch_size in args.batch_sizes:
        n_batches = args.rows // batch_size
        t0 = time.perf_counter()
        n = sum(len(b) for b in store.shuffled_batches(batch_size, 0, args.buffer_rows, n_batches=n_batches))
        label = f"shuffled batch {batch_size:,} (buffer {args.buffer_rows:,})"
        results.append((dtype, label, rate(n, time.perf_counter() - t0)))

    idx_N = np.random.default_rng(1).integers(0, args.rows, 8192)
    t0 = time.perf_counter()
    store.rows(idx_N)
    results.append((dtype, "random rows(8,192 indices)", rate(len(idx_N), time.perf_counter() - t0)))
    shutil.rmtree(path)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2**20)
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--buffer-rows", type=int, default=2**18)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the temporary stores")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [r for dtype in ("float32", "float16") for r in bench(Path(tmp), dtype, args)]
    print(f"\nactivation store, {args.rows:,} rows × d_in {args.d_in}\n")
    print(f"{'dtype':<8} {'operation':<44} {'rows/s':>14}")
    for dtype, label, value in rows:
        print(f"{dtype:<8} {label:<44} {value}")


if __name__ == "__main__":
    main()
