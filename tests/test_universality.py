"""Streamed correlation statistics against numpy, and universality on a known dictionary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monosemantic.activations.store import ActivationStore, ActivationWriter
from monosemantic.compare import correlation
from monosemantic.compare.correlation import CrossStats, best_matches, max_correlations
from monosemantic.compare.universality import compare_units
from monosemantic.errors import UserError
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae
from monosemantic.sae.synthetic import SyntheticFeatures

set_quiet(True)


def _sparse(n: int, units: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, units, generator=g) * (torch.rand(n, units, generator=g) < density)


def _masked_cosine_brute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.full((a.shape[1], b.shape[1]), np.nan)
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            candidates = []
            for mask in (a[:, i] != 0, b[:, j] != 0):
                norm = np.sqrt((a[mask, i] ** 2).sum() * (b[mask, j] ** 2).sum())
                if norm > 0:
                    candidates.append(a[mask, i] @ b[mask, j] / norm)
            if (a[:, i] != 0).any() and (b[:, j] != 0).any():
                out[i, j] = max(candidates, default=0.0)
    return out


@pytest.mark.parametrize("path_cost", [0.0, float("inf")], ids=["sparse", "dense"])
def test_streamed_statistics_match_numpy(monkeypatch, path_cost):
    monkeypatch.setattr(correlation, "SPARSE_COST", path_cost)
    a, b = _sparse(1500, 30, 0.08, 0), _sparse(1500, 45, 0.08, 1)
    b[:, 7] = 3 * a[:, 4]  # a perfectly correlated pair
    a[:, 9] = 0  # a dead unit
    stats = CrossStats(30, 45, masked=True)
    for start in range(0, 1500, 400):  # uneven last chunk
        stats.update(a[start : start + 400], b[start : start + 400])
    assert (stats.sparse_chunks, stats.dense_chunks) == ((4, 0) if path_cost == 0 else (0, 4))

    an, bn = a.double().numpy(), b.double().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.corrcoef(an.T, bn.T)[:30, 30:]
    got = stats.pearson().numpy()
    assert np.isnan(got[9]).all() and np.isnan(expected[9]).all()
    np.testing.assert_allclose(got, expected, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(stats.masked_cosine().numpy(), _masked_cosine_brute(an, bn), atol=1e-6, equal_nan=True)
    pairs = stats.pearson_at(torch.tensor([4, 0]), torch.tensor([7, 3])).numpy()
    np.testing.assert_allclose(pairs, [expected[4, 7], expected[0, 3]], atol=1e-6)

    matches = best_matches(stats)
    assert matches.a_to_b.index[4] == 7 and matches.a_to_b.value[4] == pytest.approx(1.0)
    assert matches.b_to_a.index[7] == 4
    assert matches.a_to_b.index[9] == -1 and not matches.a_to_b.live[9]
    live = np.nanmax(np.delete(expected, 9, axis=0), axis=1)
    assert matches.a_to_b.median() == pytest.approx(np.median(live), abs=1e-6)
    assert sum(matches.a_to_b.histogram()["counts"]) == 29


def test_best_matches_blocks_agree_with_one_block(monkeypatch):
    a, b = _sparse(800, 50, 0.2, 2), _sparse(800, 20, 0.2, 3)
    whole = max_correlations([(a, b)], 50, 20)
    monkeypatch.setattr(correlation, "ROW_BLOCK", 7)
    blocked = max_correlations([(a[:300], b[:300]), (a[300:], b[300:])], 50, 20)
    for one, other in ((whole.a_to_b, blocked.a_to_b), (whole.b_to_a, blocked.b_to_a)):
        np.testing.assert_array_equal(one.index, other.index)
        np.testing.assert_allclose(one.value, other.value, atol=1e-6)


def test_bad_chunks_are_user_errors():
    stats = CrossStats(3, 4)
    with pytest.raises(UserError, match=r"expected \[N, 3\] and \[N, 4\]"):
        stats.update(torch.zeros(5, 3), torch.zeros(5, 5))
    with pytest.raises(UserError, match="5 rows of one set of units but 6"):
        stats.update(torch.zeros(5, 3), torch.zeros(6, 4))


def _store(path, acts_ND: torch.Tensor) -> ActivationStore:
    n = acts_ND.shape[0]
    with ActivationWriter(path, acts_ND.shape[1], "synthetic") as writer:
        writer.append(acts_ND, np.zeros(n, np.int64), np.zeros(n, np.int64), np.arange(n), np.zeros(n, np.int64))
    return ActivationStore(path)


def test_two_saes_on_a_known_dictionary_match_with_median_correlation_near_one(tmp_path):
    """Two SAEs with different seeds on the same synthetic activations recover the same features."""
    syn = SyntheticFeatures(d=16, n_features=20, mean_active=2.0, density_decades=0.5, seed=7)
    init = syn.sample(2048, torch.Generator().manual_seed(99))
    saes = []
    for seed in (0, 1):
        cfg = SAEConfig(variant="topk", d_in=16, d_sae=20, k=3, lr=5e-3, n_samples=153_600, batch_size=256, seed=seed)
        saes.append(train_sae(cfg, syn.batches(256, 600, seed=10 + seed), init).sae)
    store = _store(tmp_path / "val", syn.sample(8000, torch.Generator().manual_seed(5)))
    chunks = zip((c for _, c in store.iter_chunks(3000)), (c for _, c in store.iter_chunks(3000)))
    matches = compare_units(
        chunks, {"features": (saes[0].encode, saes[1].encode, "a"), "inputs": (lambda x: x, lambda x: x, "a")}
    )
    features = matches["features"].a_to_b
    assert features.live.all() and features.median() > 0.9
    assert matches["features"].n_tokens == 8000
    # each input dimension's best match with itself is itself
    np.testing.assert_allclose(matches["inputs"].a_to_b.value, 1.0, atol=1e-5)
    np.testing.assert_array_equal(matches["inputs"].a_to_b.index, np.arange(16))
