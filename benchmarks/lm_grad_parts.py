"""What backpropagating the LM's batch in ``lm.grad_parts`` parts costs one process: tokens/s by P.

    python benchmarks/lm_grad_parts.py                       # the demo preset's LM, P = 1, 2, 8
    python benchmarks/lm_grad_parts.py --preset paper --parts 1 8 --device cuda

``lm.grad_parts`` = P cuts every step's batch into P equal parts, each backpropagated on its own, so
that torchrun over N ranks (N a power of 2 dividing P) trains the one-process LM bit for bit
(``lm/grad_tree.py``). One process then runs P smaller forward/backward passes per step instead of
one. This trains the preset's LM config (its width, batch and context) for ``--steps`` steps on the
tiny preset's corpus (built first, from the bundled text; its vocabulary is the tiny preset's, so
the unembedding is smaller than the preset's own) once per P, in turn, ``--repeats`` times, and
prints the median tokens/s and its ratio to P = 1. Single process only: nothing here is distributed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from monosemantic import pipeline
from monosemantic.config import load_config
from monosemantic.device import resolve_device
from monosemantic.lm.train import train_lm
from monosemantic.progress import set_quiet


def tokens_per_second(preset: str, parts: int, steps: int, tokens_dir: Path, device: str) -> float:
    lm = load_config(preset).lm.model_copy(
        update={"grad_parts": parts, "n_steps": steps, "eval_every": steps + 1, "checkpoint_every": steps + 1}
    )
    with tempfile.TemporaryDirectory() as folder:
        _, figures = train_lm(lm, tokens_dir, Path(folder) / "ckpt.pt", resolve_device(device))
    return steps * lm.batch_size * lm.n_ctx / figures["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="whose LM config to train")
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_quiet(True)
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        pipeline.run(load_config("tiny"), run, "corpus")
        rates: dict[int, list[float]] = {p: [] for p in args.parts}
        for _ in range(args.repeats):
            for p in args.parts:  # in turn, so that a changing load weighs on every P alike
                rates[p].append(tokens_per_second(args.preset, p, args.steps, run / "tokens", args.device))
    lm = load_config(args.preset).lm
    print(
        f"{args.preset} LM: d_model {lm.d_model}, batch {lm.batch_size} × {lm.n_ctx} tokens, {args.steps} steps, "
        f"{args.device}, median of {args.repeats}"
    )
    base = statistics.median(rates[args.parts[0]])
    print(f"{'grad_parts':>10} {'windows/part':>12} {'tokens/s':>10} {'× first':>8}")
    for p in args.parts:
        rate = statistics.median(rates[p])
        print(f"{p:>10} {lm.batch_size // p:>12} {rate:>10,.0f} {rate / base:>8.2f}")


if __name__ == "__main__":
    main()
