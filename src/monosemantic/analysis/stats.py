"""Per-unit statistics over held-out activations, the same code for neurons and SAE features.

A *basis* turns MLP activations x [N, D] into unit activations a [N, U] ≥ 0: the identity for the
neurons (the baseline basis), ``sae.encode`` for a dictionary. Two sweeps over the first
``n_rows`` rows of the activation store, chunk by chunk, never hold a dense [tokens × units] matrix:

- sweep 1: fire count #{n: a_nu > 0}, Σ_n a_nu, max_n a_nu; the top-k activating rows per unit
  (≤ ``doc_cap`` per document unless too few documents have any, ``GroupedBottomK`` keyed by −a);
  fire counts per (unit, token) and Σ a per (unit, token) (sparse [U, V]); co-firing counts
  C_uv = #{n: a_nu > 0 ∧ a_nv > 0} (sparse [U, U], over the first ``cofire_rows`` rows only and
  until it holds ``MAX_COFIRE_PAIRS`` pairs, as distinct pairs grow with the tokens); every unit's
  activations on a fixed seeded set of random contexts; Σ a per (unit, document source), per
  (unit, language) and per (unit, previous token) (``context.py``);
- sweep 2 (needs each unit's max and its tokens): Σ a per (unit, token, document source) and per
  (unit, token, previous token) for each unit's ``CONTEXT_TOKENS`` tokens of most activation mass
  (what the context explainer compares with its token list); a histogram of the nonzero
  activations over (0, max], and
  ``per_interval`` uniform samples from each of ``n_intervals`` equal activation intervals
  [i·max/I, (i+1)·max/I) — Bricken et al. 2023's dashboard intervals — keyed by a hash of
  (row, unit, seed), so the sample is the same however the pass is chunked.

Every example carries the unit's activation on each token of its context (``left`` tokens before,
``right`` after, cut at the harvest window — the model saw nothing beyond it), gathered while the
chunk is in memory: chunks are whole harvest windows, so a context never straddles two chunks.
Activations are compared with 0 exactly: every SAE variant and the ReLU MLP give exact zeros.

Split across the ranks of a ``world``: rank r of N holds the r-th of N contiguous ranges of each
basis's units (``UnitRange``; their sizes differ by at most one). Every rank reads and encodes every
chunk — a TopK encoder needs all pre-activations — but keeps the bookkeeping above for its own units
only, and co-firing counts C_uv for its units u and every unit v. What decides for the whole basis is
counted over all ranks, so each rank decides as one process would: whether a count matrix is dense
(the whole matrix's size), when a sparse one merges its pending triples (which fixes its float sums),
and whether co-firing still has room for more pairs. ``join_unit_stats`` concatenates the ranks'
parts into exactly what one process computes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from monosemantic.activations import ActivationStore
from monosemantic.analysis.context import TokenSources, UnitContext
from monosemantic.analysis.sampling import GroupedBottomK, fill_up
from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.progress import progress

DENSE_COFIRE_FRACTION = 0.05  # above this fraction of nonzero activations, co-firing uses a dense matmul
DENSE_ENTRIES = 1 << 24  # count matrices up to this size (64 MB as float32) are kept dense
MAX_COFIRE_PAIRS = 1 << 24  # a sparse co-firing matrix stops growing here (~200 MB)
MERGE_ENTRIES = 1 << 22  # a sparse count matrix merges its pending triples once they are this many (or more)
CONTEXT_TOKENS = 8  # per unit, the tokens whose activation is split by source and previous token


@dataclass
class Basis:
    """A set of units: ``encode`` maps acts_BD [B, D] → unit activations [B, n_units] (≥ 0)."""

    name: str
    kind: str  # "neuron" | "feature"
    n_units: int
    encode: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StatsConfig:
    n_rows: int
    top_k: int = 20
    doc_cap: int = 3
    n_intervals: int = 11
    per_interval: int = 5
    n_random: int = 20
    hist_bins: int = 32
    left: int = 12
    right: int = 4
    chunk_windows: int = 8
    cofire_rows: int = 262_144  # co-firing counted on the first rows only: distinct pairs grow with tokens
    seed: int = 0


@dataclass
class UnitStats:
    """Everything sweep 1 and 2 measured for one basis over ``n_rows`` tokens."""

    name: str
    kind: str
    n_rows: int
    fire_count_U: np.ndarray  # int64
    act_sum_U: np.ndarray  # float64, Σ over all rows
    max_act_U: np.ndarray  # float32
    hist_UH: np.ndarray  # int64 counts of nonzero activations in H equal bins of (0, max]
    top: GroupedBottomK  # groups = units, key = −activation
    intervals: GroupedBottomK  # groups = unit·I + interval, key = U(0,1)
    random_rows_P: np.ndarray  # the shared random contexts' centre rows
    random_acts_UPW: np.ndarray  # float32 [U, P, W], NaN outside the window
    token_fires_UV: sp.csr_matrix  # fire counts per (unit, token)
    token_act_sums_UV: sp.csr_matrix  # Σ activation per (unit, token)
    cofire_UU: sp.csr_matrix  # co-firing counts (diagonal = fire counts) over the first cofire_rows rows
    cofire_rows: int
    source_mass_US: np.ndarray  # float64 Σ activation per (unit, document source)
    language_mass_UL: np.ndarray  # float64 Σ activation per (unit, document language)
    prev_mass_UV: sp.csr_matrix  # Σ activation per (unit, previous token in the window)
    context_tokens_UT: np.ndarray  # int64 [U, T] each unit's tokens of most activation mass (−1: none)
    token_source_UTS: np.ndarray  # float64 [U, T, S] Σ activation on those tokens per source
    token_prev_UTV: sp.csr_matrix  # [U·T, V] Σ activation on those tokens per previous token
    first_unit: int = 0  # the basis's unit that unit 0 here is (a rank's part of a basis; 0 for a whole one)

    def context(self, unit: int) -> UnitContext:
        """Where unit ``unit``'s activation mass comes from (see ``context.py``)."""
        start, stop = self.prev_mass_UV.indptr[unit], self.prev_mass_UV.indptr[unit + 1]
        T = self.context_tokens_UT.shape[1]
        return UnitContext(
            self.source_mass_US[unit],
            self.language_mass_UL[unit],
            self.prev_mass_UV.indices[start:stop].astype(np.int64),
            self.prev_mass_UV.data[start:stop].astype(np.float64),
            float(self.act_sum_U[unit] / self.fire_count_U[unit]) if self.fire_count_U[unit] > 0 else 0.0,
            self.context_tokens_UT[unit],
            self.token_source_UTS[unit],
            self.token_prev_UTV[unit * T : (unit + 1) * T].toarray(),
        )

    @property
    def n_units(self) -> int:
        """Units held here (a rank's part: its range's)."""
        return len(self.fire_count_U)

    @property
    def density_U(self) -> np.ndarray:
        return self.fire_count_U / self.n_rows

    @property
    def mean_act_U(self) -> np.ndarray:
        """Mean activation over the tokens where the unit fires (0 for a unit that never fires)."""
        return np.where(self.fire_count_U > 0, self.act_sum_U / np.maximum(self.fire_count_U, 1), 0.0)


