"""What checking a run directory against run.json costs: sizes only, and full BLAKE2b digests.

    python benchmarks/integrity_cost.py [--run runs/demo] [--preset demo] [--sqlite-mb 150] [--repeats 3]

With ``--run`` it measures a finished run directory as it is. Without, it writes a stand-in for a
run of ``--preset`` into a temporary folder: a file of random bytes for each artifact, sized from
the preset's config (token shards at 2 bytes per token of the bundled corpus, the LM's and every
SAE's float32 weights, the activation stores' float32 rows and int64 origins, universality's second
LM, activations and SAEs), plus a feature store of ``--sqlite-mb`` (its size depends on the
analysis, so it is an assumption). Prints the seconds, best of ``--repeats``, of each check that
``run`` and the readers make, with the files in the OS page cache (a cold disk reads slower).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from monosemantic.config import load_config
from monosemantic.integrity import LARGE_FILE_BYTES, TRAINING_ONLY, mismatches, record

BUNDLED_TRAIN_TOKENS = 10_929_449  # the bundled corpus at vocab 4,096 (README, "What the default run produces")


def write_random(path: Path, n_bytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for start in range(0, n_bytes, len(block)):
            f.write(block[: min(len(block), n_bytes - start)])


def stand_in_run(root: Path, preset: str, sqlite_mb: int) -> None:
    """Files of a ``preset`` run's artifact sizes, and a run.json recording their digests."""
    cfg = load_config(preset)
    d_mlp, d_model, vocab = cfg.lm.d_mlp, cfg.lm.d_model, cfg.corpus.vocab_size
    lm_params = (
        2 * vocab * d_model + cfg.lm.n_ctx * d_model + cfg.lm.n_layers * (4 * d_model * d_model + 2 * d_model * d_mlp)
    )
    sizes = {
        "tokenizer.json": 300_000,
        "tokens/train_000.npy": 2 * BUNDLED_TRAIN_TOKENS,
        "lm/model.safetensors": 4 * lm_params,
        "features.sqlite": sqlite_mb << 20,
    }
    for split, n in (("train", cfg.harvest.n_train_tokens), ("val", cfg.harvest.n_val_tokens)):
        sizes[f"activations/{split}/acts_00000.bin"] = 4 * n * d_mlp
        sizes[f"activations/{split}/origin_00000.bin"] = 32 * n
    for size in cfg.sae.sizes:
        sizes[f"saes/{cfg.sae.variant}-{size}/sae_weights.safetensors"] = 4 * (2 * size * d_mlp + size + d_mlp)
    biggest = 4 * (2 * max(cfg.sae.sizes) * d_mlp)
    sizes.update(
        {
            f"model_b/saes/{cfg.sae.variant}-{max(cfg.sae.sizes)}/sae_weights.safetensors": biggest,
            f"sae_reseed/saes/{cfg.sae.variant}-{max(cfg.sae.sizes)}/sae_weights.safetensors": biggest,
        }
    )
    for rel, n in sizes.items():
        write_random(root / rel, n)
    stages = {
        "corpus": ["tokenizer.json", "tokens/train_000.npy"],
        "lm": ["lm/model.safetensors"],
        "harvest": ["activations/train/acts_00000.bin", "activations/val/acts_00000.bin"],
        "sae": [f"saes/{cfg.sae.variant}-{s}/sae_weights.safetensors" for s in cfg.sae.sizes],
        "analysis": ["features.sqlite"],
        "model_b sae": [f"model_b/saes/{cfg.sae.variant}-{max(cfg.sae.sizes)}/sae_weights.safetensors"],
    }
    manifest = {"stages": {name: {"artifacts": record(root, artifacts)} for name, artifacts in stages.items()}}
    (root / "run.json").write_text(json.dumps(manifest))


def best_seconds(check, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        check()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--sqlite-mb", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = None
    if args.run is None:
        tmp = Path(tempfile.mkdtemp(prefix="integrity-cost-"))
        args.run = tmp / "run"
        stand_in_run(args.run, args.preset, args.sqlite_mb)
    stages = json.loads((args.run / "run.json").read_text())["stages"]
    every = {rel: d for s in stages.values() for rel, d in s.get("artifacts", {}).items()}
    readers = {rel: d for rel, d in every.items() if not rel.startswith(TRAINING_ONLY)}
    print(f"run directory: {args.run}" + (f" (stand-in for --preset {args.preset})" if tmp else ""))
    print("| check | files | MB | seconds |")
    print("| --- | ---: | ---: | ---: |")
    for label, files, full, limit in (
        ("sizes only, every artifact", every, False, None),
        ("`run` (digests of files ≤ 256 MiB, sizes of larger ones)", every, True, LARGE_FILE_BYTES),
        ("`run --verify` (digests of every artifact)", every, True, None),
        ("serve / steer / export-html (digests of what they read)", readers, True, None),
    ):
        megabytes = sum(d["bytes"] for d in files.values()) / 1e6
        seconds = best_seconds(
            lambda files=files, full=full, limit=limit: mismatches(args.run, files, full, limit), args.repeats
        )
        print(f"| {label} | {len(files)} | {megabytes:,.0f} | {seconds:.3f} |")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
