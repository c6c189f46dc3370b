"""Does each SAE variant find a known dictionary? MMCS and recovery on synthetic activations.

    python benchmarks/sae_synthetic.py                        # d=128, 1024 true features, F=2048
    python benchmarks/sae_synthetic.py --demo                 # the demo preset's 4 sizes at d=512

Data: ``monosemantic.sae.synthetic.SyntheticFeatures`` (random unit dictionary, log-uniform firing
rates over two decades, exponential magnitudes, small noise). For each variant we print mean max
cosine similarity (MMCS) of the true features against the learned decoder rows, the fraction
recovered at cosine > 0.9, and FVU / L0 / dead fraction on held-out samples, with wall time.
``--demo`` instead trains the sizes of ``monosemantic run``'s demo preset with the proposed demo
hyperparameters and reports what the SAE stage would cost and deliver. Timings on a shared
machine are noisy.
"""

from __future__ import annotations

import argparse
import time

import torch

from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae
from monosemantic.sae.metrics import evaluate_sae
from monosemantic.sae.synthetic import SyntheticFeatures, mmcs, recovered_fraction

VARIANT_PARAMS = {  # for the default d=128 setting
    "standard": {"l1_coeff": 0.1},
    "topk": {"k": 16},
    "batchtopk": {"k": 16},
    "jumprelu": {"l0_coeff": 3e-3},
}
DEMO_PARAMS = {"standard": {}, "topk": {"k": 16}, "batchtopk": {"k": 16}, "jumprelu": {}}  # d=512: config defaults


def _row(label: str, syn: SyntheticFeatures, cfg: SAEConfig, held_out: list[torch.Tensor]) -> None:
    init = syn.sample(8192, torch.Generator().manual_seed(99))
    n_batches = cfg.n_samples // cfg.batch_size + cfg.resample_inputs // cfg.batch_size + 2
    started = time.perf_counter()
    result = train_sae(cfg, syn.batches(cfg.batch_size, n_batches, seed=cfg.seed + 1), init)
    seconds = time.perf_counter() - started
    stats = evaluate_sae(result.sae, held_out)
    decoder = result.sae.W_dec.detach()
    print(
        f"{label:<22}{mmcs(decoder, syn.dictionary_GD):>7.3f}{recovered_fraction(decoder, syn.dictionary_GD):>9.3f}"
        f"{stats['fvu']:>8.3f}{stats['l0']:>8.1f}{stats['dead_frac']:>7.1%}{seconds:>8.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--true-features", type=int, default=1024)
    parser.add_argument("--sae-size", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mean-active", type=float, default=8.0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANT_PARAMS))
    parser.add_argument("--demo", action="store_true", help="demo preset: d=512, F=512…4096")
    parser.add_argument("--demo-samples", type=int, default=250_000)
    args = parser.parse_args()
    set_quiet(True)
    header = f"{'':<22}{'MMCS':>7}{'rec>0.9':>9}{'FVU':>8}{'L0':>8}{'dead':>7}{'sec':>8}"

    if args.demo:
        syn = SyntheticFeatures(d=512, n_features=8192, mean_active=16.0, seed=0)
        held_out = list(syn.batches(4096, 4, seed=123))
        print(
            f"Demo preset on synthetic d=512, 8192 true features; {args.demo_samples:,} samples, "
            f"batch {args.batch}, lr {args.lr}"
        )
        print(header)
        for variant in args.variants:
            for size in (512, 1024, 2048, 4096):
                cfg = SAEConfig(
                    variant=variant,
                    d_in=512,
                    d_sae=size,
                    n_samples=args.demo_samples,
                    batch_size=args.batch,
                    lr=args.lr,
                    **DEMO_PARAMS[variant],
                )
                _row(f"{variant} F={size}", syn, cfg, held_out)
        return

    syn = SyntheticFeatures(d=args.d, n_features=args.true_features, mean_active=args.mean_active, seed=0)
    held_out = list(syn.batches(4096, 4, seed=123))
    print(
        f"Synthetic d={args.d}, {args.true_features} true features, F={args.sae_size}, "
        f"{args.samples:,} samples, batch {args.batch}, lr {args.lr}, mean active {args.mean_active}"
    )
    print(header)
    for variant in args.variants:
        cfg = SAEConfig(
            variant=variant,
            d_in=args.d,
            d_sae=args.sae_size,
            n_samples=args.samples,
            batch_size=args.batch,
            lr=args.lr,
            **VARIANT_PARAMS[variant],
        )
        _row(variant, syn, cfg, held_out)


if __name__ == "__main__":
    main()