@dataclass
class TokenContext:
    """Rows of the analysed range, their token ids and documents, and each row's context window."""

    tokens_N: np.ndarray
    docs_N: np.ndarray
    ctx: int  # harvest window length

    def span(self, row: int, left: int, right: int) -> tuple[int, int]:
        """First and one-past-last row of ``row``'s context, cut at its window (one row, no arrays)."""
        start = row // self.ctx * self.ctx
        return max(row - left, start), min(row + right + 1, start + self.ctx, len(self.tokens_N))

    def window_rows(self, rows_E: np.ndarray, left: int, right: int) -> tuple[np.ndarray, np.ndarray]:
        """Context rows [E, W] (clipped) and a mask [E, W] of those inside the row's window."""
        offsets_W = np.arange(-left, right + 1)
        rows_EW = rows_E[:, None] + offsets_W[None, :]
        start_E = rows_E // self.ctx * self.ctx
        inside_EW = (rows_EW >= start_E[:, None]) & (rows_EW < start_E[:, None] + self.ctx)
        inside_EW &= rows_EW < len(self.tokens_N)
        return np.where(inside_EW, rows_EW, rows_E[:, None]), inside_EW


def analysed_rows(store: ActivationStore, n_tokens: int) -> tuple[int, int]:
    """(rows to analyse, harvest window length): whole windows, at most ``n_tokens`` and the store."""
    ctx = int(store.meta.get("ctx") or store.n_rows)
    n_rows = min(n_tokens, store.n_rows) // ctx * ctx
    if n_rows == 0:
        raise UserError(f"activation store {store.path}: fewer than one window ({ctx} rows) to analyse")
    return n_rows, ctx


