"""Activation store throughput: writing, sequential chunks, shuffled batches and random row reads.

    python benchmarks/activation_reader.py [--rows 1048576] [--d-in 512] [--buffer-rows 262144]

Writes a temporary store per dtype (``--rows`` × ``--d-in``, deleted afterwards) and prints rows/s
for each way of reading it: the best of ``--repeats`` runs, after one warm-up pass. By default the
shuffle buffer is smaller than the store, so shuffled reading takes the streamed path (random
blocks read from disk by the background thread), not the in-RAM one.
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


def best_rate(read, repeats: int) -> str:
    """Rows/s of the fastest of ``repeats`` calls of ``read()`` (which returns the rows it read)."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = read()
        best = max(best, rows / (time.perf_counter() - t0))
    return f"{best:>14,.0f}"


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
    results.append((dtype, "write (append 65,536-row chunks)", f"{args.rows / (time.perf_counter() - t0):>14,.0f}"))

    store = ActivationStore(path)
    store.mean()  # warm-up: the first read after writing competes with the kernel's write-back
    sequential = lambda: sum(len(acts) for _, acts in store.iter_chunks(chunk))  # noqa: E731
    results.append((dtype, "sequential iter_chunks(65,536)", best_rate(sequential, args.repeats)))

    for batch_size in args.batch_sizes:
        n_batches = args.rows // batch_size
        shuffled = lambda batch_size=batch_size, n_batches=n_batches: sum(  # noqa: E731
            len(b) for b in store.shuffled_batches(batch_size, 0, args.buffer_rows, n_batches=n_batches)
        )
        label = f"shuffled batch {batch_size:,} (buffer {args.buffer_rows:,})"
        results.append((dtype, label, best_rate(shuffled, args.repeats)))

    idx_N = np.random.default_rng(1).integers(0, args.rows, 8192)
    random_rows = lambda: len(store.rows(idx_N))  # noqa: E731
    results.append((dtype, "random rows(8,192 indices)", best_rate(random_rows, args.repeats)))
    shutil.rmtree(path)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2**20)
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--buffer-rows", type=int, default=2**18)
    parser.add_argument("--repeats", type=int, default=2, help="report the best of this many runs")
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
