"""Related units: nearest dictionary directions (decoder cosine) and co-firing partners.

Decoder cosine: cos(f, g) = W_dec[f] · W_dec[g] (rows are unit-norm; renormalised here anyway so
foreign SAEs work), computed in blocks of rows so only [block, F] is ever in memory.

Co-firing: with C_uv = #{tokens where u and v both fire} (diagonal = fire counts), the Jaccard
index J_uv = C_uv / (C_uu + C_vv − C_uv) — high only when the two units fire on mostly the same
tokens, so a very dense unit is not everyone's partner.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


@torch.no_grad()
def decoder_neighbours(W_dec_FD: torch.Tensor, n: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, indices) [F, n] of each row's n most similar other rows, most similar first
    (computed on ``W_dec_FD``'s device)."""
    unit_FD = W_dec_FD.float() / W_dec_FD.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
    F = unit_FD.shape[0]
    n = min(n, F - 1)
    values, indices = np.zeros((F, n), dtype=np.float32), np.zeros((F, n), dtype=np.int64)
    for start in range(0, F, block):
        cos_BF = unit_FD[start : start + block] @ unit_FD.T
        rows = torch.arange(cos_BF.shape[0], device=cos_BF.device)
        cos_BF[rows, rows + start] = -torch.inf
        top = cos_BF.topk(n, dim=1)
        values[start : start + block], indices[start : start + block] = (
            top.values.cpu().numpy(),
            top.indices.cpu().numpy(),
        )
    return values, indices


def cofiring_neighbours(
    cofire_UU: sp.csr_matrix, n: int, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(Jaccard, indices) [U, n] of each unit's n strongest co-firing partners (index −1: none), ties
    to the lower index; the sorting runs on ``device``."""
    cofire = cofire_UU.sorted_indices().tocoo()  # row-major, columns ascending within a row
    counts_U = cofire_UU.diagonal()
    off = cofire.row != cofire.col
    row, col, both = cofire.row[off], cofire.col[off], cofire.data[off]
    jaccard = both / np.maximum(counts_U[row] + counts_U[col] - both, 1)
    # by row, then by Jaccard descending: two stable sorts keep the columns' ascending order in ties
    by_jaccard = torch.sort(torch.from_numpy(-jaccard).to(device), stable=True).indices
    row_t = torch.from_numpy(row.astype(np.int64)).to(device)
    order = by_jaccard[torch.sort(row_t[by_jaccard], stable=True).indices].cpu().numpy()
    row, col, jaccard = row[order], col[order], jaccard[order]
    U = cofire_UU.shape[0]
    starts = np.searchsorted(row, np.arange(U))
    rank = np.arange(len(row)) - starts[row]
    keep = rank < n
    values, indices = np.zeros((U, n), dtype=np.float32), np.full((U, n), -1, dtype=np.int64)
    values[row[keep], rank[keep]] = jaccard[keep]
    indices[row[keep], rank[keep]] = col[keep]
    return values, indices