def read_token_context(store: ActivationStore, n_rows: int, ctx: int) -> TokenContext:
    origin = store.origin(np.arange(n_rows))
    return TokenContext(origin["token"], origin["doc"], ctx)


def uniform_hash(rows_E: np.ndarray, units_E: np.ndarray, seed: int) -> np.ndarray:
    """A U(0, 1) number per (row, unit, seed) — splitmix64 of the triple — so a unit's samples do not
    depend on chunking, on the other units, or on which other bases are analysed alongside."""
    with np.errstate(over="ignore"):
        z = (
            rows_E.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            + units_E.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
            + np.uint64(seed) * np.uint64(0xBF58476D1CE4E5B9)
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class UnitRange:
    """Units [first, stop) of a basis of ``n_units``, the part one rank of ``world`` holds."""

    first: int
    stop: int
    n_units: int
    world: World = SINGLE

    @classmethod
    def of(cls, n_units: int, world: World) -> UnitRange:
        """Rank r's range: the r-th of ``world.size`` contiguous ranges, the first ``n_units % size`` one longer."""
        base, extra = divmod(n_units, world.size)
        first = world.rank * base + min(world.rank, extra)
        return cls(first, first + base + int(world.rank < extra), n_units, world)

    @property
    def size(self) -> int:
        return self.stop - self.first

    def own(self, b_E: np.ndarray, u_E: np.ndarray, v_E: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entries (row, unit, value) of this range's units, numbered from its first."""
        if self.size == self.n_units:
            return b_E, u_E, v_E
        mine = (u_E >= self.first) & (u_E < self.stop)
        return b_E[mine], u_E[mine] - self.first, v_E[mine]

    def total(self, *counts: int) -> list[int]:
        """Each count summed over the ranks (every rank holding its own range of the same basis)."""
        if self.world.size == 1:
            return list(counts)
        return self.world.all_reduce_(torch.tensor(counts, dtype=torch.int64)).tolist()


class _MatrixSum:
    """A running Σ of sparse contributions to the rows of a [R, C] matrix that ``units`` holds
    (``rows_per_unit`` consecutive rows per unit): a dense float32 array when the whole matrix, all
    ranks' rows, has at most ``DENSE_ENTRIES`` entries (each addition costs O(its nonzeros)), otherwise
    COO triples summed in one COO → CSR conversion whenever they hold as many entries as the running
    total — both counted over all ranks, so that every rank merges where one process would."""

    def __init__(self, units: UnitRange, cols: int, rows_per_unit: int = 1):
        self.units = units
        self.shape = (units.size * rows_per_unit, cols)
        dense = units.n_units * rows_per_unit * cols <= DENSE_ENTRIES
        self.dense = torch.zeros(self.shape[0] * cols) if dense else None
        self.total = sp.csr_matrix(self.shape, dtype=np.float64)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_pending = 0

    def add(self, row_E: np.ndarray, col_E: np.ndarray, value_E: np.ndarray) -> None:
        if self.dense is not None:
            self.dense.index_add_(
                0,
                torch.from_numpy(row_E * self.shape[1] + col_E),
                torch.from_numpy(np.asarray(value_E, dtype=np.float32)),
            )
            return
        self.parts.append((row_E, col_E, value_E))
        self.n_pending += len(row_E)
        pending, held = self.units.total(self.n_pending, self.total.nnz)
        if pending >= max(MERGE_ENTRIES, held):
            self.collapse()

    def sparse_entries(self) -> int:
        """Entries held by the sparse sum on all ranks (its memory grows with them); 0 for a dense one."""
        return 0 if self.dense is not None else sum(self.units.total(self.total.nnz, self.n_pending))

    def add_csr(self, matrix: sp.csr_matrix) -> None:
        self.add(
            np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr)), matrix.indices.astype(np.int64), matrix.data
        )

    def add_dense(self, matrix: torch.Tensor) -> None:
        if self.dense is not None:
            self.dense += matrix.reshape(-1)
        else:
            row_E, col_E = (t.numpy() for t in torch.nonzero(matrix, as_tuple=True))
            self.add(row_E, col_E, matrix[row_E, col_E].numpy())

    def collapse(self) -> sp.csr_matrix:
        if self.dense is not None:
            return sp.csr_matrix(self.dense.double().numpy().reshape(self.shape))
        if self.parts:
            total = self.total.tocoo()
            rows, cols, values = zip((total.row, total.col, total.data), *self.parts)
            self.total = sp.coo_matrix(
                (np.concatenate(values).astype(np.float64), (np.concatenate(rows), np.concatenate(cols))),
                shape=self.shape,
            ).tocsr()
            self.parts, self.n_pending = [], 0
        return self.total


