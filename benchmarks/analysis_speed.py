"""Where the analysis stage's time goes: seconds per part of ``analyze_run`` on one device.

Builds a small run (the tiny preset's corpus, LM and harvest stages, with ``--d-mlp`` neurons and
``--val-tokens`` held-out tokens, plus random SAEs of ``--features`` sizes thresholded to fire on
``--l0`` features per token like a trained one), or takes an existing run with ``--run`` and
``--saes``; then runs ``analyze_run`` ``--repeats`` times on ``--device`` with a timer around each
part and prints the median seconds per part (parts nest: a child's time is inside its parent's).
On CUDA each timer synchronises the device, so a part's seconds include its kernels. The offline
autointerp scoring runs in ``--processes`` forked processes (default 1 here; the analysis stage
uses every available core).

    python benchmarks/analysis_speed.py --device cpu --repeats 3
    python benchmarks/analysis_speed.py --profile   # also cProfile's top functions of one more run
    # the paper preset's analysis (200k held-out tokens, vocabulary 8192, dictionaries of 4096 and 16384):
    python benchmarks/analysis_speed.py --device cuda --val-tokens 200000 --vocab 8192 --features 4096 16384 --repeats 1
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from analysis_stats import sparse_random_sae

from monosemantic import pipeline
from monosemantic.activations import ActivationStore
from monosemantic.analysis import analyze, sampling, stats
from monosemantic.analysis.config import AnalysisConfig
from monosemantic.config import load_config
from monosemantic.device import resolve_device
from monosemantic.progress import set_quiet
from monosemantic.sae.io import save_sae

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze") for b in ("n", "r", "s", "")]

# (label, depth, owner, attribute): the parts timed, in print order; a missing attribute is skipped
PARTS = [
    ("analyze_run (total)", 0, analyze, "analyze_run"),
    ("unit statistics (both sweeps)", 1, analyze, "compute_unit_stats"),
    ("store read", 2, stats.ActivationStore, "read_range"),
    ("sweep 1", 2, stats._Sweep1, "update"),
    ("top-k offer", 3, sampling.GroupedBottomK, "offer"),
    ("count matrices add", 3, stats._MatrixSum, "add"),
    ("co-firing", 3, stats._Sweep1, "_count_cofiring"),
    ("sweep 2 setup (flush, fill-up, context tokens)", 2, stats._Sweep2, "__init__"),
    ("sweep 2", 2, stats._Sweep2, "update"),
    ("interval offer", 3, sampling.GroupedBottomK, "offer"),
    ("token contexts", 3, stats._Sweep2, "_add_token_contexts"),
    ("results to host", 2, stats._Sweep2, "result"),
    ("examples", 1, analyze, "_examples"),
    ("autointerp scoring", 1, analyze, "_score_units"),
    ("store writing (dictionary)", 1, analyze, "_write_dictionary"),
    ("store writing (contexts)", 1, analyze, "_write_contexts"),
]
ENCODE = ("encode (every basis)", 2)


def synthetic_corpus(path: Path, n_words: int, seed: int) -> None:
    """Documents of random pseudo-words with a little repeated structure (enough for a BPE vocabulary)."""
    rng = random.Random(seed)
    docs, words = [], 0
    while words < n_words:
        n = rng.randint(50, 400)
        docs.append(" ".join(rng.choice(WORDS[: rng.randint(8, len(WORDS))]) for _ in range(n)) + ".")
        words += n
    path.write_text("\n\n\n".join(docs))


def build_run(root: Path, args) -> tuple[Path, list[str]]:
    corpus = root / "corpus.txt"
    synthetic_corpus(corpus, int(args.val_tokens / 0.2 * 1.2), args.seed)
    overrides = [
        f"corpus.corpus={corpus}",
        "corpus.val_fraction=0.2",
        f"corpus.vocab_size={args.vocab}",
        f"lm.d_mlp={args.d_mlp}",
        "lm.n_ctx=128",
        f"harvest.n_val_tokens={args.val_tokens}",
        "harvest.batch_size=64",
    ]
    run = root / "run"
    pipeline.run(load_config("tiny", overrides=overrides), run, "harvest")
    store = ActivationStore(run / "activations" / "val")
    sample_ND = store.rows(np.arange(min(4096, store.n_rows))).float()
    names = []
    for n_features in args.features:
        sae = sparse_random_sae(n_features, args.l0, sample_ND, args.seed)
        names.append(f"random-{n_features}")
        save_sae(sae, sae.cfg, run / "saes" / names[-1])
    return run, names


class Timers:
    """Wraps each part's function so that its calls add their wall time to ``seconds[label]``
    (``one_analysis`` puts the originals back)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, defaultdict(float)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, label: str, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            self.sync()
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.sync()
                self.seconds[label] += time.perf_counter() - t

        return wrapper

    def install(self) -> None:
        for label, _, owner, attr in PARTS:
            if label not in ("top-k offer", "interval offer") and hasattr(owner, attr):
                setattr(owner, attr, self.timed(label, getattr(owner, attr)))
        offer = sampling.GroupedBottomK.offer  # one function, two parts: split by which sweep calls it
        sweep2_update = stats._Sweep2.update
        in_sweep2 = [False]

        def offer_by_sweep(sampler, *a, **kw):
            return self.timed("interval offer" if in_sweep2[0] else "top-k offer", offer)(sampler, *a, **kw)

        def sweep2(*a, **kw):
            in_sweep2[0] = True
            try:
                return sweep2_update(*a, **kw)
            finally:
                in_sweep2[0] = False

        sampling.GroupedBottomK.offer, stats._Sweep2.update = offer_by_sweep, sweep2
        bases = analyze._bases

        def timed_bases(*a, **kw):
            found, saes = bases(*a, **kw)
            for basis in found:
                basis.encode = self.timed(ENCODE[0], basis.encode)
            return found, saes

        analyze._bases = timed_bases


