"""Dense against sparse training steps of the ReLU-family SAEs, by the density of the active latents.

    python benchmarks/sae_sparse_density.py                       # d=1536, F=6144, batch 1024
    python benchmarks/sae_sparse_density.py --d 512 --densities 0.01 0.05 0.2

``standard`` and ``jumprelu`` train densely while many latents are active and sparsely (decoder
and backward over the entries above the floor only, ``SparseAutoencoder.pre_acts_above``) once
few are. For each density (fraction of the B·F pre-activations above the floor, set by shifting
b_enc on Gaussian inputs) this times one training step — ``training_output`` and its backward,
median over ``--repeats`` rounds in one process, the paths taking turns — dense and sparse
(``sparse_below`` 0 or 1), and sparse with the entries chosen from a bf16 product
(``select_precision=bfloat16``) where the hardware has bf16 units.
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


def step_seconds(runs: dict, x_BD: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of one forward and backward pass for each (SAE, sparse) of ``runs``, timed in
    turn (one pass each per round, so that a change of load hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (sae, sparse) in runs.items():
            sae.sparse_below = 1.0 if sparse else 0.0
            sae.zero_grad(set_to_none=True)
            started = time.perf_counter()
            sae.training_output(x_BD, torch.zeros(sae.cfg.d_sae, dtype=torch.bool), 1.0).loss.backward()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds[1:]) for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1536)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--variants", nargs="+", default=["standard", "jumprelu"], choices=["standard", "jumprelu"])
    parser.add_argument("--repeats", type=int, default=5)
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
            runs = {}
            for precision in ("float32", "bfloat16") if has_bf16 else ("float32",):
                sae = build_sae(SAEConfig(variant=variant, d_in=D, d_sae=F, select_precision=precision))
                with torch.no_grad():
                    floor_F = sae.log_threshold.exp() - sae.cfg.jumprelu_bandwidth / 2 if variant == "jumprelu" else 0
                    pre_BF = sae.pre_acts(x_BD)
                    sae.b_enc += floor_F - pre_BF.flatten()[:: max(1, B * F // 2**24)].quantile(1 - density)
                if precision == "float32":
                    runs["dense"] = (sae, False)
                runs[precision] = (sae, True)
            seconds = step_seconds(runs, x_BD, args.repeats)
            dense, sparse, low = seconds["dense"], seconds["float32"], seconds.get("bfloat16", float("nan"))
            print(
                f"{variant:<10}{density:>8.3f}{dense:>9.3f}{sparse:>10.3f}{dense / sparse:>9.2f}"
                f"{low:>8.3f}{dense / low:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