@torch.no_grad()
def compute_unit_stats(
    store: ActivationStore,
    bases: list[Basis],
    text: TokenContext,
    vocab_size: int,
    cfg: StatsConfig,
    sources: TokenSources | None = None,
    world: World = SINGLE,
) -> list[UnitStats]:
    """Both sweeps over rows [0, cfg.n_rows) for every basis (one read of each chunk serves all);
    ``sources`` (default: one source for every document) gives each row's source and previous token.
    In a ``world`` of N ranks (every rank calls this), this rank's part of each basis, its
    ``UnitRange.of(n_units, world)``: ``join_unit_stats`` joins the ranks' parts of a basis."""
    n_rows, W = cfg.n_rows, cfg.left + cfg.right + 1
    if sources is None:
        sources = TokenSources.single_source(text.tokens_N, text.docs_N, text.ctx, vocab_size)
    chunk = cfg.chunk_windows * text.ctx
    rng = np.random.default_rng(cfg.seed)
    random_rows = np.sort(rng.choice(n_rows, size=min(cfg.n_random, n_rows), replace=False))
    states = [_Sweep1(b, UnitRange.of(b.n_units, world), cfg, W, vocab_size, len(random_rows), sources) for b in bases]
    with progress("analysis: unit statistics", 2 * n_rows, unit="tok") as advance:
        for start in range(0, n_rows, chunk):
            stop = min(n_rows, start + chunk)
            acts_BD = torch.from_numpy(store.read_range(start, stop)).float()
            for state in states:
                state.update(acts_BD, start, text, random_rows)
            advance(stop - start)
        sweeps2 = [_Sweep2(s, cfg, W) for s in states]
        for start in range(0, n_rows, chunk):
            stop = min(n_rows, start + chunk)
            acts_BD = torch.from_numpy(store.read_range(start, stop)).float()
            for sweep in sweeps2:
                sweep.update(acts_BD, start, text)
            advance(stop - start)
    return [sweep.result(random_rows) for sweep in sweeps2]


