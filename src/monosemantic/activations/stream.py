"""Activations made on the fly by the LM, for budgets that no disk cache holds.

The paper trained each dictionary on 8B activations; at 512 float16 dimensions a cache of them is
8 TB. Streaming runs the LM instead, on the same device as the SAE, and hands out shuffled batches:

- the stream is cut into *groups* of ``buffer_rows`` rows. A group is ``buffer_rows / ctx`` token
  windows at uniformly random offsets of the split (``TokenShards.random_windows``), run through
  the model as far as the hook, flattened, and drawn in a random permutation. So a batch mixes
  tokens from thousands of windows, never a run of neighbours from one;
- batches are consecutive ``batch_size`` pieces of the concatenated groups (a batch may span two);
- all randomness comes from ``np.random.default_rng(seed)`` (windows) and a torch generator seeded
  likewise (permutations), so the same seed gives the same batches on the same device and build;
  ``start_batch`` resumes the stream there, drawing the skipped groups' windows without running
  the model on them;
- memory: one group on the device (``buffer_rows × d_in`` values of the model's dtype).

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
    ) -> Iterator[torch.Tensor]:
        """``n_batches`` float32 [batch_size, d_in] batches (module docstring), made on the model's
        device and moved to ``device`` if another is given (``ActivationStore``'s signature)."""
        if batch_size < 1 or n_batches < 1 or start_batch < 0:
            raise UserError(
                f"streamed batches: batch_size={batch_size} and n_batches={n_batches} must be "
                f"at least 1, start_batch={start_batch} at least 0"
            )
        carry_BD = None
        batches = 0
        for rows_RD in self._groups(seed, buffer_rows, start_batch * batch_size):
            if carry_BD is not None:
                rows_RD = torch.cat([carry_BD, rows_RD])
            full = len(rows_RD) // batch_size * batch_size
            for batch_BD in rows_RD[:full].split(batch_size):
                if batches == n_batches - start_batch:
                    return
                batches += 1
                yield batch_BD.to(device or self.device, torch.float32)
            carry_BD = rows_RD[full:]

    def sample_rows(self, n_rows: int, seed: int) -> torch.Tensor:
        """``n_rows`` activations of random tokens, float32 [n_rows, d_in] on the model's device."""
        return next(self._groups(seed, -(-n_rows // self.ctx) * self.ctx, 0))[:n_rows].float()

    def token_chunks(self, n_tokens: int, windows_per_chunk: int = 64) -> Iterator[torch.Tensor]:
        """The activations of the split's first ``ceil(n_tokens / ctx)`` non-overlapping windows, in
        order (the rows a harvest of as many tokens stores), as float32 [windows_per_chunk·ctx, D]
        chunks on the model's device; fewer when the split is shorter."""
        n_windows = min(-(-n_tokens // self.ctx), self.shards.n_windows(self.ctx))
        if n_windows == 0:
            raise UserError(f"{self.shards.split} split has fewer than {self.ctx} tokens: nothing to stream")
        windows = self.shards.sequential_windows(self.ctx, n_windows)
        for first in range(0, n_windows, windows_per_chunk):
            batch = itertools.islice(windows, min(windows_per_chunk, n_windows - first))
            yield self._activations(np.stack([w for _, _, w in batch])).float()

    def _groups(self, seed: int, buffer_rows: int, skip_rows: int) -> Iterator[torch.Tensor]:
        """Endless groups of ``buffer_rows // ctx`` random windows' activations, rows permuted;
        the first ``skip_rows`` rows are left out (their windows drawn, but not run)."""
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
            yield self._activations(windows_BT)[perm_R[skip_rows:]]
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