def one_analysis(
    run: Path, names: list[str], cfg: AnalysisConfig, device: torch.device, processes: int
) -> dict[str, float]:
    timers = Timers(device)
    originals = {(o, a): getattr(o, a) for _, _, o, a in PARTS if hasattr(o, a)}
    originals[(analyze, "_bases")] = analyze._bases
    timers.install()
    try:
        analyze.analyze_run(run, names, cfg, device=str(device), processes=processes)
    finally:
        for (owner, attr), fn in originals.items():
            setattr(owner, attr, fn)
    return dict(timers.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing run directory (else a small one is built)")
    parser.add_argument("--saes", nargs="*", default=None, help="with --run: the SAEs RUN/saes/<name> to analyse")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--val-tokens", type=int, default=16_384, help="held-out tokens of the built run")
    parser.add_argument("--n-tokens", type=int, default=None, help="tokens analysed (default: the whole store)")
    parser.add_argument("--d-mlp", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--features", type=int, nargs="+", default=[2048])
    parser.add_argument("--l0", type=float, default=30)
    parser.add_argument("--scored-units", type=int, default=16, help="units in the score comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1, help="forked processes of the offline scoring")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 30 functions of one more run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            run, names = args.run, list(args.saes or [])
        else:
            run, names = build_run(Path(tmp), args)
        n_rows = ActivationStore(run / "activations" / "val").n_rows
        cfg = AnalysisConfig(n_tokens=args.n_tokens or n_rows, n_scored_units=args.scored_units)
        runs = [one_analysis(run, names, cfg, device, args.processes) for _ in range(args.repeats)]
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(analyze.analyze_run, run, names, cfg, device=str(device), processes=args.processes)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
            print(out.getvalue())
        n_analysed = stats.analysed_rows(ActivationStore(run / "activations" / "val"), cfg.n_tokens)[0]
    sizes = ", ".join(names) or "neurons only"
    print(
        f"\nanalysis stage on {device} ({args.threads} threads, {args.processes} scoring processes, torch "
        f"{torch.__version__}): {n_analysed:,} tokens, "
        f"neurons + {sizes}; median of {args.repeats} repeats"
    )
    print("part | seconds (median) | min | max | rows/s")
    print("--- | --- | --- | --- | ---")
    labels = [(label, depth) for label, depth, owner, attr in PARTS if hasattr(owner, attr)]
    labels.insert(2, ENCODE)
    for label, depth in labels:
        values = [r.get(label, 0.0) for r in runs]
        median = float(np.median(values))
        rate = f"{n_analysed / median:,.0f}" if median > 0 else "-"
        print(f"{'  ' * depth}{label} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | {rate}")


if __name__ == "__main__":
    main()