_SHARED_FIELDS = ("name", "kind", "n_rows", "random_rows_P", "cofire_rows", "first_unit")  # the rest: per unit


def join_unit_stats(parts: list[UnitStats]) -> UnitStats:
    """One basis's UnitStats from the ranks' parts, in rank order: every per-unit array, sampler and
    matrix concatenated along its unit rows; what all parts share taken from the first."""

    def join(values: list) -> GroupedBottomK | sp.csr_matrix | np.ndarray:
        if isinstance(values[0], GroupedBottomK):
            return GroupedBottomK.concat(values)
        if sp.issparse(values[0]):
            return sp.vstack(values, format="csr")
        return np.concatenate(values)

    if len(parts) == 1:
        return parts[0]
    per_unit = [f.name for f in fields(UnitStats) if f.name not in _SHARED_FIELDS]
    return replace(parts[0], **{name: join([getattr(part, name) for part in parts]) for name in per_unit})


def _nonzeros(latents_BU: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, unit, value) of every positive entry (row-major flat scan: the fastest on CPU)."""
    flat = latents_BU.ravel()
    idx_E = np.flatnonzero(flat > 0)
    return idx_E // latents_BU.shape[1], idx_E % latents_BU.shape[1], flat[idx_E]


def _encode(
    basis: Basis, units: UnitRange, acts_BD: torch.Tensor
) -> tuple[torch.Tensor, np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """A chunk's activations of every unit, latents_BU [B, U] (a TopK encoder needs all
    pre-activations); this range's columns [B, U_r] as numpy; (row, unit, value) of every positive
    entry; and those of this range's units (numbered from its first)."""
    latents_BU = basis.encode(acts_BD).float()
    entries = _nonzeros(latents_BU.numpy())
    return latents_BU, latents_BU.numpy()[:, units.first : units.stop], entries, units.own(*entries)


def _context_payload(
    latents_BU: np.ndarray, start: int, text: TokenContext, rows_E: np.ndarray, units_E: np.ndarray, cfg: StatsConfig
) -> np.ndarray:
    """Each entry's unit activation over its context, [E, W] (NaN outside the window)."""
    ctx_rows_EW, inside_EW = text.window_rows(rows_E, cfg.left, cfg.right)
    values = latents_BU[ctx_rows_EW - start, units_E[:, None]]
    return np.where(inside_EW, values, np.nan).astype(np.float32)


