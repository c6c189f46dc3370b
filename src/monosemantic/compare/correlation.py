"""Similarity of two sets of units (neurons, SAE features) over the same tokens, in one streamed pass.

For units a_i (i < A) and b_j (j < B) observed on the same n tokens, ``CrossStats`` accumulates the
sufficient statistics, chunk by chunk,

    Σ_n a_ni,  Σ_n a_ni²,  #{n: a_ni ≠ 0},   (the same for b)
    C_ij  = Σ_n a_ni b_nj
    and, with ``masked=True``,
    Mb_ij = Σ_{n: a_ni ≠ 0} b_nj²          Ma_ij = Σ_{n: b_nj ≠ 0} a_ni²

from which, without ever forming a tokens × A × B product:

    Pearson        ρ_ij = (C_ij/n − μa_i μb_j) / (σa_i σb_j)
    masked cosine  s_ij = max( C_ij / √(Σa_i² · Mb_ij),  C_ij / √(Σb_j² · Ma_ij) )

The masked cosine is Bricken et al. 2023's feature-splitting measure: the cosine of the two
activation vectors restricted to the tokens where one of them fires, the larger of both directions
(restricting to a_i ≠ 0 leaves the numerator C_ij unchanged and the a-norm equal to Σa_i²). A child
feature that fires on a subset of its parent's tokens, with activations proportional there, has
s = 1 even though its Pearson correlation with the parent is lower.

Cost. SAE latents are sparse: a chunk of N tokens with k_a(n), k_b(n) active units contributes
Σ_n k_a(n)·k_b(n) products instead of N·A·B. On the CPU the moments come from the nonzeros
only, and the cross terms from a sparse product (scipy CSR) when that is cheaper by the measured
constant ``SPARSE_COST``, else from a dense float32 matmul (neurons are dense); on an accelerator
every chunk is a dense matmul there. Memory: one
[A, B] float64 matrix (three with ``masked``).

Every statistic is a sum over tokens, so the tokens may be split: ranks that each accumulate their
own share and then sum their statistics (``all_reduce_``) hold the statistics of all the tokens, the
same as one process's up to rounding (the chunks are cut elsewhere, so the dense path's float32
products and the float64 sums add in another order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import scipy.sparse as sp
import torch

from monosemantic.distributed import World
from monosemantic.errors import UserError

# A scipy sparse product costs about this many dense BLAS multiply-adds per product term, so
# the sparse path is taken when SPARSE_COST·Σ_n k_a(n)k_b(n) < N·A·B (see benchmarks/correlation_speed.py).
SPARSE_COST = 1000.0
ROW_BLOCK = 1024  # rows of the [A, B] similarity computed at a time when reducing to best matches


class CrossStats:
    """Streamed sufficient statistics of two sets of units on the same tokens (see module docstring)."""

    def __init__(self, n_a: int, n_b: int, masked: bool = False, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.masked = masked
        self.n = 0
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.device)  # noqa: E731
        self.sum_A, self.sumsq_A, self.fires_A = zeros(n_a), zeros(n_a), zeros(n_a)
        self.sum_B, self.sumsq_B, self.fires_B = zeros(n_b), zeros(n_b), zeros(n_b)
        self.cross_AB = zeros(n_a, n_b)
        self.masked_b_sq_AB = zeros(n_a, n_b) if masked else None
        self.masked_a_sq_AB = zeros(n_a, n_b) if masked else None
        self.sparse_chunks = 0
        self.dense_chunks = 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.cross_AB.shape)

    @torch.no_grad()
    def update(self, a_NA: torch.Tensor, b_NB: torch.Tensor) -> None:
        """Add one chunk: ``a_NA`` [N, A] and ``b_NB`` [N, B], row n of both being the same token."""
        A, B = self.shape
        if a_NA.ndim != 2 or b_NB.ndim != 2 or a_NA.shape[1] != A or b_NB.shape[1] != B:
            raise UserError(
                f"correlation chunk: expected [N, {A}] and [N, {B}], got {list(a_NA.shape)} and {list(b_NB.shape)}"
            )
        if a_NA.shape[0] != b_NB.shape[0]:
            raise UserError(
                f"correlation chunk: {a_NA.shape[0]} rows of one set of units but {b_NB.shape[0]} of the other"
            )
        a_NA = a_NA.to(self.device, torch.float32)
        b_NB = b_NB.to(self.device, torch.float32)
        N = a_NA.shape[0]
        self.n += N
        fires_a_NA, fires_b_NB = a_NA != 0, b_NB != 0
        products = float(fires_a_NA.sum(dim=1).double() @ fires_b_NB.sum(dim=1).double())
        if self.device.type != "cpu" or SPARSE_COST * products >= float(N) * A * B:
            self._add_moments_dense(a_NA, fires_a_NA, self.sum_A, self.sumsq_A, self.fires_A)
            self._add_moments_dense(b_NB, fires_b_NB, self.sum_B, self.sumsq_B, self.fires_B)
            self._update_dense(a_NA, b_NB, fires_a_NA, fires_b_NB)
            self.dense_chunks += 1
        else:
            a, b = _csr(a_NA), _csr(b_NB)
            self._add_moments_sparse(a, self.sum_A, self.sumsq_A, self.fires_A)
            self._add_moments_sparse(b, self.sum_B, self.sumsq_B, self.fires_B)
            self._update_sparse(a, b)
            self.sparse_chunks += 1

    @staticmethod
    def _add_moments_dense(x_NU, fires_NU, total_U, sumsq_U, fires_count_U) -> None:
        total_U += x_NU.sum(dim=0, dtype=torch.float64)
        sumsq_U += (x_NU * x_NU).sum(dim=0, dtype=torch.float64)
        fires_count_U += fires_NU.sum(dim=0)

    @staticmethod
    def _add_moments_sparse(x: sp.csr_matrix, total_U, sumsq_U, fires_count_U) -> None:
        U = x.shape[1]
        total_U += torch.from_numpy(np.bincount(x.indices, weights=x.data, minlength=U))
        sumsq_U += torch.from_numpy(np.bincount(x.indices, weights=x.data**2, minlength=U))
        fires_count_U += torch.from_numpy(np.bincount(x.indices, minlength=U).astype(np.float64))

    def _update_dense(self, a_NA, b_NB, fires_a_NA, fires_b_NB) -> None:
        self.cross_AB += (a_NA.T @ b_NB).double()
        if self.masked:
            self.masked_b_sq_AB += (fires_a_NA.float().T @ b_NB.pow(2)).double()
            self.masked_a_sq_AB += (a_NA.pow(2).T @ fires_b_NB.float()).double()

    def _update_sparse(self, a: sp.csr_matrix, b: sp.csr_matrix) -> None:
        a_T = a.T.tocsr()
        _add_sparse(self.cross_AB, a_T @ b)
        if self.masked:
            _add_sparse(self.masked_b_sq_AB, _with_data(a_T, 1.0) @ _with_data(b, b.data**2))
            _add_sparse(self.masked_a_sq_AB, _with_data(a_T, a_T.data**2) @ _with_data(b, 1.0))

    def all_reduce_(self, world: World) -> CrossStats:
        """Sum the statistics of every rank of ``world`` (each having seen its own tokens) into each
        rank's, in place; returns self. ``sparse_chunks``/``dense_chunks`` stay this rank's."""
        if world.size > 1:
            self.n = int(world.all_reduce_(torch.tensor([self.n])).item())
            for total in (self.sum_A, self.sumsq_A, self.fires_A, self.sum_B, self.sumsq_B, self.fires_B):
                world.all_reduce_(total)
            for total_AB in (self.cross_AB, self.masked_b_sq_AB, self.masked_a_sq_AB):
                if total_AB is not None:
                    world.all_reduce_(total_AB)
        return self

    def pearson(self, rows: slice = slice(None)) -> torch.Tensor:
        """ρ [A', B] for the A-units in ``rows`` (NaN where either unit is constant on these tokens)."""
        n = max(self.n, 1)
        mean_A, mean_B = self.sum_A[rows] / n, self.sum_B / n
        std_A = (self.sumsq_A[rows] / n - mean_A**2).clamp_min(0).sqrt()
        std_B = (self.sumsq_B / n - mean_B**2).clamp_min(0).sqrt()
        cov_AB = self.cross_AB[rows] / n - mean_A[:, None] * mean_B[None, :]
        denom_AB = std_A[:, None] * std_B[None, :]
        return torch.where(denom_AB > 0, (cov_AB / denom_AB.clamp_min(1e-300)).clamp(-1, 1), torch.nan)

    def pearson_at(self, index_a: torch.Tensor, index_b: torch.Tensor) -> torch.Tensor:
        """ρ of the unit pairs (index_a[k], index_b[k]), [K] (NaN where undefined)."""
        n = max(self.n, 1)
        mean_a, mean_b = self.sum_A[index_a] / n, self.sum_B[index_b] / n
        var_a = (self.sumsq_A[index_a] / n - mean_a**2).clamp_min(0)
        var_b = (self.sumsq_B[index_b] / n - mean_b**2).clamp_min(0)
        cov = self.cross_AB[index_a, index_b] / n - mean_a * mean_b
        denom = (var_a * var_b).sqrt()
        return torch.where(denom > 0, (cov / denom.clamp_min(1e-300)).clamp(-1, 1), torch.nan)

    def masked_cosine(self, rows: slice = slice(None), min_fires: int = 1) -> torch.Tensor:
        """s [A', B] for the A-units in ``rows`` (NaN where neither direction is defined).

        A direction is used only when its masking unit fired on at least ``min_fires`` tokens: the
        cosine of two nonnegative vectors of a handful of entries is high by chance alone.
        """
        if not self.masked:
            raise ValueError("masked_cosine needs CrossStats(..., masked=True)")
        cross_AB = self.cross_AB[rows]
        from_a = cross_AB / (self.sumsq_A[rows, None] * self.masked_b_sq_AB[rows]).sqrt()
        from_b = cross_AB / (self.sumsq_B[None, :] * self.masked_a_sq_AB[rows]).sqrt()
        from_a = torch.where(self.fires_A[rows, None] >= min_fires, from_a, torch.nan)
        from_b = torch.where(self.fires_B[None, :] >= min_fires, from_b, torch.nan)
        both_live_AB = (self.fires_A[rows, None] > 0) & (self.fires_B[None, :] > 0)
        both_live_AB &= (self.fires_A[rows, None] >= min_fires) | (self.fires_B[None, :] >= min_fires)
        # fmax: an undefined (0/0) direction yields the other; live units that never co-fire score 0
        return torch.where(both_live_AB, torch.fmax(from_a, from_b).nan_to_num(nan=0.0).clamp(-1, 1), torch.nan)


def _csr(x_NU: torch.Tensor) -> sp.csr_matrix:
    """A [N, U] float CPU tensor as a float64 scipy CSR matrix of its nonzeros (built directly:
    ``nonzero`` lists them row by row, so the row pointer is a cumulative count)."""
    rows, cols = torch.nonzero(x_NU, as_tuple=True)
    indptr = torch.zeros(x_NU.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(rows, minlength=x_NU.shape[0]).cumsum(0)
    values = x_NU[rows, cols].double()
    return sp.csr_matrix((values.numpy(), cols.numpy(), indptr.numpy()), shape=tuple(x_NU.shape))


def _with_data(m: sp.csr_matrix, data) -> sp.csr_matrix:
    """Same sparsity pattern as ``m``, other values (a scalar or an array of ``m.nnz``)."""
    values = np.broadcast_to(np.asarray(data, dtype=np.float64), m.data.shape).copy()
    return sp.csr_matrix((values, m.indices, m.indptr), shape=m.shape)


def _add_sparse(acc_AB: torch.Tensor, m: sp.csr_matrix) -> None:
    """acc += m, for a CSR product (its (row, col) entries are unique)."""
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    flat = acc_AB.view(-1).numpy()
    flat[rows * m.shape[1] + m.indices] += m.data


@dataclass
class BestMatches:
    """For each unit of one set, its most similar unit of the other set.

    ``index`` [U] int64 (−1 where no similarity is defined, e.g. a dead feature) and ``value`` [U]
    float64 (NaN there); ``density`` [U] float64 is the fraction of the tokens each unit fired on.
    """

    index: np.ndarray
    value: np.ndarray
    density: np.ndarray

    @property
    def live(self) -> np.ndarray:
        """[U] bool: the units that fired on some token."""
        return self.density > 0

    def median(self, min_density: float = 0.0) -> float:
        """Median best similarity over live units firing on at least ``min_density`` of the tokens
        (NaN when none does)."""
        values = self.value[self.live & (self.density >= min_density) & ~np.isnan(self.value)]
        return float(np.median(values)) if values.size else float("nan")

    def histogram(self, bins: int = 20) -> dict[str, list[float]]:
        """Counts of the live units' best similarities in ``bins`` equal bins over [−1, 1]."""
        values = self.value[self.live & ~np.isnan(self.value)]
        counts, edges = np.histogram(values, bins=bins, range=(-1.0, 1.0))
        return {"edges": edges.round(4).tolist(), "counts": counts.tolist()}


@dataclass
class Matches:
    """Best matches in both directions between unit sets A and B."""

    a_to_b: BestMatches
    b_to_a: BestMatches
    n_tokens: int


def best_matches(stats: CrossStats, measure: str = "pearson", min_fires: int = 1) -> Matches:
    """Reduce the [A, B] similarity (``"pearson"`` or ``"masked_cosine"`` with ``min_fires``) to
    each unit's best partner, in blocks of ``ROW_BLOCK`` rows so that at most one block of it is
    ever formed."""
    similarity = {"pearson": stats.pearson, "masked_cosine": lambda rows: stats.masked_cosine(rows, min_fires)}[measure]
    A, B = stats.shape
    a_index, a_value = np.full(A, -1, dtype=np.int64), np.full(A, np.nan)
    b_value_B = torch.full((B,), -torch.inf, dtype=torch.float64, device=stats.device)
    b_index_B = torch.full((B,), -1, dtype=torch.int64, device=stats.device)
    for start in range(0, A, ROW_BLOCK):
        sim_RB = similarity(slice(start, start + ROW_BLOCK)).nan_to_num(nan=-torch.inf)
        value_R, index_R = sim_RB.max(dim=1)
        defined_R = torch.isfinite(value_R)
        a_value[start : start + len(value_R)] = torch.where(defined_R, value_R, torch.nan).cpu().numpy()
        a_index[start : start + len(value_R)] = torch.where(defined_R, index_R, -1).cpu().numpy()
        block_value_B, block_index_B = sim_RB.max(dim=0)
        better_B = block_value_B > b_value_B
        b_value_B = torch.where(better_B, block_value_B, b_value_B)
        b_index_B = torch.where(better_B, block_index_B + start, b_index_B)
    b_defined = torch.isfinite(b_value_B)
    b_value = torch.where(b_defined, b_value_B, torch.nan).cpu().numpy()
    b_index = torch.where(b_defined, b_index_B, -1).cpu().numpy()
    n = max(stats.n, 1)
    return Matches(
        BestMatches(a_index, a_value, (stats.fires_A / n).cpu().numpy()),
        BestMatches(b_index, b_value, (stats.fires_B / n).cpu().numpy()),
        stats.n,
    )


def max_correlations(
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], n_a: int, n_b: int, device: torch.device | str = "cpu"
) -> Matches:
    """Each unit's maximum Pearson correlation with any unit of the other set, over the tokens of
    ``chunks`` (pairs [N, n_a], [N, n_b] of the same tokens), streamed."""
    stats = CrossStats(n_a, n_b, device=device)
    for a_NA, b_NB in chunks:
        stats.update(a_NA, b_NB)
    if stats.n < 2:
        raise UserError("correlation: need at least two tokens")
    return best_matches(stats, "pearson")
