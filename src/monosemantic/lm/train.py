"""Train the one-layer transformer: AdamW, linear warmup then cosine decay, seeded batches.

The loop reads top to bottom (nanoGPT style). With ``precision`` bfloat16 (the default on CUDA) the
forward pass runs under bf16 autocast (float32 weights, optimizer and loss), as nanoGPT does;
evaluation stays in float32. Batches are random windows of ``n_ctx`` tokens
from the train shards, drawn from a generator seeded by ``cfg.seed``; every ``checkpoint_every``
steps the model, optimizer and generator state are saved atomically, so a killed run resumes
exactly where it stopped and gives the same losses as an uninterrupted one. A checkpoint holds only
tensors and plain values (loaded with ``weights_only=True``: opening one runs no code) and the hash
of the config and tokens it was trained on; one made for anything else is set aside, not resumed.

Each step's global batch is cut into ``cfg.grad_parts`` (P) equal parts, backpropagated one at a
time, and the parts' gradients are summed in one fixed balanced binary tree and divided by P
(``monosemantic.lm.grad_tree`` states the tree): g = T(g_0, …, g_{P−1}) / P, the gradient of the mean of
the parts' losses, i.e. of the batch's mean loss. Every part has the same shapes on any world size
and the tree fixes the order of every addition, so the gradient's bits do not depend on how the parts
are spread over processes.

Data-parallel (``world``, a torchrun world of N ranks): every rank draws the same global batch of
``batch_size`` windows from the same generator and backpropagates its contiguous P/N parts under
``DistributedDataParallel``, whose all-reduce is replaced by a communication hook that gathers the
ranks' subtree sums and adds them in the tree's order. With N a power of 2 dividing P each rank's
parts are a subtree, so every rank's gradient, hence every step, is bit for bit a world of 1's
(another N dividing P: equal within float rounding). The generator state in a checkpoint is every
rank's. Rank 0 evaluates, writes checkpoints and shows progress; every rank resumes from the same
checkpoint, at any world size that divides P.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from pickle import UnpicklingError  # what torch.load(weights_only=True) raises on a foreign file

import numpy as np
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from monosemantic.atomic import atomic_path
from monosemantic.corpus.shards import TokenShards
from monosemantic.device import reproducible_kernels
from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.lm.config import LMConfig
from monosemantic.lm.grad_tree import PartGradients
from monosemantic.lm.model import build_lm
from monosemantic.progress import notice, progress


def lr_at(step: int, cfg: LMConfig) -> float:
    """lr(t) = lr·t/warmup during warmup, then cosine from lr down to min_lr_frac·lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress_frac = (step - cfg.warmup_steps) / max(1, cfg.n_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress_frac)))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cosine)


