"""SAE training speed at real model widths, against the one-matmul floor and SAELens's own trainer.

    python benchmarks/sae_speed.py                                  # d=1536, F=4d, topk+batchtopk, LM data
    python benchmarks/sae_speed.py --dims 512 1536 3072 --ratios 4 8 16 --steps 8
    python benchmarks/sae_speed.py --data synthetic --dims 512 --variants topk standard jumprelu
    python benchmarks/sae_speed.py --device cuda --dims 512 1536 3072 --ratios 4 8 16 --batch 8192 --steps 32

For every width d, dictionary size F = ratio·d and variant, fresh subprocesses train ``--steps``
batches of ``--batch`` rows (the same rows, seed and hyper-parameters for every implementation):

- ``ours``: our trainer with ``select_precision=auto`` (bf16 ranking where the hardware has bf16
  units, see ``sae/base.py``); ``ours-fp32``: the same with the exact fp32 ranking; ``ours-dense``
  (standard, jumprelu): every step dense, as if few latents were never active (``sparse_below`` 0);
- ``sae-lens``: SAELens's real ``SAETrainer`` (``fit()`` over a batch iterator: its Adam, gradient
  clipping, dead-feature and sparsity bookkeeping), for the variants SAELens has (topk, batchtopk,
  standard, jumprelu), with activations and learning rate as ours, constant LR, no warm-up.
  Neither declares a latent dead within so short a budget (ours: ``dead_window`` 1), so AuxK and
  resampling do not run; ``sae/topk.py`` takes the AuxK top-k only over the dead latents.

Printed: samples/s (median over ``--repeats`` processes), peak resident memory, the one-matmul floor
— samples/s if a step cost exactly one fp32 [B, d]×[d, F] product, the encoder forward that every
dense trainer pays, timed in the same process just before and just after its training run, so under
the same load (the median of both sets of products, at least 5 and 1 s each: on a shared 2-core
machine one product of ~13 ms varied by ±20 % between processes) — and our fraction of it; the
steady rate (samples/s of the median step after the first, whose one-time costs weigh on a run of a
few steps: timed by when each trainer asks for its next batch) and its fraction of the floor; our
speed over SAELens's, and FVU and L0 on held-out rows after the run's fixed budget of ``steps ×
batch`` samples, and (``sel. diff``) the fraction of the latents an exact fp32 ranking keeps on one
held-out batch that the bf16 ranking misses (the trained SAE; its values are re-read exactly either
way; for standard and jumprelu, of the entries above the floor that bf16 candidates would miss,
``SparseAutoencoder.ranking_above``, which ``select_precision=bfloat16`` takes and ``auto`` does
not).

Data: ``--data lm`` (default) records MLP activations (``blocks.0.mlp.hook_post``, width d) from the
project's own one-layer LM with d_mlp = d, trained ``--lm-steps`` steps on the bundled corpus; the
tokens, the LM's weights and validation loss (printed per width, against the unigram and bigram
baselines: how realistic the activations are) and the activations are cached under ``--cache``.
``--data synthetic`` draws sparse combinations of known directions (``sae/synthetic.py``). Numbers
on a shared machine are noisy: compare ratios from one run, and say what else was running.

``--device cuda``: the activations, both trainers and the floor's product live on the GPU (the
activations are moved there once, so no copy is timed); "peak MB" is then the GPU's peak allocated
memory, the floor is one [B, d]×[d, F] product at the precision our trainer sets on CUDA (TF32,
``monosemantic.device``; set for SAELens's process too), and every timed step and product ends
with a device synchronisation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from monosemantic.device import resolve_device
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae
from monosemantic.sae.base import SparseAutoencoder, token_rows
from monosemantic.sae.metrics import evaluate_sae
from monosemantic.sae.synthetic import SyntheticFeatures

LM_HOOK = "blocks.0.mlp.hook_post"
LM_CORPUS_CHARS = 4_000_000  # enough text for a few hundred LM steps at 64 tokens × 32 windows
SAELENS_VARIANTS = ("topk", "batchtopk", "standard", "jumprelu")


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


def lm_activations(d_mlp: int, n_rows: int, lm_steps: int, cache: Path, device: str) -> torch.Tensor:
    """[n_rows, d_mlp] MLP activations (on the CPU) of our one-layer LM (d_model 128, d_mlp given),
    trained ``lm_steps`` steps on ``device`` on the start of the bundled corpus, at random 64-token
    windows. How well that LM learned (``lm_quality``) is written beside them."""
    from monosemantic.activations.harvest import activations_at
    from monosemantic.config import LMConfig
    from monosemantic.corpus.bundled import iter_bundled_documents
    from monosemantic.corpus.shards import TokenShards, write_token_shards
    from monosemantic.corpus.tokenizer import train_tokenizer
    from monosemantic.lm.baselines import baseline_losses
    from monosemantic.lm.model import build_lm
    from monosemantic.lm.train import train_lm

    path = cache / f"lm_d{d_mlp}_s{lm_steps}_n{n_rows}.pt"
    if path.exists():
        return torch.load(path)
    cache.mkdir(parents=True, exist_ok=True)
    tokens_dir = cache / "tokens"
    if not (tokens_dir / "index.json").exists():

        def docs():
            chars = itertools.accumulate(len(doc["text"]) for doc in iter_bundled_documents())
            texts = (doc["text"] for doc in iter_bundled_documents())
            return (text for text, total in zip(texts, chars) if total <= LM_CORPUS_CHARS)

        write_token_shards(docs(), train_tokenizer(docs(), 4096), tokens_dir, val_fraction=0.05)
    ctx = 64
    cfg = LMConfig(
        d_model=128,
        d_mlp=d_mlp,
        n_heads=4,
        n_ctx=ctx,
        batch_size=32,
        n_steps=lm_steps,
        warmup_steps=min(100, lm_steps // 10),
        eval_every=lm_steps,
        checkpoint_every=lm_steps,
    )
    weights = cache / f"lm_d{d_mlp}_s{lm_steps}.weights.pt"  # other --steps/--batch re-harvest, not re-train
    if weights.exists():
        model = build_lm(cfg, TokenShards(tokens_dir, "train").vocab_size).to(device)
        model.load_state_dict(torch.load(weights, map_location=device))
    else:
        model, figures = train_lm(cfg, tokens_dir, cache / f"lm_d{d_mlp}_s{lm_steps}.ckpt", device)
        quality = {"val_loss": figures["history"][-1]["val_loss"], "train_seconds": figures["train_seconds"]}
        quality |= baseline_losses(TokenShards(tokens_dir, "train"), TokenShards(tokens_dir, "val"), ctx)
        (cache / f"lm_d{d_mlp}_s{lm_steps}.json").write_text(json.dumps(quality))
        torch.save(model.state_dict(), weights)
    model.eval()
    windows_BT = TokenShards(tokens_dir, "train").random_windows(-(-n_rows // ctx), ctx, np.random.default_rng(0))
    acts = torch.cat(
        [
            activations_at(model, torch.from_numpy(chunk).to(device), LM_HOOK).flatten(0, 1).cpu()
            for chunk in np.array_split(windows_BT, max(1, len(windows_BT) // 64))
        ]
    )
    acts = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))[:n_rows]].contiguous()
    torch.save(acts, path)
    return acts


def lm_quality(d_mlp: int, lm_steps: int, cache: Path) -> str:
    """One line on the LM behind ``lm_activations``: its validation loss against the unigram and
    bigram baselines (nats/token), and its training time; caches older than that record say so."""
    path = cache / f"lm_d{d_mlp}_s{lm_steps}.json"
    if not path.exists():
        return f"LM d_mlp={d_mlp}, {lm_steps} steps: loss not recorded (cached before it was)"
    q = json.loads(path.read_text())
    return (
        f"LM d_mlp={d_mlp}, {lm_steps} steps ({q['train_seconds']:.0f} s): validation loss {q['val_loss']:.3f} "
        f"(unigram {q['unigram_loss']:.3f}, bigram {q['bigram_loss']:.3f})"
    )


def synthetic_activations(d: int, n_rows: int) -> torch.Tensor:
    """[n_rows, d] sparse non-negative combinations of 4·d known directions, 16 active on average."""
    syn = SyntheticFeatures(d=d, n_features=4 * d, mean_active=16.0, seed=0)
    return torch.cat(list(syn.batches(1024, -(-n_rows // 1024), seed=1)))[:n_rows]


def _our_params(variant: str, lr: float) -> dict:
    sparsity = {
        "standard": {"l1_coeff": 0.01, "resample_at": ()},
        "topk": {"k": 32},
        "batchtopk": {"k": 32},
        "jumprelu": {"l0_coeff": 3e-3},
    }[variant]
    # dead_window 1: no latent counts as dead within the budget, as in SAELens (1,000-step window)
    return sparsity | {"lr": lr, "warmup_frac": 0.0, "decay_frac": 0.0, "dead_window": 1.0}


def _saelens_fit(variant: str, F: int, lr: float, train_ND: torch.Tensor, batch: int, asked: list[float]):
    """SAELens's ``SAETrainer`` over ``train_ND`` in batches, on its device (``timed_batches``
    notes the steps in ``asked``); returns (trained SAE, seconds)."""
    from sae_lens import saes
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d, device = train_ND.shape[1], str(train_ND.device)
    shape = {"d_in": d, "d_sae": F, "device": device}
    sae = {
        "topk": lambda: saes.TopKTrainingSAE(saes.TopKTrainingSAEConfig(**shape, k=32)),
        "batchtopk": lambda: saes.BatchTopKTrainingSAE(saes.BatchTopKTrainingSAEConfig(**shape, k=32)),
        "standard": lambda: saes.StandardTrainingSAE(saes.StandardTrainingSAEConfig(**shape, l1_coefficient=0.01)),
        "jumprelu": lambda: saes.JumpReLUTrainingSAE(saes.JumpReLUTrainingSAEConfig(**shape, l0_coefficient=3e-3)),
    }[variant]()
    cfg = SAETrainerConfig(
        total_training_samples=len(train_ND),
        train_batch_size_samples=batch,
        lr=lr,
        lr_end=lr / 10,
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg, sae, timed_batches(train_ND.split(batch), asked))
    started = time.perf_counter()
    trained = trainer.fit()
    _synchronize(train_ND.device)
    return trained, time.perf_counter() - started


def _measure(impl: str, variant: str, F: int, batch: int, lr: float, data_path: str, threads: int, device: str):
    torch.set_num_threads(threads)
    set_quiet(True)
    resolve_device(device)  # on CUDA: TF32 matmuls, as our trainer sets them, for every implementation here
    train_ND, held_out_ND = (rows.to(device) for rows in torch.load(data_path))
    d = train_ND.shape[1]
    floor_seconds = matmul_seconds(d, F, batch, train_ND.device)
    _reset_peak_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    differs = float("nan")
    asked: list[float] = []
    if impl == "sae-lens":
        sae, seconds = _saelens_fit(variant, F, lr, train_ND, batch, asked)
        sae.eval()
        with torch.no_grad():
            latents = torch.cat([sae.encode(x) for x in held_out_ND.split(1024)])
            recon = torch.cat([sae.decode(z) for z in latents.split(1024)])
        fvu = ((recon - held_out_ND).pow(2).sum() / (held_out_ND - held_out_ND.mean(0)).pow(2).sum()).item()
        l0 = (latents != 0).sum(1).float().mean().item()
    else:
        extra = {"select_precision": "float32"} if impl == "ours-fp32" else {}
        if impl == "ours-dense":
            SparseAutoencoder.sparse_below = 0.0
        cfg = SAEConfig(
            variant=variant,
            d_in=d,
            d_sae=F,
            n_samples=len(train_ND),
            batch_size=batch,
            device=device,
            **_our_params(variant, lr),
            **extra,
        )
        result = train_sae(cfg, timed_batches(train_ND.split(batch), asked), train_ND[:4096])
        seconds = result.train_seconds
        stats = evaluate_sae(result.sae, [held_out_ND])
        fvu, l0 = stats["fvu"], stats["l0"]
        if variant in ("topk", "batchtopk"):
            differs = selection_mismatch(result.sae, held_out_ND[:batch])
        elif impl == "ours":
            differs = candidates_missed(result.sae, held_out_ND[:batch])
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mb("VmHWM")
    floor = batch / statistics.median(floor_seconds + matmul_seconds(d, F, batch, train_ND.device))
    return len(train_ND) / seconds, peak, fvu, l0, differs, floor, steady_rate(asked, batch)


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_batches(batches: Iterable[torch.Tensor], asked: list[float]) -> Iterator[torch.Tensor]:
    """``batches``, noting in ``asked`` when each is asked for: both trainers ask for the next batch
    as a step begins, so the gap between two asks is one whole step (on a GPU, once the step's
    queued work is done)."""
    for x_BD in batches:
        _synchronize(x_BD.device)
        asked.append(time.perf_counter())
        yield x_BD


def steady_rate(asked: list[float], batch: int) -> float:
    """Samples/s of the median step after the first (the first pays one-time costs: memory first
    touched, kernels set up); NaN with fewer than 3 steps."""
    gaps = [later - earlier for earlier, later in zip(asked[1:], asked[2:])]
    return batch / statistics.median(gaps) if gaps else float("nan")


@torch.no_grad()
def selection_mismatch(sae, x_BD: torch.Tensor) -> float:
    """Fraction of the latents the fp32 ranking keeps on ``x_BD`` that the bf16 ranking does not."""
    B, F = x_BD.shape[0], sae.cfg.d_sae
    x_BD = x_BD.to(sae.W_enc.device)
    kept = []
    for dtype in (torch.float32, torch.bfloat16):
        bias_F = sae.b_enc - sae.b_dec @ sae.W_enc
        pre_BF = torch.addmm(bias_F.to(dtype), x_BD.to(dtype), sae.W_enc.to(dtype))
        idx, _, offsets_B = sae.select_active(pre_BF)
        mask_BF = torch.zeros(B, F, dtype=torch.bool, device=x_BD.device)
        mask_BF[token_rows(idx, offsets_B, B), idx.flatten()] = True
        kept.append(mask_BF)
    return (kept[0] & ~kept[1]).sum().item() / kept[0].sum().item()


@torch.no_grad()
def candidates_missed(sae, x_BD: torch.Tensor) -> float:
    """Fraction of the entries above the floor (0, or JumpReLU's θ − ε/2) of the exact pre-activations
    on ``x_BD`` that the bf16 candidates (``ranking_above``) miss."""
    x_BD = x_BD.to(sae.W_enc.device)
    floor_F = torch.zeros(sae.cfg.d_sae, device=x_BD.device)
    if sae.cfg.variant == "jumprelu":
        floor_F = sae.log_threshold.exp() - sae.cfg.jumprelu_bandwidth / 2
    above_BF = sae.pre_acts(x_BD) > floor_F
    return (above_BF & (sae.ranking_above(x_BD, floor_F) <= 0)).sum().item() / max(1, above_BF.sum().item())


def _run_isolated(*args) -> tuple[float, float, float, float, float, float, float]:
    """``_measure`` in a fresh process (its own peak memory, no warm caches); errors propagate."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, args)


def matmul_seconds(
    d: int, F: int, batch: int, device: torch.device, min_repeats: int = 5, min_seconds: float = 1.0
) -> list[float]:
    """Seconds of fp32 [B, d]×[d, F] products on ``device`` (the floor's unit of work), after one
    untimed one: at least ``min_repeats`` of them and at least ``min_seconds`` in all."""
    x, W = torch.randn(batch, d, device=device), torch.randn(d, F, device=device)
    x @ W
    times: list[float] = []
    while len(times) < min_repeats or sum(times) < min_seconds:
        _synchronize(device)
        started = time.perf_counter()
        x @ W
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1536], help="activation widths d")
    parser.add_argument("--ratios", type=int, nargs="+", default=[4], help="dictionary sizes F = ratio·d")
    parser.add_argument(
        "--variants", nargs="+", default=["topk", "batchtopk"], choices=["standard", "topk", "batchtopk", "jumprelu"]
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        default=["ours", "ours-fp32", "ours-dense", "sae-lens"],
        choices=["ours", "ours-fp32", "ours-dense", "sae-lens"],
    )
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8, help="training batches per run (the fixed budget)")
    parser.add_argument("--repeats", type=int, default=1, help="processes per measurement; samples/s is their median")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data", choices=["lm", "synthetic"], default="lm")
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "monosemantic-sae-speed")
    parser.add_argument("--held-out", type=int, default=4096, help="rows for FVU and L0")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    impls = [
        impl for impl in ("sae-lens", "ours-dense", "ours-fp32", "ours") if impl in args.impls
    ]  # theirs first: the ratio
    if "sae-lens" in impls:
        try:
            import sae_lens  # noqa: F401
        except ImportError:
            impls.remove("sae-lens")
            print("sae-lens not installed: no comparison")
    set_quiet(True)

    print(
        f"batch {args.batch}, {args.steps} steps, {args.threads} threads, lr {args.lr}, data {args.data}"
        f"{f' (LM trained {args.lm_steps} steps)' if args.data == 'lm' else ''}, median of {args.repeats}, "
        f"torch {torch.__version__}, {torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}"
    )
    print(
        f"{'d':>5}{'F':>7} {'variant':<10}{'impl':<11}{'samples/s':>10}{'peak MB':>9}{'floor s/s':>11}"
        f"{'of floor':>9}{'steady s/s':>11}{'of floor':>9}{'×sae-lens':>10}{'FVU':>8}{'L0':>7}{'sel. diff':>10}"
    )
    for d in args.dims:
        n_rows = args.batch * args.steps + args.held_out
        if args.data == "lm":
            rows_ND = lm_activations(d, n_rows, args.lm_steps, args.cache, args.device)
            print(lm_quality(d, args.lm_steps, args.cache), flush=True)
        else:
            rows_ND = synthetic_activations(d, n_rows)
        data_path = args.cache / f"rows_{args.data}_d{d}_n{n_rows}.pt"
        args.cache.mkdir(parents=True, exist_ok=True)
        torch.save((rows_ND[args.held_out :].clone(), rows_ND[: args.held_out].clone()), data_path)
        for ratio in args.ratios:
            F = ratio * d
            for variant in args.variants:
                rates: dict[str, float] = {}
                for impl in impls:
                    if impl == "sae-lens" and variant not in SAELENS_VARIANTS:
                        continue
                    if impl == "ours-fp32" and variant not in ("topk", "batchtopk"):
                        continue  # the ReLU family's ``auto`` is exact already (``pre_acts_above``)
                    if impl == "ours-dense" and variant not in ("standard", "jumprelu"):
                        continue
                    runs = [
                        _run_isolated(impl, variant, F, args.batch, args.lr, str(data_path), args.threads, args.device)
                        for _ in range(args.repeats)
                    ]
                    rate = statistics.median(r[0] for r in runs)
                    floor = statistics.median(r[5] for r in runs)
                    steady = statistics.median(r[6] for r in runs)
                    _, peak, fvu, l0, differs, _, _ = runs[0]
                    rates[impl] = rate
                    versus = f"{rate / rates['sae-lens']:.2f}" if "sae-lens" in rates and impl != "sae-lens" else ""
                    missed = "" if math.isnan(differs) else f"{differs:.2%}"
                    print(
                        f"{d:>5}{F:>7} {variant:<10}{impl:<11}{rate:>10,.0f}{peak:>9,.0f}{floor:>11,.0f}"
                        f"{rate / floor:>9.0%}{steady:>11,.0f}{steady / floor:>9.0%}{versus:>10}{fvu:>8.4f}"
                        f"{l0:>7.1f}{missed:>10}",
                        flush=True,
                    )


if __name__ == "__main__":
    sys.exit(main())
