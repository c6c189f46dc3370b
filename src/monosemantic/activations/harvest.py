"""Harvest: run the LM over token windows and record the activations at one hook point.

Windows are the split's non-overlapping ``n_ctx``-token windows, in order; for every token the
store keeps its activation vector and its origin (token id, corpus document, absolute offset in
the token shard — stored in the ``pos`` column — and the token shard index), so analysis can show
each activation in its context. The forward pass stops right after the hooked layer: the
unembedding, the most expensive part of a small-vocabulary 1-layer model, is never computed.
"""

from __future__ import annotations

import itertools
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from transformer_lens import HookedTransformer

from monosemantic.activations.store import ActivationWriter, join_stores
from monosemantic.atomic import atomic_path
from monosemantic.corpus.shards import TokenShards
from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.progress import progress


def hook_width(model: HookedTransformer, hook_name: str) -> int:
    if hook_name not in model.hook_dict:
        raise UserError(f"hook point {hook_name!r} not in the model (e.g. blocks.0.mlp.hook_post)")
    if hook_name.endswith(("mlp.hook_post", "mlp.hook_pre")):
        return model.cfg.d_mlp
    return model.cfg.d_model


def _stop_layer(hook_name: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) + 1 if match else None


@torch.no_grad()
def activations_at(model: HookedTransformer, tokens_BT: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Activations [B, T, D] at ``hook_name``, running the model only as far as needed."""
    captured: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook) -> None:
        captured["acts"] = act.detach()

    model.run_with_hooks(tokens_BT, fwd_hooks=[(hook_name, keep)], stop_at_layer=_stop_layer(hook_name))
    return captured["acts"]


def harvest_activations(
    model: HookedTransformer,
    shards: TokenShards,
    hook_name: str,
    n_tokens: int,
    ctx: int,
    batch_size: int,
    out_dir: Path,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    world: World = SINGLE,
) -> dict:
    """Record ``n_tokens`` (rounded up to whole windows, capped by the split) activation rows.

    In a ``world`` of N ranks, rank r records the r-th of N contiguous slices of the windows into a
    store of its own inside the store being built; rank 0 then joins them in rank order
    (``join_stores``, no copy). So the store holds a 1-rank harvest's rows in the same order; only
    the shard boundaries differ (each rank's part starts a shard)."""
    d_in = hook_width(model, hook_name)
    n_windows = min(-(-n_tokens // ctx), shards.n_windows(ctx))
    if n_windows == 0:
        raise UserError(f"{shards.split} split has fewer than {ctx} tokens: nothing to harvest")
    meta = {"split": shards.split, "ctx": ctx, "origin_pos": "offset in token shard"}
    first, stop = n_windows * world.rank // world.size, n_windows * (world.rank + 1) // world.size
    windows = itertools.islice(shards.sequential_windows(ctx, n_windows), first, stop)
    figures = {"rows": n_windows * ctx, "d_in": d_in, "hook_name": hook_name}
    if world.size == 1:
        with ActivationWriter(out_dir, d_in, hook_name, dtype, meta=meta) as writer:
            _record(model, shards, windows, n_windows, ctx, batch_size, hook_name, writer, device)
        return figures
    with ExitStack() as stack:
        building = world.broadcast_object(stack.enter_context(atomic_path(out_dir)) if world.is_main else None)
        if world.is_main:
            building.mkdir()
        world.barrier()
        part = building / f"rank-{world.rank:05d}"
        if stop > first:
            with ActivationWriter(part, d_in, hook_name, dtype, meta=meta) as writer:
                _record(model, shards, windows, stop - first, ctx, batch_size, hook_name, writer, device)
        world.barrier()
        if world.is_main:
            parts = [building / f"rank-{r:05d}" for r in range(world.size)]
            join_stores([p for p in parts if p.is_dir()], building)
    world.barrier()  # the store is in place before any rank reads it
    return figures


def _record(
    model: HookedTransformer,
    shards: TokenShards,
    windows: Iterator[tuple[int, int, np.ndarray]],
    n_windows: int,
    ctx: int,
    batch_size: int,
    hook_name: str,
    writer: ActivationWriter,
    device: torch.device | str,
) -> None:
    """Run the model on ``n_windows`` of ``windows`` (shard, start, tokens) and append each token's
    activation and origin to ``writer``."""
    with progress(f"harvest {shards.split}", n_windows * ctx, unit="tok") as advance:
        for first in range(0, n_windows, batch_size):
            batch = [next(windows) for _ in range(min(batch_size, n_windows - first))]
            tokens_BT = torch.from_numpy(np.stack([w for _, _, w in batch])).to(device)
            acts_ND = activations_at(model, tokens_BT, hook_name).flatten(0, 1)
            offset_BT = np.array([[start + t for t in range(ctx)] for _, start, _ in batch])
            shard_BT = np.repeat([[s] for s, _, _ in batch], ctx, axis=1)
            doc_BT = np.stack([shards.document_of(s, offset_BT[b]) for b, (s, _, _) in enumerate(batch)])
            writer.append(
                acts_ND, tokens_BT.flatten().cpu().numpy(), doc_BT.ravel(), offset_BT.ravel(), shard_BT.ravel()
            )
            advance(len(batch) * ctx)