def next_token_loss(model: HookedTransformer, tokens_BT: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of predicting tokens[:, 1:] from their prefixes."""
    logits_BTV = model(tokens_BT, return_type="logits")
    return F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1), tokens_BT[:, 1:].flatten())


@torch.no_grad()
def evaluate_lm(
    model: HookedTransformer,
    shards: TokenShards,
    ctx: int,
    max_windows: int | None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> float:
    """Mean next-token loss over the first ``max_windows`` (None: all) non-overlapping windows."""
    model.eval()
    total, count = 0.0, 0
    windows = [w for _, _, w in shards.sequential_windows(ctx, max_windows)]
    for i in range(0, len(windows), batch_size):
        tokens_BT = torch.from_numpy(np.stack(windows[i : i + batch_size])).to(device)
        n = tokens_BT.shape[0] * (ctx - 1)
        total += next_token_loss(model, tokens_BT).item() * n
        count += n
    model.train()
    return total / count


def backward_in_parts(
    stepped: torch.nn.Module, parts: PartGradients, windows_BT: torch.Tensor, device: torch.device | str, bf16: bool
) -> torch.Tensor:
    """Backpropagate this rank's parts of the global batch ``windows_BT`` one at a time through
    ``stepped`` (the model, or its DDP wrapper); leaves in every parameter's ``.grad`` the batch's
    gradient T(g_0, …, g_{P−1}) / P, and returns this rank's parts' losses (float32)."""
    device_type = torch.device(device).type
    ddp = isinstance(stepped, torch.nn.parallel.DistributedDataParallel)
    rank_parts = parts.split(windows_BT)
    losses = []
    for i, part_BT in enumerate(rank_parts):
        last = i == len(rank_parts) - 1
        with stepped.no_sync() if ddp and not last else nullcontext():  # DDP's hook runs in the last backward
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):  # weights and Adam stay float32
                loss = next_token_loss(stepped, part_BT.to(device))
            loss.backward()
        losses.append(loss.detach().float())
        if not last:
            parts.take()
    if not ddp:
        parts.finish()
    return torch.stack(losses)


def train_lm(
    cfg: LMConfig,
    tokens_dir: Path,
    checkpoint_path: Path,
    device: torch.device | str = "cpu",
    world: World = SINGLE,
) -> tuple[HookedTransformer, dict]:
    """Train from scratch (or resume from ``checkpoint_path``); return the model and its figures
    (on rank 0 of a ``world``; the others' figures lack the validation losses)."""
    train = TokenShards(tokens_dir, "train")
    val = TokenShards(tokens_dir, "val")
    torch.manual_seed(cfg.seed)
    model = build_lm(cfg, train.vocab_size).to(device, print_details=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    step, history, seconds_before = 0, [], 0.0
    key = _checkpoint_key(cfg, tokens_dir)
    for turn in (world.is_main, not world.is_main):  # rank 0 first: it alone may set a bad checkpoint aside
        if turn and checkpoint_path.exists():
            step, history, seconds_before = _resume(checkpoint_path, key, model, optimizer, rng)
        world.barrier()

    parts = PartGradients(list(model.parameters()), cfg.grad_parts, world)
    stepped = model
    if world.size > 1:  # DDP starts every rank from rank 0's weights; the hook sums the parts' gradients
        stepped = torch.nn.parallel.DistributedDataParallel(model)
        stepped.register_comm_hook(None, lambda _, bucket: parts.ddp_hook(bucket))
    start = time.perf_counter()
    device_type = torch.device(device).type
    bf16 = cfg.precision == "bfloat16" or (cfg.precision == "auto" and device_type == "cuda")
    tokens_per_step = cfg.batch_size * cfg.n_ctx
    with reproducible_kernels(device), progress("train LM", cfg.n_steps * tokens_per_step, unit="tok") as advance:
        advance(step * tokens_per_step)
        while step < cfg.n_steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            windows_BT = torch.from_numpy(train.random_windows(cfg.batch_size, cfg.n_ctx, rng))
            part_losses = backward_in_parts(stepped, parts, windows_BT, device, bf16)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            loss_value = world.all_gather(part_losses).mean().item()  # the global batch's: the mean of all P parts'
            if not math.isfinite(loss_value):
                raise UserError(f"LM training diverged at step {step} (loss {loss_value}); lower lm.lr (now {cfg.lr})")
            info = f"loss {loss_value:.3f}"
            if (step % cfg.eval_every == 0 or step == cfg.n_steps) and world.is_main:
                val_loss = evaluate_lm(model, val, cfg.n_ctx, cfg.eval_windows, device=device)
                history.append({"step": step, "train_loss": loss_value, "val_loss": val_loss})
                info += f" val {val_loss:.3f}"
            elif step == cfg.n_steps:
                history.append({"step": step, "train_loss": loss_value})
            if step % cfg.checkpoint_every == 0 and step < cfg.n_steps and world.is_main:
                _save_checkpoint(
                    checkpoint_path,
                    key,
                    model,
                    optimizer,
                    rng,
                    step,
                    history,
                    seconds_before + time.perf_counter() - start,
                )
            advance(tokens_per_step, info=info)
    model.eval()
    figures = {
        "steps": step,
        "train_tokens": step * tokens_per_step,
        "train_loss": history[-1]["train_loss"],
        "history": history,
        "train_seconds": seconds_before + time.perf_counter() - start,
    }
    return model, figures


def _checkpoint_key(cfg: LMConfig, tokens_dir: Path) -> str:
    """Hash of what a training run depends on: the LM config and the token shards' index."""
    index = (Path(tokens_dir) / "index.json").read_text()
    blob = json.dumps({"lm": cfg.model_dump(), "tokens": index}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(
    path: Path, key: str, model, optimizer, rng: np.random.Generator, step: int, history: list, seconds: float
) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "key": key,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": json.dumps(rng.bit_generator.state),
                "step": step,
                "history": history,
                "seconds": seconds,
                "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )


def _resume(path: Path, key: str, model, optimizer, rng: np.random.Generator) -> tuple[int, list, float]:
    """Load the checkpoint into the model, optimizer and generators; returns (step, history,
    seconds). One that is unreadable or made for another config is renamed ``*.stale`` (with a
    notice) and training starts over: (0, [], 0.0)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ours = isinstance(state, dict) and state.get("key") == key
        problem = None if ours else "made for another config or corpus"
    except (OSError, EOFError, UnpicklingError, RuntimeError, ValueError) as err:  # what a bad file raises
        problem = f"unreadable ({type(err).__name__})"
    if problem is not None:
        stale = path.with_name(path.name + ".stale")
        path.replace(stale)
        notice(f"LM checkpoint {path}: {problem}; set aside as {stale.name}, training from step 0")
        return 0, [], 0.0
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        return state["step"], state["history"], state["seconds"]
    except (RuntimeError, KeyError, TypeError, ValueError) as err:  # right key, wrong contents: written by hand
        raise UserError(
            f"LM checkpoint {path}: has this config's key but does not fit the model "
            f"({type(err).__name__}); delete it to start over"
        ) from None
