"""SAE training speed and memory, per variant and dictionary size, against the dense-matmul floor.

    python benchmarks/sae_speed.py                      # d=512, F=512…4096, batch 4096, CPU
    python benchmarks/sae_speed.py --sizes 4096 --steps 8 --quality-samples 0

For every (variant, F) a fresh subprocess trains ``--steps`` steps with our trainer (resampling
off: it is a one-off cost) and reports samples/s and its peak resident memory during training,
next to its resident memory just before (``idle``: Python, torch and the batches). The floor is
measured in the same run: the encoder's x_BD @ W_enc_DF matmul, three times (forward and two
backward products) — a dense implementation cannot beat it. If sae-lens is
installed, its TopK and standard SAEs train the same steps on the same data with the same
hyperparameters, in a bare loop (forward, backward, Adam) that is cheaper than its own trainer.
``--quality-samples`` then trains ours and SAELens's for that many samples on synthetic data with
a known dictionary and prints FVU and L0 on held-out data. Numbers on a shared machine are noisy:
compare ratios from one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae
from monosemantic.sae.synthetic import SyntheticFeatures


def _reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (Linux ≥ 4.0); elsewhere the peak includes imports."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) in MiB, falling back to getrusage's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _our_params(variant: str, lr: float) -> dict:
    return {"standard": {"l1_coeff": 0.1, "resample_at": ()}, "topk": {"k": 32}, "batchtopk": {"k": 32},
            "jumprelu": {"l0_coeff": 1e-3}}[variant] | {"lr": lr}


def _saelens_sae(variant: str, d: int, F: int, k: int):
    from sae_lens.saes import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig

    if variant == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=F, k=k))
    return StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=F, l1_coefficient=0.1))


def _saelens_train(sae, batches: list[torch.Tensor], lr: float, variant: str) -> float:
    from sae_lens.saes.sae import TrainStepInput

    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    coefficients = {"l1": 0.1} if variant == "standard" else {}
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    started = time.perf_counter()
    for step, x in enumerate(batches):
        out = sae.training_forward_pass(TrainStepInput(x, coefficients, dead, step, False))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def _measure(impl: str, variant: str, d: int, F: int, batch: int, steps: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    set_quiet(True)
    g = torch.Generator().manual_seed(0)
    batches = [torch.relu(torch.randn(batch, d, generator=g)) for _ in range(steps)]
    _reset_peak_rss()
    idle = _rss_mb("VmRSS")
    if impl == "ours":
        cfg = SAEConfig(
            variant=variant, d_in=d, d_sae=F, n_samples=batch * steps, batch_size=batch, **_our_params(variant, 1e-4)
        )
        seconds = train_sae(cfg, iter(batches), batches[0]).train_seconds
    else:
        seconds = _saelens_train(_saelens_sae(variant, d, F, 32), batches, 1e-4, variant)
    queue.put((batch * steps / seconds, _rss_mb("VmHWM"), idle))


def _run_isolated(*args) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _matmul_floor(d: int, F: int, batch: int, threads: int, repeats: int = 7) -> float:
    """Samples/s if a step cost exactly three [B, D]×[D, F] matmuls."""
    torch.set_num_threads(threads)
    x, W = torch.randn(batch, d), torch.randn(d, F)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        x @ W
        times.append(time.perf_counter() - started)
    return batch / (3 * statistics.median(times[1:]))


def _quality(samples: int, d: int, F: int, batch: int, threads: int) -> None:
    """Ours vs SAELens on synthetic data with a known dictionary: FVU, L0, samples/s."""
    from monosemantic.sae.metrics import evaluate_sae

    torch.set_num_threads(threads)
    set_quiet(True)
    syn = SyntheticFeatures(d=d, n_features=2 * F, mean_active=16.0, seed=0)
    n_batches = samples // batch
    train = list(syn.batches(batch, n_batches, seed=1))
    held_out = list(syn.batches(4096, 4, seed=2))
    lr = 1e-3
    print(f"\nQuality: synthetic d={d}, {2 * F} true features, F={F}, {samples:,} samples, batch {batch}, lr {lr}")
    print(f"{'implementation':<22}{'FVU':>8}{'L0':>8}{'samples/s':>12}")
    for variant in ("topk", "standard"):
        cfg = SAEConfig(variant=variant, d_in=d, d_sae=F, n_samples=n_batches * batch, batch_size=batch,
                        warmup_frac=0.0, decay_frac=0.0, **_our_params(variant, lr))
        result = train_sae(cfg, iter(train), train[0])
        stats = evaluate_sae(result.sae, held_out)
        rate = n_batches * batch / result.train_seconds
        print(f"{'ours ' + variant:<22}{stats['fvu']:>8.4f}{stats['l0']:>8.1f}{rate:>12,.0f}")
        try:
            theirs = _saelens_sae(variant, d, F, 32)
        except ImportError:
            continue
        seconds = _saelens_train(theirs, train, lr, variant)
        theirs.eval()
        with torch.no_grad():
            x = torch.cat(held_out)
            latents = theirs.encode(x)
            fvu = ((theirs.decode(latents) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
            l0 = (latents != 0).sum(1).float().mean().item()
        print(f"{'sae-lens ' + variant:<22}{fvu:>8.4f}{l0:>8.1f}{n_batches * batch / seconds:>12,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--variants", nargs="+", default=["standard", "topk", "batchtopk", "jumprelu"])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quality-samples", type=int, default=0, help="0 skips the quality comparison")
    args = parser.parse_args()
    try:
        import sae_lens  # noqa: F401

        has_saelens = True
    except ImportError:
        has_saelens = False

    print(f"d={args.d}, batch {args.batch}, {args.steps} steps, {args.threads} threads, torch {torch.__version__}, CPU")
    header = f"{'variant':<12}{'F':>6}{'samples/s':>12}{'peak MB':>10}{'idle MB':>9}{'floor s/s':>12}{'floor/ours':>12}"
    header += f"{'sae-lens s/s':>14}{'ours/sae-lens':>15}" if has_saelens else ""
    print(header)
    for F in args.sizes:
        floor = _matmul_floor(args.d, F, args.batch, args.threads)
        for variant in args.variants:
            rate, peak, idle = _run_isolated("ours", variant, args.d, F, args.batch, args.steps, args.threads)
            line = f"{variant:<12}{F:>6}{rate:>12,.0f}{peak:>10,.0f}{idle:>9,.0f}{floor:>12,.0f}{floor / rate:>12.2f}"
            if has_saelens and variant in ("standard", "topk"):
                theirs, _, _ = _run_isolated("saelens", variant, args.d, F, args.batch, args.steps, args.threads)
                line += f"{theirs:>14,.0f}{rate / theirs:>15.2f}"
            print(line, flush=True)
    if args.quality_samples:
        _quality(args.quality_samples, args.d, min(args.sizes[-1], 2048), 1024, args.threads)


if __name__ == "__main__":
    sys.exit(main())
