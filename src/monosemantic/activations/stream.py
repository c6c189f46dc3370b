"""Activations made on the fly by the LM, for budgets that no disk cache holds.

The paper trained each dictionary on 8B activations; at 512 float16 dimensions a cache of them is
8 TB. Streaming runs the LM instead, on the same device as the SAE, and hands out shuffled batches:

- the stream is cut into *groups* of ``buffer_rows`` rows. A group is ``buffer_rows / ctx`` token
  windows at uniformly random offsets of the split (``TokenShards.random_windows``), run through
  the model as far as the hook, flattened, and drawn in a random permutation. So a batch mixes
  tokens from thousands of windows, never a run of neighbours from one;
- batches are consecutive ``batch_size`` pieces of the concatenated groups (a batch may span two),
  each batch's rows then put in the order of their group and row (window, then position): the
  same set of rows, in an order that splits by windows;
- data-parallel over N ranks, ``part=(r, N)`` yields rank r's rows [r·B/N, (r+1)·B/N) of each of
  those batches, and the rank runs the LM only on the windows those rows come from: in each batch,
  its part is the windows between two quantiles of the batch's window numbers, so a rank runs
  about 1/N of each group's windows plus those near its quantiles in some batch (the fewer rows a
  batch has per window of the group, the more such windows; ``benchmarks/distributed_scaling.py``
  measures the share);
- all randomness comes from ``np.random.default_rng(seed)`` (windows) and a torch generator seeded
  likewise (permutations), so the same seed gives the same batches on the same device and build;
  ``start_batch`` resumes the stream there, drawing the skipped groups' windows without running
  the model on them;
- memory: one group on the device (``buffer_rows × d_in`` values of the model's dtype), two while a
  batch spans them.

With a small corpus the same token comes back many times, each time in another window (its context
differs, and so does its activation wherever that context is shorter than ``ctx``).

``token_chunks`` gives the split's non-overlapping windows in order instead, as the harvest does,
for measuring over many more tokens than the held-out store keeps (feature density, universality).
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import torch
from transformer_lens import HookedTransformer

from monosemantic.activations.harvest import activations_at, hook_width
from monosemantic.corpus.shards import TokenShards
from monosemantic.errors import UserError

WINDOWS_PER_FORWARD = 512  # token windows per forward pass while filling a group


class ActivationStream:
    """``model``'s activations at ``hook_name`` on ``ctx``-token windows of ``shards``, made on demand
    on the model's device. Offers what the SAE stages read from an ``ActivationStore``: shuffled
    training batches, a random sample of rows, the mean, and chunks in token order."""

    def __init__(self, model: HookedTransformer, shards: TokenShards, hook_name: str, ctx: int):
        self.d_in = hook_width(model, hook_name)  # an unknown hook fails here, before any forward pass
        self.model, self.shards, self.hook_name, self.ctx = model, shards, hook_name, ctx
        self.device = next(model.parameters()).device

    def shuffled_batches(
        self,
        batch_size: int,
        seed: int,
        buffer_rows: int,
        n_batches: int,
        device: str | torch.device | None = None,
        start_batch: int = 0,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[torch.Tensor]:
        """``n_batches`` float32 [batch_size, d_in] batches (module docstring), made on the model's
        device and moved to ``device`` if another is given (``ActivationStore``'s signature); with
        ``part=(r, N)``, rank r's [batch_size/N, d_in] part of each."""
        rank, size = part
        if batch_size < 1 or n_batches < 1 or start_batch < 0 or batch_size % size or not 0 <= rank < size:
            raise UserError(
                f"streamed batches: batch_size={batch_size} and n_batches={n_batches} must be "
                f"at least 1, start_batch={start_batch} at least 0, batch_size divisible into {size} parts"
            )
        share = batch_size // size
        left = n_batches - start_batch
        groups: dict[int, _GroupActivations] = {}
        pending_G = pending_R = np.empty(0, dtype=np.int64)  # rows drawn but not yet batched: group, row
        for g, (windows_WT, rows_R) in enumerate(self._plans(seed, buffer_rows, start_batch * batch_size)):
            groups[g] = _GroupActivations(self, windows_WT)
            pending_G = np.concatenate([pending_G, np.full(len(rows_R), g)])
            pending_R = np.concatenate([pending_R, rows_R])
            n_full = min(len(pending_R) // batch_size, left)
            cut = n_full * batch_size
            if n_full:
                # each batch's rows in (group, row) order, of which this rank takes positions [r·B/N, (r+1)·B/N)
                order = np.lexsort((pending_R[:cut], pending_G[:cut], np.arange(cut) // batch_size))
                mine = order.reshape(n_full, batch_size)[:, rank * share : (rank + 1) * share].ravel()
                mine_G, mine_R = pending_G[mine], pending_R[mine]  # groups ascending: batches follow the stream
                rows_MD = torch.cat([groups[k].rows(mine_R[mine_G == k]) for k in np.unique(mine_G).tolist()])
                for batch_BD in rows_MD.split(share):
                    yield batch_BD.to(device or self.device, torch.float32)
                left -= n_full
            if left == 0:
                return
            pending_G, pending_R = pending_G[cut:], pending_R[cut:]
            first_needed = int(pending_G[0]) if len(pending_G) else g + 1
            groups = {k: acts for k, acts in groups.items() if k >= first_needed}

    def sample_rows(self, n_rows: int, seed: int) -> torch.Tensor:
        """``n_rows`` activations of random tokens, float32 [n_rows, d_in] on the model's device."""
        windows_WT, rows_R = next(self._plans(seed, -(-n_rows // self.ctx) * self.ctx, 0))
        return self._activations(windows_WT)[torch.from_numpy(rows_R[:n_rows]).to(self.device)].float()

    def token_chunks(
        self, n_tokens: int, windows_per_chunk: int = 64, part: tuple[int, int] = (0, 1)
    ) -> Iterator[torch.Tensor]:
        """The activations of the split's first ``W = ceil(n_tokens / ctx)`` non-overlapping windows,
        in order (the rows a harvest of as many tokens stores), as float32 [windows_per_chunk·ctx, D]
        chunks on the model's device; fewer when the split is shorter. With ``part=(r, N)``, only
        rank r's contiguous share of the windows, [r·W/N, (r+1)·W/N) (rounded down, as the harvest's)."""
        n_windows = min(-(-n_tokens // self.ctx), self.shards.n_windows(self.ctx))
        if n_windows == 0:
            raise UserError(f"{self.shards.split} split has fewer than {self.ctx} tokens: nothing to stream")
        rank, size = part
        first, last = n_windows * rank // size, n_windows * (rank + 1) // size
        windows = itertools.islice(self.shards.sequential_windows(self.ctx, last), first, None)
        for start in range(first, last, windows_per_chunk):
            batch = itertools.islice(windows, min(windows_per_chunk, last - start))
            yield self._activations(np.stack([w for _, _, w in batch])).float()

    def _plans(self, seed: int, buffer_rows: int, skip_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless groups, not yet run: ``buffer_rows // ctx`` random windows [W, T] and the order in
        which their W·T rows (row w·T + t: window w, position t) are drawn; the first ``skip_rows``
        rows of the stream are left out."""
        windows_per_group = max(1, buffer_rows // self.ctx)
        rows_per_group = windows_per_group * self.ctx
        rng = np.random.default_rng(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        while True:
            windows_BT = self.shards.random_windows(windows_per_group, self.ctx, rng)
            perm_R = torch.randperm(rows_per_group, generator=generator, device=self.device)
            if skip_rows >= rows_per_group:
                skip_rows -= rows_per_group
                continue
            yield windows_BT, perm_R[skip_rows:].cpu().numpy()
            skip_rows = 0

    def _activations(self, windows_BT: np.ndarray) -> torch.Tensor:
        """[B·T, D] activations of ``windows_BT`` [B, T], WINDOWS_PER_FORWARD windows per forward pass."""
        pieces = np.array_split(windows_BT, -(-len(windows_BT) // WINDOWS_PER_FORWARD))
        return torch.cat(
            [
                activations_at(self.model, torch.from_numpy(w).to(self.device), self.hook_name).flatten(0, 1)
                for w in pieces
            ]
        )


class _GroupActivations:
    """One group's activations [W·T, D], each window run through the model the first time one of
    its rows is asked for."""

    def __init__(self, stream: ActivationStream, windows_WT: np.ndarray):
        self.stream, self.windows_WT = stream, windows_WT
        self.acts_WTD: torch.Tensor | None = None
        self.run_W = np.zeros(len(windows_WT), dtype=bool)

    def rows(self, rows_M: np.ndarray) -> torch.Tensor:
        """Activations of rows ``rows_M`` of the group, [M, D], in that order."""
        W, T = self.windows_WT.shape
        new_W = np.unique(rows_M // T)
        new_W = new_W[~self.run_W[new_W]]
        if len(new_W):
            acts_NTD = self.stream._activations(self.windows_WT[new_W]).view(len(new_W), T, -1)
            if self.acts_WTD is None:
                self.acts_WTD = acts_NTD.new_empty(W, T, acts_NTD.shape[-1])
            self.acts_WTD[torch.from_numpy(new_W).to(self.stream.device)] = acts_NTD
            self.run_W[new_W] = True
        return self.acts_WTD.view(W * T, -1)[torch.from_numpy(rows_M).to(self.stream.device)]
