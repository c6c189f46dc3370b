"""Dense against sparse training steps of the ReLU-family SAEs, by the density of the active latents.

    python benchmarks/sae_sparse_density.py                       # d=1536, F=6144, batch 1024
    python benchmarks/sae_sparse_density.py --d 512 --densities 0.01 0.05 0.2

``standard`` and ``jumprelu`` train densely while many latents are active and sparsely (decoder
and backward over the entries above the floor only, ``SparseAutoencoder.pre_acts_above``) once
few are. For each density (fraction of the B·F pre-activations above the floor, set by shifting
b_enc on Gaussian inputs) this times one training step — ``training_output`` and its backward,
median over ``--repeats`` in one process — with the path forced each way (``sparse_below`` 0 or 1),
and with the bf16 choice of the entries (``select_precision=bfloat16``) where the hardware has it.
The cutoff ``SPARSE_BELOW`` in ``sae/base.py`` is where the sparse step stops being faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.base import bfloat16_matmul_is_fast


def step_seconds(sae, x_BD: torch.Tensor, sparse: bool, repeats: int) -> float:
    """Median seconds of one forward and backward pass with the dense or sparse path forced."""
    sae.sparse_below = 1.0 if sparse else 0.0
    dead_F = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    times = []
    for _ in range(repeats + 1):
        sae.zero_grad(set_to_none=True)
        started = time.perf_counter()
        sae.training_output(x_BD, dead_F, 1.0).loss.backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1536)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--variants", nargs="+", default=["standard", "jumprelu"], choices=["standard", "jumprelu"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
    B, D, F = args.batch, args.d, args.ratio * args.d
    x_BD = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    has_bf16 = bfloat16_matmul_is_fast(torch.device("cpu"))
    print(f"d {D}, F {F}, batch {B}, {args.threads} threads, torch {torch.__version__}, bf16 units: {has_bf16}")
    print(f"{'variant':<10}{'density':>8}{'dense s':>9}{'sparse s':>10}{'× dense':>9}{'bf16 s':>8}{'× dense':>9}")
    for variant in args.variants:
        for density in args.densities:
            seconds = {}
            for precision in ("float32", "bfloat16") if has_bf16 else ("float32",):
                sae = build_sae(SAEConfig(variant=variant, d_in=D, d_sae=F, select_precision=precision))
                with torch.no_grad():
                    floor_F = sae.log_threshold.exp() - sae.cfg.jumprelu_bandwidth / 2 if variant == "jumprelu" else 0
                    pre_BF = sae.pre_acts(x_BD)
                    sae.b_enc += floor_F - pre_BF.flatten()[:: max(1, B * F // 2**24)].quantile(1 - density)
                if precision == "float32":
                    seconds["dense"] = step_seconds(sae, x_BD, sparse=False, repeats=args.repeats)
                seconds[precision] = step_seconds(sae, x_BD, sparse=True, repeats=args.repeats)
            dense, sparse, low = seconds["dense"], seconds["float32"], seconds.get("bfloat16", float("nan"))
            print(
                f"{variant:<10}{density:>8.3f}{dense:>9.3f}{sparse:>10.3f}{dense / sparse:>9.2f}"
                f"{low:>8.3f}{dense / low:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
