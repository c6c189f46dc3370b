"""Throughput and memory of the feature-statistics pass (``analysis/stats.py``).

Synthetic MLP activations (ReLU of Gaussians, D = 512, windows of 128) go into an on-disk store; an
SAE with random unit-norm directions gets per-feature thresholds that make it fire on ``--l0``
features per token on average (like a trained SAE's sparsity). We time ``compute_unit_stats`` (both
sweeps: stats, top-k, interval samples, histograms, co-firing, token counts) for the neurons and
the SAE together, and report rows/s, peak resident memory, and the time 1M tokens would take.

    python benchmarks/analysis_stats.py --features 4096 16384 --rows 65536 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from monosemantic.activations import ActivationStore, ActivationWriter
from monosemantic.analysis.stats import Basis, StatsConfig, analysed_rows, compute_unit_stats, read_token_context
from monosemantic.progress import set_quiet
from monosemantic.sae.build import build_sae
from monosemantic.sae.config import SAEConfig

D, CTX, VOCAB = 512, 128, 4096


def write_store(path: Path, n_rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with ActivationWriter(path, D, "blocks.0.mlp.hook_post", meta={"ctx": CTX}) as writer:
        for start in range(0, n_rows, 16_384):
            n = min(16_384, n_rows - start)
            acts = np.maximum(rng.standard_normal((n, D), dtype=np.float32) - 0.5, 0)
            writer.append(
                acts,
                rng.integers(0, VOCAB, n),
                np.arange(start, start + n) // 700,
                np.arange(start, start + n),
                np.zeros(n, dtype=np.int64),
            )


def sparse_random_sae(n_features: int, l0: float, sample_ND: torch.Tensor, seed: int):
    """Random unit-norm directions with per-feature thresholds: ``l0`` features fire per sample row on average."""
    sae = build_sae(SAEConfig(d_in=sample_ND.shape[1], d_sae=n_features, seed=seed))
    with torch.no_grad():
        sae.b_dec.zero_()
        pre_NF = sample_ND @ sae.W_enc
        sae.b_enc.copy_(-pre_NF.quantile(1 - l0 / n_features, dim=0))
    return sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--l0", type=float, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp) / "store", args.rows, args.seed)
        store = ActivationStore(Path(tmp) / "store")
        n_rows, ctx = analysed_rows(store, args.rows)
        text = read_token_context(store, n_rows, ctx)
        sample_ND = store.rows(np.arange(min(4096, n_rows)))
        for n_features in args.features:
            sae = sparse_random_sae(n_features, args.l0, sample_ND, args.seed)
            bases = [Basis("neurons", "neuron", D, lambda x: x), Basis("sae", "feature", n_features, sae.encode)]
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            start = time.perf_counter()
            stats = compute_unit_stats(store, bases, text, VOCAB, StatsConfig(n_rows=n_rows, seed=args.seed))
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            l0 = stats[1].fire_count_U.sum() / n_rows
            rows.append(
                (
                    n_features,
                    n_rows,
                    l0,
                    seconds,
                    n_rows / seconds,
                    1e6 / (n_rows / seconds) / 60,
                    peak,
                    peak - rss_before,
                    stats[1].cofire_UU.nnz,
                )
            )
    print(
        f"\nfeature-statistics pass (neurons + one SAE, two sweeps), {args.threads} threads, torch {torch.__version__}"
    )
    header = (
        "features",
        "rows",
        "L0",
        "seconds",
        "rows/s",
        "min per 1M rows",
        "peak RSS MB",
        "RSS growth MB",
        "co-firing pairs",
    )
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for f, n, l0, s, rate, per_m, peak, growth, pairs in rows:
        print(f"{f} | {n:,} | {l0:.1f} | {s:.1f} | {rate:,.0f} | {per_m:.1f} | {peak:,.0f} | {growth:,.0f} | {pairs:,}")


if __name__ == "__main__":
    main()
