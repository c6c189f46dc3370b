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
- host memory is about ``2 × buffer_rows × d_in`` values of the stored dtype (one buffer being
  drawn from, one being filled); with an accelerator ``device``, each group is copied there once
  (``buffer_rows × d_in`` more values on the device) and batches are gathered on the device;
- all randomness comes from ``np.random.default_rng(seed)``: the same seed gives the same batches.

For data-parallel training over N ranks, ``part=(r, N)`` yields only rank r's part of each of those
batches, rows [r·B/N, (r+1)·B/N): the ranks draw the same plan (blocks, groups, permutations), and
each reads from disk only the rows of a group that fall in its parts, so a group costs each rank
about 1/N of the reading, copying and buffer memory (a store that fits the buffer is read whole,
once, by every rank; only the gathering is split).
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from monosemantic.errors import UserError

if TYPE_CHECKING:
    from monosemantic.activations.store import ActivationStore

BLOCKS_PER_GROUP = 256
_Group = tuple[np.ndarray, np.ndarray]  # (rows [R, D], perm [≤R]): draw rows[perm]


def shuffled_batches(
    store: ActivationStore,
    batch_size: int,
    seed: int,
    buffer_rows: int = 2**20,
    n_batches: int | None = None,
    device: str | torch.device | None = None,
    start_batch: int = 0,
    part: tuple[int, int] = (0, 1),
) -> Iterator[torch.Tensor]:
    """Yield float32 [batch_size, d_in] batches on ``device`` (CPU when None); with ``part=(r, N)``
    rank r's [batch_size/N, d_in] part of each (module docstring).

    With ``n_batches`` None: one epoch, the last batch holding the remaining ``n_rows % batch_size``
    rows when that is not zero. Otherwise: batches number ``n_batches`` in all, full, over as many
    epochs as that takes. ``start_batch`` resumes the same stream there (batches before it are not
    yielded, and groups wholly before it are not read), so a resumed training run sees exactly the
    batches an uninterrupted one would have.
    """
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: must be at least 1")
    if buffer_rows < 1:
        raise UserError(f"shuffle buffer_rows={buffer_rows}: must be at least 1")
    if n_batches is not None and n_batches < 1:
        raise UserError(f"n_batches={n_batches}: must be at least 1")
    if start_batch < 0:
        raise UserError(f"start_batch={start_batch}: must be at least 0")
    rank, size = part
    if batch_size % size or not 0 <= rank < size:
        raise UserError(f"batch_size={batch_size}: cannot be split into part {rank} of {size} equal parts")
    mine = _RankPositions(batch_size, rank, size)
    rng = np.random.default_rng(seed)
    epochs = 1 if n_batches is None else None
    skip_rows = start_batch * batch_size
    if store.n_rows <= buffer_rows:
        groups = _resident_groups(store, rng, epochs, skip_rows, mine)
    else:
        groups = _streamed_groups(store, rng, buffer_rows, epochs, skip_rows, mine)
    batches = _batches(groups, batch_size // size, torch.device(device if device is not None else "cpu"))
    if n_batches is not None:
        batches = itertools.islice(batches, max(0, n_batches - start_batch))
    try:
        for batch_BD in batches:
            yield batch_BD.float()
    finally:
        groups.close()


class _RankPositions:
    """Which positions of the row stream (counted from the first batch yielded) fall in rank r's
    part of their batch: position p does when ``r·B/N ≤ p mod B < (r+1)·B/N``."""

    def __init__(self, batch_size: int, rank: int, size: int):
        self.batch_size, self.share, self.rank, self.size = batch_size, batch_size // size, rank, size
        self.at = 0  # stream position of the next group's first row

    def take(self, perm_R: np.ndarray) -> np.ndarray:
        """The entries of the next group's ``perm_R`` (its rows in stream order) that are this rank's."""
        if self.size == 1:
            return perm_R
        within_R = (self.at + np.arange(len(perm_R))) % self.batch_size
        self.at += len(perm_R)
        return perm_R[within_R // self.share == self.rank]


def _batches(groups: Iterator[_Group], batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Cut the concatenated ``buffer[perm]`` row streams into [batch_size, D] pieces (the last may be short).

    Pieces are on ``device`` in the stored dtype.
    """
    carry_RD: torch.Tensor | None = None
    for buffer, perm_R in groups:
        take = _gatherer(buffer, perm_R, device)
        at = 0
        if carry_RD is not None:
            at = batch_size - len(carry_RD)
            carry_RD = torch.cat([carry_RD, take(0, at)])
            if len(carry_RD) < batch_size:
                continue
            yield carry_RD
            carry_RD = None
        while at + batch_size <= len(perm_R):
            yield take(at, at + batch_size)
            at += batch_size
        if at < len(perm_R):
            carry_RD = take(at, len(perm_R))  # a copy: the buffer is refilled once we ask for the next group
    if carry_RD is not None:
        yield carry_RD


def _gatherer(buffer: np.ndarray, perm_R: np.ndarray, device: torch.device) -> Callable[[int, int], torch.Tensor]:
    """``take(start, stop)`` → a new tensor ``buffer[perm_R[start:stop]]`` on ``device``.

    On the CPU numpy gathers (faster than torch's index_select there); on an accelerator the group is
    copied over once and gathered there, so each batch costs no host work.
    """
    if device.type == "cpu":
        return lambda start, stop: torch.from_numpy(buffer[perm_R[start:stop]])
    rows_RD = torch.from_numpy(buffer).to(device)
    perm_dev_R = torch.from_numpy(perm_R).to(device)
    return lambda start, stop: rows_RD[perm_dev_R[start:stop]]


def _resident_groups(
    store: ActivationStore, rng: np.random.Generator, epochs: int | None, skip_rows: int, mine: _RankPositions
) -> Iterator[_Group]:
    """The whole store read once; each epoch one group, a fresh permutation of every row."""
    acts_ND: np.ndarray | None = None
    for _ in range(epochs) if epochs is not None else itertools.count():
        perm_N = rng.permutation(store.n_rows)
        if skip_rows >= store.n_rows:
            skip_rows -= store.n_rows
            continue
        if acts_ND is None:
            acts_ND = store.read_range(0, store.n_rows)
        yield acts_ND, mine.take(perm_N[skip_rows:])
        skip_rows = 0


def _streamed_groups(
    store: ActivationStore,
    rng: np.random.Generator,
    buffer_rows: int,
    epochs: int | None,
    skip_rows: int,
    mine: _RankPositions,
) -> Iterator[_Group]:
    """Groups of random blocks, read by a background thread into one of two buffers: the whole
    group, or (one rank of several) only its rows of the group, in store order."""
    block_rows = max(1, buffer_rows // BLOCKS_PER_GROUP)
    blocks_per_group = buffer_rows // block_rows
    block_starts = np.arange(0, store.n_rows, block_rows)
    free: queue.Queue[np.ndarray] = queue.Queue()
    for _ in range(2):
        free.put(np.empty((blocks_per_group * block_rows, store.d_in), dtype=store.stored_dtype))
    ready: queue.Queue[tuple[np.ndarray, int, np.ndarray] | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def load() -> None:
        skip = skip_rows
        try:
            for _ in range(epochs) if epochs is not None else itertools.count():
                order = rng.permutation(len(block_starts))
                for first in range(0, len(order), blocks_per_group):
                    starts = np.sort(block_starts[order[first : first + blocks_per_group]])
                    stops = np.minimum(starts + block_rows, store.n_rows)
                    filled = int((stops - starts).sum())
                    perm = rng.permutation(filled)
                    if skip >= filled:
                        skip -= filled
                        continue
                    buffer = _take(free, stop)
                    if buffer is None:
                        return
                    wanted = mine.take(perm[skip:])  # positions in the group's blocks laid end to end
                    if mine.size == 1:
                        at = 0
                        for start, stop_row in zip(starts.tolist(), stops.tolist()):
                            store.read_range(start, stop_row, out=buffer[at : at + stop_row - start])
                            at += stop_row - start
                        ready.put((buffer, filled, wanted))
                    else:
                        held = np.sort(wanted)
                        offsets = np.cumsum(stops - starts) - (stops - starts)
                        block = np.searchsorted(offsets, held, side="right") - 1
                        store.read_rows(starts[block] + held - offsets[block], out=buffer[: len(held)])
                        ready.put((buffer, len(held), np.searchsorted(held, wanted)))
                    skip = 0
            ready.put(None)
        except BaseException as error:  # handed to the consumer, which re-raises it
            ready.put(error)

    thread = threading.Thread(target=load, name="activation-reader", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            buffer, filled, perm = item
            yield buffer[:filled], perm
            free.put(buffer)
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
