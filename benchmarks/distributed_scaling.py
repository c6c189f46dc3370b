"""Throughput at world size 1 and 2 on CPU/Gloo: SAE samples/s, LM and harvest tokens/s, scaling efficiency.

    python benchmarks/distributed_scaling.py                       # tiny sizes, about a minute
    python benchmarks/distributed_scaling.py --only streamed    # the streamed rows alone
    python benchmarks/distributed_scaling.py --d 512 --f 16384 --sae-batch 4096 --lm-d-model 128

Every measurement runs in fresh processes (``distributed.run_local_world``: a Gloo world on
127.0.0.1, one CPU thread per rank), world size 1 included, through the same code as
``torchrun … monosemantic run``; the rate is rank 0's, timed inside the training loop or around the
harvest. Efficiency = rate at 2 / (2 × rate at 1): 100 % is perfect scaling. Rows:

- SAE data-parallel (TopK): each rank half of every batch, gradients all-reduced;
- SAE dictionary-parallel (TopK, ``sae.shard=latents``): each rank half of the latents;
- an SAE sweep of two sizes (F/2 and F), every size data-parallel or one size per rank
  (``sae.shard=sizes``, no communication; the wall time is the slower rank's);
- LM (the 1-layer transformer, DDP): each rank half of every batch of windows;
- harvest: each rank half of the windows, parts joined by rank 0;
- SAE data-parallel on streamed activations (``harvest.stream_train``, an untrained LM of the LM
  row's width): each rank runs the LM on the windows of its half of every batch;
- analysis (the tiny preset's run, trained first: about a minute): each rank computes the
  statistics of half of every basis's units (reading and encoding every token) and scores its alive
  units (forking cores/N processes, as ``monosemantic run`` does), rank 0 joins them and writes the
  store; rows (tokens) analysed per second of the whole stage, and of its statistics pass alone
  (both sweeps and rank 0's gathering of the parts, ``statistics_seconds`` in run.json);
- analysis statistics on a synthetic store (``analysis_stats.py``'s: D = 512 ReLU activations and a
  random SAE firing 30 features per row), large enough for the statistics pass to be the work: each
  rank the statistics of half of the neurons' and the features' units, joined by rank 0.

Then the share of the windows a rank runs the LM on when streaming (``ActivationStream``'s
``part``), against one process, at N = 2, 4, 8 ranks: 1/N is perfect, above it the windows a rank
runs for a few rows near its share's edge in some batch.

Then the largest dictionary one device holds for dictionary-parallel TopK training, by arithmetic,
not measurement: per latent, W_enc's column, W_dec's row and b_enc's entry in fp32 with their
gradients and two Adam moments (16·(2D+1) bytes), plus the batch's fp32 pre-activations (4·B bytes);
N ranks hold N times as many.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from monosemantic.distributed import SINGLE, World, run_local_world


def sae_rate(world: World, d: int, f: int, batch: int, steps: int, shard: str) -> float:
    from monosemantic.progress import set_quiet
    from monosemantic.sae import SAEConfig, train_sae

    set_quiet(True)
    cfg = SAEConfig(variant="topk", d_in=d, d_sae=f, k=32, n_samples=batch * steps, batch_size=batch)
    g = torch.Generator().manual_seed(0)
    pool = [torch.randn(batch, d, generator=g) for _ in range(4)]
    result = train_sae(cfg, itertools.islice(itertools.cycle(pool), steps), pool[0], world=world, shard=shard)
    return batch * steps / result.train_seconds


def sweep_rate(world: World, d: int, sizes: list[int], batch: int, steps: int, by_size: bool) -> float:
    """Samples/s of a whole sweep: every size data-parallel, or each rank its share of the sizes alone."""
    mine = sizes[world.rank :: world.size] if by_size else sizes
    started = time.perf_counter()
    for f in mine:
        sae_rate(SINGLE if by_size else world, d, f, batch, steps, "batch")
    world.barrier()
    return len(sizes) * batch * steps / (time.perf_counter() - started)


def lm_rate(world: World, tokens_dir: Path, d_model: int, batch: int, steps: int) -> float:
    from monosemantic.config import load_config
    from monosemantic.lm.train import train_lm
    from monosemantic.progress import set_quiet

    set_quiet(True)
    lm = load_config("tiny").lm
    cfg = lm.model_copy(
        update={
            "d_model": d_model,
            "d_mlp": 4 * d_model,
            "batch_size": batch,
            "n_steps": steps,
            "eval_every": steps,
            "checkpoint_every": steps + 1,
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        _, figures = train_lm(cfg, tokens_dir, Path(folder) / "ckpt.pt", "cpu", world)
    return steps * batch * cfg.n_ctx / figures["train_seconds"]


def harvest_rate(world: World, tokens_dir: Path, d_model: int, n_tokens: int, out: Path) -> float:
    from monosemantic.activations.harvest import harvest_activations
    from monosemantic.config import load_config
    from monosemantic.corpus.shards import TokenShards
    from monosemantic.lm.model import build_lm
    from monosemantic.progress import set_quiet

    set_quiet(True)
    lm = load_config("tiny").lm.model_copy(update={"d_model": d_model, "d_mlp": 4 * d_model})
    shards = TokenShards(tokens_dir, "train")
    model = build_lm(lm, shards.vocab_size).eval()
    started = time.perf_counter()
    figures = harvest_activations(model, shards, lm.hook_name, n_tokens, lm.n_ctx, 64, out, world=world)
    return figures["rows"] / (time.perf_counter() - started)


def _lm_stream(tokens_dir: Path, d_model: int):
    from monosemantic.activations.stream import ActivationStream
    from monosemantic.config import load_config
    from monosemantic.corpus.shards import TokenShards
    from monosemantic.lm.model import build_lm

    lm = load_config("tiny").lm.model_copy(update={"d_model": d_model, "d_mlp": 4 * d_model})
    shards = TokenShards(tokens_dir, "train")
    torch.manual_seed(0)
    return ActivationStream(build_lm(lm, shards.vocab_size).eval(), shards, lm.hook_name, lm.n_ctx)


def streamed_sae_rate(world: World, tokens_dir: Path, d_model: int, f: int, batch: int, steps: int) -> float:
    """Samples/s of TopK trained on activations the LM makes on the fly, each rank its part of every batch."""
    from monosemantic.progress import set_quiet
    from monosemantic.sae import SAEConfig, train_sae

    set_quiet(True)
    stream = _lm_stream(tokens_dir, d_model)
    cfg = SAEConfig(variant="topk", d_in=stream.d_in, d_sae=f, k=32, n_samples=batch * steps, batch_size=batch)
    part = (world.rank, world.size)

    def batches(start: int):
        return stream.shuffled_batches(batch, 0, 8 * batch, steps, start_batch=start, part=part)

    result = train_sae(cfg, batches, stream.sample_rows(1024, 1), world=world, rank_rows=world.size > 1)
    return batch * steps / result.train_seconds


def window_share(tokens_dir: Path, d_model: int, batch: int, buffer_rows: int, size: int, n_batches: int) -> float:
    """The largest share, over ranks, of the windows one process runs that a rank of ``size`` runs."""
    stream = _lm_stream(tokens_dir, d_model)
    run = []
    original = stream._activations
    stream._activations = lambda windows_BT: run.append(len(windows_BT)) or original(windows_BT)
    counts = []
    for part in [(0, 1)] + [(rank, size) for rank in range(size)]:
        run.clear()
        for _ in stream.shuffled_batches(batch, 0, buffer_rows, n_batches, part=part):
            pass
        counts.append(sum(run))
    return max(counts[1:]) / counts[0]


def largest_f(device_gib: float, d: int, batch: int) -> int:
    """Latents one device holds while training dictionary-parallel TopK (module docstring)."""
    return int(device_gib * 2**30 // (16 * (2 * d + 1) + 4 * batch))


ANALYSIS_ROW = "analysis (tiny preset)"
STATISTICS_ROW = "analysis statistics pass (tiny preset)"


def analysis_rate(world: World, run: Path, statistics_only: bool) -> float:
    from monosemantic.analysis.analyze import analyze_run
    from monosemantic.config import load_config
    from monosemantic.progress import set_quiet
    from monosemantic.stages import sweep_saes

    set_quiet(True)
    cfg = load_config("tiny")
    names = [name for saes in sweep_saes(cfg).values() for name, _ in saes]
    started = time.perf_counter()
    figures = analyze_run(run, names, cfg.analysis, "cpu", world=world)
    if not world.is_main:
        return 0.0
    return figures["n_tokens"] / (figures["statistics_seconds"] if statistics_only else time.perf_counter() - started)


def statistics_rate(world: World, store_path: Path, n_features: int) -> float:
    """Rows per second of the statistics pass over neurons and a random sparse SAE, parts joined on rank 0."""
    from analysis_stats import sparse_random_sae  # the statistics benchmark's stand-in for a trained SAE

    from monosemantic.activations import ActivationStore
    from monosemantic.analysis.stats import (
        Basis,
        StatsConfig,
        analysed_rows,
        compute_unit_stats,
        join_unit_stats,
        read_token_context,
    )
    from monosemantic.progress import set_quiet

    set_quiet(True)
    store = ActivationStore(store_path)
    n_rows, ctx = analysed_rows(store, store.n_rows)
    text = read_token_context(store, n_rows, ctx)
    sae = sparse_random_sae(n_features, 30, store.rows(np.arange(min(4096, n_rows))), seed=0)
    bases = [Basis("neurons", "neuron", store.d_in, lambda x: x), Basis("sae", "feature", n_features, sae.encode)]
    started = time.perf_counter()
    parts = compute_unit_stats(
        store, bases, text, int(text.tokens_N.max()) + 1, StatsConfig(n_rows=n_rows), world=world
    )
    gathered = world.gather_to_main(parts)
    if not world.is_main:
        return 0.0
    joined = [join_unit_stats(list(p)) for p in zip(*gathered)]
    seconds = time.perf_counter() - started
    assert [s.n_units for s in joined] == [store.d_in, n_features]
    return n_rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=128, help="SAE input width")
    parser.add_argument("--f", type=int, default=4096, help="SAE dictionary size")
    parser.add_argument("--sae-batch", type=int, default=1024)
    parser.add_argument("--sae-steps", type=int, default=40)
    parser.add_argument("--lm-d-model", type=int, default=64)
    parser.add_argument("--lm-batch", type=int, default=32)
    parser.add_argument("--lm-steps", type=int, default=20)
    parser.add_argument("--harvest-tokens", type=int, default=65_536)
    parser.add_argument("--stats-features", type=int, default=4096, help="SAE size of the synthetic statistics row")
    parser.add_argument("--stats-rows", type=int, default=16_384, help="rows of the synthetic statistics row")
    parser.add_argument("--only", default="", help="measure only the rows whose name contains this text")
    parser.add_argument("--device-gib", type=float, default=80.0, help="device memory for the largest-F estimate")
    args = parser.parse_args()

    from monosemantic import pipeline
    from monosemantic.config import load_config
    from monosemantic.progress import set_quiet

    set_quiet(True)
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        analysis = any(args.only in row for row in (ANALYSIS_ROW, STATISTICS_ROW))  # train the tiny run's SAEs
        pipeline.run(load_config("tiny"), run, "sae" if analysis else "corpus")  # on the bundled corpus
        tokens = run / "tokens"
        synthetic_row = f"analysis statistics (synthetic, F={args.stats_features}, {args.stats_rows:,} rows)"
        if args.only in synthetic_row:
            from analysis_stats import write_store

            write_store(Path(folder) / "stats_store", args.stats_rows, seed=0)
        rows = [
            (
                f"SAE data-parallel (D={args.d}, F={args.f}, B={args.sae_batch})",
                "samples/s",
                lambda n: run_local_world(sae_rate, (args.d, args.f, args.sae_batch, args.sae_steps, "batch"), n, 600),
            ),
            (
                f"SAE dictionary-parallel (D={args.d}, F={args.f}, B={args.sae_batch})",
                "samples/s",
                lambda n: run_local_world(
                    sae_rate, (args.d, args.f, args.sae_batch, args.sae_steps, "latents"), n, 600
                ),
            ),
            (
                f"SAE sweep F={args.f // 2}+{args.f}, data-parallel",
                "samples/s",
                lambda n: run_local_world(
                    sweep_rate, (args.d, [args.f // 2, args.f], args.sae_batch, args.sae_steps, False), n, 600
                ),
            ),
            (
                f"SAE sweep F={args.f // 2}+{args.f}, one size per rank",
                "samples/s",
                lambda n: run_local_world(
                    sweep_rate, (args.d, [args.f // 2, args.f], args.sae_batch, args.sae_steps, True), n, 600
                ),
            ),
            (
                f"LM DDP (d_model={args.lm_d_model}, batch {args.lm_batch}×32)",
                "tokens/s",
                lambda n: run_local_world(lm_rate, (tokens, args.lm_d_model, args.lm_batch, args.lm_steps), n, 600),
            ),
            (
                f"harvest (d_model={args.lm_d_model}, {args.harvest_tokens:,} tokens)",
                "tokens/s",
                lambda n: run_local_world(
                    harvest_rate, (tokens, args.lm_d_model, args.harvest_tokens, Path(folder) / f"acts{n}"), n, 600
                ),
            ),
            (
                f"SAE streamed (LM d_model={args.lm_d_model}, F={args.f}, B={args.sae_batch})",
                "samples/s",
                lambda n: run_local_world(
                    streamed_sae_rate, (tokens, args.lm_d_model, args.f, args.sae_batch, args.sae_steps), n, 600
                ),
            ),
            (ANALYSIS_ROW, "rows/s", lambda n: run_local_world(analysis_rate, (run, False), n, 600)),
            (STATISTICS_ROW, "rows/s", lambda n: run_local_world(analysis_rate, (run, True), n, 600)),
            (
                synthetic_row,
                "rows/s",
                lambda n: run_local_world(statistics_rate, (Path(folder) / "stats_store", args.stats_features), n, 600),
            ),
        ]
        print(f"CPU/Gloo, one thread per rank; torch {torch.__version__}; {os.cpu_count()} CPU cores here")
        print(f"| {'what':<52} | {'unit':<9} | {'world 1':>10} | {'world 2':>10} | speed-up | efficiency |")
        print(f"|{'-' * 54}|{'-' * 11}|{'-' * 12}|{'-' * 12}|{'-' * 10}|{'-' * 12}|")
        for what, unit, measure in [row for row in rows if args.only in row[0]]:
            one, two = measure(1)[0], measure(2)[0]
            speedup = two / one
            print(
                f"| {what:<52} | {unit:<9} | {one:>10,.0f} | {two:>10,.0f} | {speedup:>7.2f}× | {speedup / 2:>10.0%} |"
            )
            sys.stdout.flush()
        groups = [(args.sae_batch, 8 * args.sae_batch), (4096, 2**16)]
        print("\nStreamed: windows a rank runs the LM on / windows one process runs (largest over the ranks)")
        for batch, buffer_rows in groups:
            shares = {
                n: window_share(tokens, args.lm_d_model, batch, buffer_rows, n, 2**17 // batch) for n in (2, 4, 8)
            }
            listed = ", ".join(f"N={n}: {share:.3f} (1/N={1 / n:.3f})" for n, share in shares.items())
            print(f"  batch {batch:,} rows, groups of {buffer_rows // 32:,} windows of 32 tokens: {listed}")
    per_device = largest_f(args.device_gib, 512, 4096)
    print(
        f"\nLargest F per {args.device_gib:g} GiB device, dictionary-parallel TopK at D=512, B=4096 (arithmetic): "
        f"{per_device:,} latents; 8 devices: {8 * per_device:,}"
    )


if __name__ == "__main__":
    main()
