"""Dead and ultralow features of a finished run's SAEs, over many more tokens than the held-out store.

The sae stage measures density on the held-out activations (100k tokens in the demo), where a
feature firing once in a million tokens looks dead: the paper's split into dead (never fires) and
ultralow (fires on fewer than 1e-6 of tokens) needs millions of tokens. This streams the first
``--tokens`` training tokens through the run's LM (as ``sae.density_tokens`` does inside the
stage, without retraining) and prints, per SAE, the dead and ultralow fractions there next to the
held-out dead fraction that run.json holds, and the share firing on fewer than 1e-5 of tokens (below
the paper's main cluster, 1e-5 … 1e-3).

    python benchmarks/feature_density.py --run runs/demo --tokens 2000000 [--saes standard-4096]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from monosemantic.activations.stream import ActivationStream
from monosemantic.config import RunConfig
from monosemantic.corpus.shards import TokenShards
from monosemantic.lm.model import load_lm
from monosemantic.pipeline import RunDir
from monosemantic.progress import set_quiet
from monosemantic.sae.io import load_sae
from monosemantic.sae.metrics import ULTRALOW_DENSITY, density_summary, evaluate_sae

BELOW_MAIN_CLUSTER = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--tokens", type=int, default=2_000_000, help="training tokens to stream")
    parser.add_argument("--saes", nargs="+", help="SAE names (default: every SAE of the sae stage)")
    args = parser.parse_args()
    if args.tokens * ULTRALOW_DENSITY <= 1:
        parser.error(f"--tokens must exceed {1 / ULTRALOW_DENSITY:,.0f}: below that one firing is not ultralow")
    set_quiet(True)

    rd = RunDir(args.run)
    cfg = RunConfig(**rd.manifest["config"])
    held_out = {fig["name"]: fig for fig in rd.manifest["sae"]["saes"]}
    stream = ActivationStream(load_lm(rd / "lm"), TokenShards(rd / "tokens", "train"), cfg.lm.hook_name, cfg.lm.n_ctx)

    print(f"{args.run}: feature density over the first {args.tokens:,} training tokens ({cfg.lm.hook_name})\n")
    print("| SAE | held-out tokens | dead there | tokens | dead | ultralow (< 1e-6) | < 1e-5 | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.saes or list(held_out):
        start = time.perf_counter()
        measured = evaluate_sae(load_sae(rd / "saes" / name), stream.token_chunks(args.tokens))
        density_F = measured["density"]
        summary = density_summary(density_F, measured["n_tokens"])
        below = float(((density_F > 0) & (density_F < BELOW_MAIN_CLUSTER)).mean())
        ho = held_out[name]
        print(
            f"| {name} | {ho['n_tokens']:,} | {ho['dead_frac']:.2%} | {summary['n_tokens']:,} "
            f"| {summary['dead_frac']:.2%} | {summary['ultralow_frac']:.2%} | {below:.2%} "
            f"| {time.perf_counter() - start:.0f} |",
            flush=True,
        )
    print(
        f"\nultralow: fired, on fewer than {ULTRALOW_DENSITY:g} of the tokens (Bricken et al.'s cluster; "
        "A/1: 4.1 % dead, 7.1 % ultralow)."
    )


if __name__ == "__main__":
    main()
