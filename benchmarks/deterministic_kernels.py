"""What torch's deterministic CPU kernels cost the training loops (``device.reproducible_kernels``).

Times one training step of the demo preset's LM (batch 32 × 128 tokens, forward and backward in
``lm.grad_parts`` parts, no optimizer) and ``train_sae`` runs of the SAE variants at the demo's
width (d = 512, F = 4,096, batch 1,024, synthetic activations), with
``torch.use_deterministic_algorithms`` off and on, alternating, and prints the medians and their
ratio. Prints a table; nothing is asserted.

    python benchmarks/deterministic_kernels.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from monosemantic.config import load_config
from monosemantic.distributed import SINGLE
from monosemantic.lm.grad_tree import PartGradients
from monosemantic.lm.model import build_lm
from monosemantic.lm.train import backward_in_parts
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae
from monosemantic.sae import trainer as sae_trainer

SAE_STEPS = 20


def lm_step_seconds(deterministic: bool) -> float:
    torch.use_deterministic_algorithms(deterministic)
    cfg = load_config("demo").lm
    torch.manual_seed(0)
    model = build_lm(cfg, 4096)
    parts = PartGradients(list(model.parameters()), cfg.grad_parts, SINGLE)
    windows_BT = torch.from_numpy(np.random.default_rng(0).integers(0, 4096, (cfg.batch_size, cfg.n_ctx)))
    backward_in_parts(model, parts, windows_BT, "cpu", False)  # warm-up
    model.zero_grad()
    start = time.perf_counter()
    backward_in_parts(model, parts, windows_BT, "cpu", False)
    seconds = time.perf_counter() - start
    torch.use_deterministic_algorithms(False)
    return seconds


def sae_seconds(variant: str, x_ND: torch.Tensor, deterministic: bool) -> float:
    """``train_sae`` turns the deterministic kernels on itself; "off" swaps that for a no-op."""
    cfg = SAEConfig(variant=variant, d_in=512, d_sae=4096, n_samples=len(x_ND), batch_size=1024, lr=1e-3)
    original = sae_trainer.reproducible_kernels
    if not deterministic:
        sae_trainer.reproducible_kernels = lambda device: contextlib.nullcontext()
    try:
        start = time.perf_counter()
        train_sae(cfg, iter(x_ND.split(1024)), x_ND[:4096])
        return time.perf_counter() - start
    finally:
        sae_trainer.reproducible_kernels = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    g = torch.Generator().manual_seed(0)
    directions_KD = torch.randn(4096, 512, generator=g)
    idx = torch.randint(0, 4096, (1024 * SAE_STEPS, 16), generator=g)
    x_ND = torch.relu(directions_KD[idx].sum(1) * torch.rand(len(idx), 1, generator=g))
    cases = {"LM step (demo preset)": lm_step_seconds}
    for variant in ("standard", "topk", "jumprelu"):
        cases[f"SAE {variant}-4096, {SAE_STEPS} steps"] = lambda on, v=variant: sae_seconds(v, x_ND, on)
    print(f"{args.threads} threads, median of {args.repeats} (off and on alternate)")
    print(f"{'case':<32} {'off s':>8} {'on s':>8} {'on/off':>7}")
    for name, measure in cases.items():
        seconds = {False: [], True: []}
        for _ in range(args.repeats):
            for deterministic in (False, True):
                seconds[deterministic].append(measure(deterministic))
        off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
        print(f"{name:<32} {off:8.3f} {on:8.3f} {on / off:7.2f}")


if __name__ == "__main__":
    main()
