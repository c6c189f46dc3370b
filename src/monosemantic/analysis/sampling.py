"""Per group, keep the k entries with the smallest keys of a stream — exactly, in bounded memory.

One structure serves two purposes of the feature statistics pass:

- **top activating examples**: group = unit, key = −activation, with at most ``doc_cap`` entries
  per (group, document) so one long document cannot fill a unit's list;
- **uniform samples** (reservoirs per activation interval): key = an independent U(0, 1) draw;
  the k smallest of i.i.d. uniform keys are a uniform sample without replacement ("bottom-k").

Entries arrive in batches; an entry is kept aside only if its key beats its group's current k-th
key (``threshold``), so after a short warm-up almost nothing passes. Kept-aside entries are merged
in (a lexsort over the touched groups) when enough have piled up. The result does not depend on
when merges happen: with the cap, the kept list is the greedy "walk keys upward, take an entry
unless its document already has ``doc_cap``, stop at k", and an entry whose key is above the
k-th key of an already-full capped list can never enter it (later entries only lower that key).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def run_ranks(*sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (arrays already sorted jointly)."""
    n = len(sorted_keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new_run = np.zeros(n, dtype=bool)
    new_run[0] = True
    for key in sorted_keys:
        new_run[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(new_run)
    run_of = np.cumsum(new_run) - 1
    return np.arange(n) - starts[run_of]


class GroupedBottomK:
    """The k smallest-key entries per group, each with a row id, document, value and a payload.

    Arrays after ``flush()``: ``key``, ``row``, ``value`` [G, k] sorted by key within each group
    (empty slots: key +inf, row −1) and ``payload`` [G, k, W] (float32, NaN in empty slots).
    """

    def __init__(self, n_groups: int, k: int, payload_width: int, doc_cap: int | None = None, flush_at: int = 262_144):
        self.k, self.doc_cap, self.flush_at = k, doc_cap, flush_at
        self.key = np.full((n_groups, k), np.inf)
        self.row = np.full((n_groups, k), -1, dtype=np.int64)
        self.doc = np.full((n_groups, k), -1, dtype=np.int64)
        self.value = np.zeros((n_groups, k), dtype=np.float32)
        self.payload = np.full((n_groups, k, payload_width), np.nan, dtype=np.float32)
        self.threshold = np.full(n_groups, np.inf)
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._n_pending = 0

    @classmethod
    def concat(cls, parts: list[GroupedBottomK]) -> GroupedBottomK:
        """One structure whose groups are ``parts``' groups in order (all flushed, same k and width)."""
        joined = cls(0, parts[0].k, parts[0].payload.shape[2], parts[0].doc_cap, parts[0].flush_at)
        for name in ("key", "row", "doc", "value", "payload", "threshold"):
            setattr(joined, name, np.concatenate([getattr(part, name) for part in parts]))
        return joined

    def offer(
        self,
        group_E: np.ndarray,
        key_E: np.ndarray,
        row_E: np.ndarray,
        doc_E: np.ndarray,
        value_E: np.ndarray,
        payload_of: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        """Offer E entries; ``payload_of(idx)`` → [len(idx), W] is called only for those kept aside."""
        idx = np.flatnonzero(key_E < self.threshold[group_E])
        if len(idx) == 0:
            return
        self._pending.append((group_E[idx], key_E[idx], row_E[idx], doc_E[idx], value_E[idx], payload_of(idx)))
        self._n_pending += len(idx)
        if self._n_pending >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        """Merge the kept-aside entries into the per-group lists."""
        if not self._pending:
            return
        group, key, row, doc, value, payload = (np.concatenate(parts) for parts in zip(*self._pending))
        self._pending, self._n_pending = [], 0
        touched = np.unique(group)
        old_g, old_slot = np.nonzero(np.isfinite(self.key[touched]))
        old_g = touched[old_g]
        group = np.concatenate([old_g, group])
        key = np.concatenate([self.key[old_g, old_slot], key])
        row = np.concatenate([self.row[old_g, old_slot], row])
        doc = np.concatenate([self.doc[old_g, old_slot], doc])
        value = np.concatenate([self.value[old_g, old_slot], value])
        payload = np.concatenate([self.payload[old_g, old_slot], payload])
        if self.doc_cap is not None:
            order = np.lexsort((row, key, doc, group))
            ok = order[run_ranks(group[order], doc[order]) < self.doc_cap]
            group, key, row, doc, value, payload = (a[ok] for a in (group, key, row, doc, value, payload))
        order = np.lexsort((row, key, group))
        slot = run_ranks(group[order])
        order, slot = order[slot < self.k], slot[slot < self.k]
        self.key[touched], self.row[touched], self.doc[touched] = np.inf, -1, -1
        self.value[touched], self.payload[touched] = 0, np.nan
        g = group[order]
        self.key[g, slot], self.row[g, slot], self.doc[g, slot] = key[order], row[order], doc[order]
        self.value[g, slot], self.payload[g, slot] = value[order], payload[order]
        self.threshold[touched] = self.key[touched, self.k - 1]


def fill_up(capped: GroupedBottomK, uncapped: GroupedBottomK) -> GroupedBottomK:
    """``capped``'s lists, each topped up to k with the best entries of ``uncapped`` (same groups and
    keys, no document cap) that it lacks — "at most ``doc_cap`` per document unless there are not
    enough documents". Exact: the best entries missing from a capped list are all among the k best.
    Both must be flushed; ``capped`` is updated in place and returned."""
    for g in np.flatnonzero(capped.row[:, -1] < 0):
        have = capped.row[g][capped.row[g] >= 0]
        extra = [s for s in range(uncapped.k) if uncapped.row[g, s] >= 0 and uncapped.row[g, s] not in have]
        n = len(have)
        take = extra[: capped.k - n]
        keys = np.concatenate([capped.key[g, :n], uncapped.key[g, take]])
        order = np.lexsort((np.concatenate([have, uncapped.row[g, take]]), keys))
        for name in ("key", "row", "doc", "value", "payload"):
            merged = np.concatenate([getattr(capped, name)[g, :n], getattr(uncapped, name)[g, take]])
            getattr(capped, name)[g, : len(order)] = merged[order]
    return capped