class _Sweep1:
    def __init__(
        self,
        basis: Basis,
        units: UnitRange,
        cfg: StatsConfig,
        W: int,
        vocab_size: int,
        n_random: int,
        sources: TokenSources,
    ):
        U = units.size
        self.basis, self.units, self.cfg, self.vocab_size, self.sources = basis, units, cfg, vocab_size, sources
        self.source_mass_US = np.zeros((U, sources.n_sources))
        self.language_mass_UL = np.zeros((U, sources.n_languages))
        self.prev_mass = _MatrixSum(units, vocab_size)
        self.fire_count_U = np.zeros(U, dtype=np.int64)
        self.act_sum_U = np.zeros(U, dtype=np.float64)
        self.max_act_U = np.zeros(U, dtype=np.float32)
        self.top = GroupedBottomK(U, cfg.top_k, W, doc_cap=cfg.doc_cap)
        self.top_any_doc = GroupedBottomK(U, cfg.top_k, W)
        self.random_acts_PWU = np.full((n_random, W, U), np.nan, dtype=np.float32)
        self.token_fires = _MatrixSum(units, vocab_size)
        self.token_acts = _MatrixSum(units, vocab_size)
        self.cofire = _MatrixSum(units, units.n_units)  # rows: this range's units; columns: every unit
        self.cofire_rows = 0

    def update(self, acts_BD: torch.Tensor, start: int, text: TokenContext, random_rows: np.ndarray) -> None:
        cfg, U = self.cfg, self.units.size
        latents_BU, latents_np, (b_all, u_all, _), (b_E, u_E, v_E) = _encode(self.basis, self.units, acts_BD)
        B = latents_BU.shape[0]
        self.max_act_U = np.maximum(
            self.max_act_U,
            torch.zeros(U).scatter_reduce_(0, torch.from_numpy(u_E), torch.from_numpy(v_E), "amax").numpy(),
        )
        self.act_sum_U += np.bincount(u_E, weights=v_E, minlength=U)
        self.fire_count_U += np.bincount(u_E, minlength=U)
        rows_E = start + b_E
        for top in (self.top, self.top_any_doc):
            top.offer(
                u_E,
                -v_E.astype(np.float64),
                rows_E,
                text.docs_N[rows_E],
                v_E,
                lambda idx: _context_payload(latents_np, start, text, rows_E[idx], u_E[idx], cfg),
            )
        token_E = text.tokens_N[rows_E]
        self.token_fires.add(u_E, token_E, np.ones(len(u_E), dtype=np.float32))
        self.token_acts.add(u_E, token_E, v_E)
        S, L = self.sources.n_sources, self.sources.n_languages
        self.source_mass_US += np.bincount(
            u_E * S + self.sources.source_N[rows_E], weights=v_E, minlength=U * S
        ).reshape(U, S)
        self.language_mass_UL += np.bincount(
            u_E * L + self.sources.language_N[rows_E], weights=v_E, minlength=U * L
        ).reshape(U, L)
        prev_E = self.sources.prev_N[rows_E]
        has_prev = prev_E >= 0
        self.prev_mass.add(u_E[has_prev], prev_E[has_prev], v_E[has_prev])
        if start < cfg.cofire_rows and self.cofire.sparse_entries() < MAX_COFIRE_PAIRS:
            self._count_cofiring(latents_BU, b_all, u_all)
            self.cofire_rows += B
        here = np.flatnonzero((random_rows >= start) & (random_rows < start + B))
        if len(here):
            ctx_rows_PW, inside_PW = text.window_rows(random_rows[here], cfg.left, cfg.right)
            values_PWU = latents_np[ctx_rows_PW - start]
            self.random_acts_PWU[here] = np.where(inside_PW[:, :, None], values_PWU, np.nan)

    def _count_cofiring(self, latents_BU: torch.Tensor, b_E: np.ndarray, u_E: np.ndarray) -> None:
        """C_uv += #{rows of the chunk where u and v fire}, u in this range, v any unit (entries of all units)."""
        (B, U), first, stop = latents_BU.shape, self.units.first, self.units.stop
        if len(u_E) > DENSE_COFIRE_FRACTION * B * U:  # dense units (neurons): a matmul is cheaper
            fired_BU = (latents_BU > 0).float()
            self.cofire.add_dense(fired_BU[:, first:stop].T @ fired_BU)
        else:
            indptr = np.concatenate([[0], np.cumsum(np.bincount(b_E, minlength=B))])  # b_E is sorted
            fired_BU = sp.csr_matrix((np.ones(len(u_E), dtype=np.float32), u_E, indptr), shape=(B, U))
            self.cofire.add_csr((fired_BU[:, first:stop].T @ fired_BU).tocsr())


