"""Shuffled training batches streamed from an activation store larger than RAM.

Each epoch is planned as follows. The store's rows are cut into contiguous blocks of
``block_rows = max(1, buffer_rows // 256)`` rows; the blocks are put in a random order and taken
``buffer_rows // block_rows`` at a time (a *group*). A background thread reads a group's blocks
from disk into a buffer — whole contiguous slabs, the fast way to read a memmap — while the
batches of the previous group are being drawn; the rows of a group are drawn in a random
permutation. So:

- every row appears exactly once per epoch; the row stream is epoch 1's rows, then epoch 2's, …,
  and batches are consecutive ``batch_size`` pieces of that stream (a batch may span two groups
  or two epochs);
- a batch mixes rows from up to 256 random places in the store; a store of at most
  ``buffer_rows`` rows is read once and gets an exact fresh permutation every epoch;
- memory is about ``2 × buffer_rows × d_in`` values of the stored dtype (one buffer being drawn
  from, one being filled);
- all randomness comes from ``np.random.default_rng(seed)``: the same seed gives the same batches.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from monosemantic.errors import UserError

if TYPE_CHECKING:
    from monosemantic.activations.store import ActivationStore

BLOCKS_PER_GROUP = 256
_Group = tuple[np.ndarray, np.ndarray]  # (buffer [≥R, D], perm [R]): draw buffer[perm]


def shuffled_batches(
    store: ActivationStore,
    batch_size: int,
    seed: int,
    buffer_rows: int = 2**20,
    n_batches: int | None = None,
    device: str | torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Yield float32 [batch_size, d_in] batches on ``device`` (CPU when None).

    With ``n_batches`` None: one epoch, the last batch holding the remaining ``n_rows % batch_size``
    rows when that is not zero. Otherwise: exactly ``n_batches`` full batches, over as many epochs
    as that takes.
    """
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: must be at least 1")
    if buffer_rows < 1:
        raise UserError(f"shuffle buffer_rows={buffer_rows}: must be at least 1")
    if n_batches is not None and n_batches < 1:
        raise UserError(f"n_batches={n_batches}: must be at least 1")
    rng = np.random.default_rng(seed)
    epochs = 1 if n_batches is None else None
    if store.n_rows <= buffer_rows:
        groups = _resident_groups(store, rng, epochs)
    else:
        groups = _streamed_groups(store, rng, buffer_rows, epochs)
    batches = _batches(groups, batch_size)
    if n_batches is not None:
        batches = itertools.islice(batches, n_batches)
    try:
        for batch_BD in batches:
            tensor = torch.from_numpy(batch_BD)
            if device is not None:
                tensor = tensor.to(device)  # before .float(): a float16 store moves half the bytes
            yield tensor.float()
    finally:
        groups.close()


def _batches(groups: Iterator[_Group], batch_size: int) -> Iterator[np.ndarray]:
    """Cut the concatenated ``buffer[perm]`` row streams into [batch_size, D] pieces (the last may be short)."""
    carry_RD: np.ndarray | None = None
    for buffer, perm_R in groups:
        at = 0
        if carry_RD is not None:
            at = batch_size - len(carry_RD)
            carry_RD = np.concatenate([carry_RD, buffer[perm_R[:at]]])
            if len(carry_RD) < batch_size:
                continue
            yield carry_RD
            carry_RD = None
        while at + batch_size <= len(perm_R):
            yield buffer[perm_R[at : at + batch_size]]
            at += batch_size
        if at < len(perm_R):
            carry_RD = buffer[perm_R[at:]]  # a copy: the buffer is refilled once we ask for the next group
    if carry_RD is not None:
        yield carry_RD


def _resident_groups(store: ActivationStore, rng: np.random.Generator, epochs: int | None) -> Iterator[_Group]:
    """The whole store read once; each epoch one group, a fresh permutation of every row."""
    acts_ND = store.read_range(0, store.n_rows)
    for _ in range(epochs) if epochs is not None else itertools.count():
        yield acts_ND, rng.permutation(store.n_rows)


def _streamed_groups(
    store: ActivationStore, rng: np.random.Generator, buffer_rows: int, epochs: int | None
) -> Iterator[_Group]:
    """Groups of random blocks, read by a background thread into one of two buffers."""
    block_rows = max(1, buffer_rows // BLOCKS_PER_GROUP)
    blocks_per_group = buffer_rows // block_rows
    block_starts = np.arange(0, store.n_rows, block_rows)
    free: queue.Queue[np.ndarray] = queue.Queue()
    for _ in range(2):
        free.put(np.empty((blocks_per_group * block_rows, store.d_in), dtype=store.stored_dtype))
    ready: queue.Queue[_Group | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def load() -> None:
        try:
            for _ in range(epochs) if epochs is not None else itertools.count():
                order = rng.permutation(len(block_starts))
                for first in range(0, len(order), blocks_per_group):
                    buffer = _take(free, stop)
                    if buffer is None:
                        return
                    filled = 0
                    for start in np.sort(block_starts[order[first : first + blocks_per_group]]):
                        stop_row = min(store.n_rows, int(start) + block_rows)
                        store.read_range(int(start), stop_row, out=buffer[filled : filled + stop_row - int(start)])
                        filled += stop_row - int(start)
                    ready.put((buffer, rng.permutation(filled)))
            ready.put(None)
        except BaseException as error:  # handed to the consumer, which re-raises it
            ready.put(error)

    thread = threading.Thread(target=load, name="activation-reader", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            free.put(item[0])
    finally:
        stop.set()
        thread.join()


def _take(free: queue.Queue[np.ndarray], stop: threading.Event) -> np.ndarray | None:
    """A free buffer, or None once the consumer has stopped."""
    while not stop.is_set():
        try:
            return free.get(timeout=0.05)
        except queue.Empty:
            continue
    return None
