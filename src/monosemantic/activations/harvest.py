"""Harvest: run the LM over token windows and record the activations at one hook point.

Windows are the split's non-overlapping ``n_ctx``-token windows, in order; for every token the
store keeps its activation vector and its origin (token id, corpus document, absolute offset in
the token shard — stored in the ``pos`` column — and the token shard index), so analysis can show
each activation in its context. The forward pass stops right after the hooked layer: the
unembedding, the most expensive part of a small-vocabulary 1-layer model, is never computed.
Further hook points (``extra_hooks``) are recorded from the same forward passes, into stores of
their own, and the pass stops after the last block any of them needs.
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
    return activations_at_hooks(model, tokens_BT, [hook_name])[hook_name]


@torch.no_grad()
def activations_at_hooks(model: HookedTransformer, tokens_BT: torch.Tensor, hook_names: list[str]) -> dict:
    """Activations [B, T, D] at each of ``hook_names`` from one forward pass, which stops after
    the last block any of them needs."""
    captured: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook) -> None:
        captured[hook.name] = act.detach()

    stops = [_stop_layer(name) for name in hook_names]
    stop = None if None in stops else max(stops)
    model.run_with_hooks(tokens_BT, fwd_hooks=[(name, keep) for name in hook_names], stop_at_layer=stop)
    return captured


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
    extra_hooks: dict[str, Path] | None = None,
    world: World = SINGLE,
) -> dict:
    """Record ``n_tokens`` (rounded up to whole windows, capped by the split) activation rows;
    ``extra_hooks`` maps further hook points to their own store folders, filled from the same
    forward passes (one pass for every hook point, stopped after the last one's block).

    In a ``world`` of N ranks, rank r records the r-th of N contiguous slices of the windows into a
    store of its own inside each store being built; rank 0 then joins them in rank order
    (``join_stores``, no copy). So each store holds a 1-rank harvest's rows in the same order; only
    the shard boundaries differ (each rank's part starts a shard)."""
    stores = {hook_name: Path(out_dir), **(extra_hooks or {})}
    widths = {name: hook_width(model, name) for name in stores}
    n_windows = min(-(-n_tokens // ctx), shards.n_windows(ctx))
    if n_windows == 0:
        raise UserError(f"{shards.split} split has fewer than {ctx} tokens: nothing to harvest")
    meta = {"split": shards.split, "ctx": ctx, "origin_pos": "offset in token shard"}
    first, stop = n_windows * world.rank // world.size, n_windows * (world.rank + 1) // world.size
    windows = itertools.islice(shards.sequential_windows(ctx, n_windows), first, stop)
    figures = {"rows": n_windows * ctx, "d_in": widths[hook_name], "hook_name": hook_name}
    if extra_hooks:
        figures["extra_hooks"] = {name: widths[name] for name in extra_hooks}

    def record(folders: dict[str, Path]) -> None:
        with ExitStack() as stack:
            writers = {
                name: stack.enter_context(ActivationWriter(folder, widths[name], name, dtype, meta=meta))
                for name, folder in folders.items()
            }
            _record(model, shards, windows, stop - first, ctx, batch_size, writers, device)

    if world.size == 1:
        record(stores)
        return figures
    part = f"rank-{world.rank:05d}"
    with ExitStack() as stack:
        building = {
            name: world.broadcast_object(stack.enter_context(atomic_path(folder)) if world.is_main else None)
            for name, folder in stores.items()
        }
        if world.is_main:
            for folder in building.values():
                folder.mkdir()
        world.barrier()
        if stop > first:
            record({name: folder / part for name, folder in building.items()})
        world.barrier()
        if world.is_main:
            for folder in building.values():
                parts = [folder / f"rank-{r:05d}" for r in range(world.size)]
                join_stores([p for p in parts if p.is_dir()], folder)
    world.barrier()  # the stores are in place before any rank reads them
    return figures


def _record(
    model: HookedTransformer,
    shards: TokenShards,
    windows: Iterator[tuple[int, int, np.ndarray]],
    n_windows: int,
    ctx: int,
    batch_size: int,
    writers: dict[str, ActivationWriter],
    device: torch.device | str,
) -> None:
    """Run the model on ``n_windows`` of ``windows`` (shard, start, tokens) and append each token's
    activation at each hook point and its origin to that hook's writer."""
    with progress(f"harvest {shards.split}", n_windows * ctx, unit="tok") as advance:
        for first in range(0, n_windows, batch_size):
            batch = [next(windows) for _ in range(min(batch_size, n_windows - first))]
            tokens_BT = torch.from_numpy(np.stack([w for _, _, w in batch])).to(device)
            acts = activations_at_hooks(model, tokens_BT, list(writers))
            offset_BT = np.array([[start + t for t in range(ctx)] for _, start, _ in batch])
            shard_BT = np.repeat([[s] for s, _, _ in batch], ctx, axis=1)
            doc_BT = np.stack([shards.document_of(s, offset_BT[b]) for b, (s, _, _) in enumerate(batch)])
            for name, writer in writers.items():
                writer.append(
                    acts[name].flatten(0, 1),
                    tokens_BT.flatten().cpu().numpy(),
                    doc_BT.ravel(),
                    offset_BT.ravel(),
                    shard_BT.ravel(),
                )
            advance(len(batch) * ctx)