class _Sweep2:
    def __init__(self, first: _Sweep1, cfg: StatsConfig, W: int):
        U, I = first.units.size, cfg.n_intervals
        self.first, self.cfg = first, cfg
        first.top.flush()
        first.top_any_doc.flush()
        fill_up(first.top, first.top_any_doc)
        self.scale_U = np.where(first.max_act_U > 0, 1 / np.maximum(first.max_act_U, 1e-30), 0)
        self.hist_UH = np.zeros((U, cfg.hist_bins), dtype=np.int64)
        self.intervals = GroupedBottomK(U * I, cfg.per_interval, W)
        self.context_tokens_UT = _top_columns(first.token_acts.collapse(), CONTEXT_TOKENS)
        self.token_source_UTS = np.zeros((U, CONTEXT_TOKENS, first.sources.n_sources))
        self.token_prev = _MatrixSum(first.units, first.vocab_size, CONTEXT_TOKENS)

    def update(self, acts_BD: torch.Tensor, start: int, text: TokenContext) -> None:
        cfg, units = self.cfg, self.first.units
        _, latents_np, _, (b_E, u_E, v_E) = _encode(self.first.basis, units, acts_BD)
        U = units.size
        frac_E = v_E * self.scale_U[u_E]
        H, I = cfg.hist_bins, cfg.n_intervals
        hist_bin_E = np.minimum((frac_E * H).astype(np.int64), H - 1)
        self.hist_UH += np.bincount(u_E * H + hist_bin_E, minlength=U * H).reshape(U, H)
        interval_E = np.minimum((frac_E * I).astype(np.int64), I - 1)
        rows_E = start + b_E
        self._add_token_contexts(u_E, v_E, rows_E, text)
        self.intervals.offer(
            u_E * I + interval_E,
            uniform_hash(rows_E, units.first + u_E, self.cfg.seed),  # the basis's unit: the same on any rank
            rows_E,
            text.docs_N[rows_E],
            v_E,
            lambda idx: _context_payload(latents_np, start, text, rows_E[idx], u_E[idx], cfg),
        )

    def _add_token_contexts(self, u_E: np.ndarray, v_E: np.ndarray, rows_E: np.ndarray, text: TokenContext) -> None:
        sources, T = self.first.sources, CONTEXT_TOKENS
        entry, slot = np.nonzero(self.context_tokens_UT[u_E] == text.tokens_N[rows_E][:, None])
        unit_slot, value, rows = u_E[entry] * T + slot, v_E[entry], rows_E[entry]
        S = sources.n_sources
        self.token_source_UTS += np.bincount(
            unit_slot * S + sources.source_N[rows], weights=value, minlength=self.token_source_UTS.size
        ).reshape(self.token_source_UTS.shape)
        prev = sources.prev_N[rows]
        self.token_prev.add(unit_slot[prev >= 0], prev[prev >= 0], value[prev >= 0])

    def result(self, random_rows: np.ndarray) -> UnitStats:
        first = self.first
        self.intervals.flush()
        return UnitStats(
            name=first.basis.name,
            kind=first.basis.kind,
            n_rows=self.cfg.n_rows,
            fire_count_U=first.fire_count_U,
            act_sum_U=first.act_sum_U,
            max_act_U=first.max_act_U,
            hist_UH=self.hist_UH,
            top=first.top,
            intervals=self.intervals,
            random_rows_P=random_rows,
            random_acts_UPW=np.ascontiguousarray(first.random_acts_PWU.transpose(2, 0, 1)),
            token_fires_UV=first.token_fires.collapse(),
            token_act_sums_UV=first.token_acts.collapse(),
            cofire_UU=first.cofire.collapse(),
            cofire_rows=first.cofire_rows,
            source_mass_US=first.source_mass_US,
            language_mass_UL=first.language_mass_UL,
            prev_mass_UV=first.prev_mass.collapse(),
            context_tokens_UT=self.context_tokens_UT,
            token_source_UTS=self.token_source_UTS,
            token_prev_UTV=self.token_prev.collapse(),
            first_unit=first.units.first,
        )


def _top_columns(matrix_UV: sp.csr_matrix, k: int) -> np.ndarray:
    """Per row, the columns of its ``k`` largest entries, largest first, padded with −1 → int64 [U, k]."""
    out = np.full((matrix_UV.shape[0], k), -1, dtype=np.int64)
    for u in range(matrix_UV.shape[0]):
        start, stop = matrix_UV.indptr[u], matrix_UV.indptr[u + 1]
        order = np.lexsort((matrix_UV.indices[start:stop], -matrix_UV.data[start:stop]))[:k]
        out[u, : len(order)] = matrix_UV.indices[start:stop][order]
    return out
