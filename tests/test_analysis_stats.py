"""Streaming per-unit statistics against brute force on a small synthetic activation store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monosemantic.activations import ActivationStore, ActivationWriter
from monosemantic.analysis import stats as stats_module
from monosemantic.analysis.neighbours import cofiring_neighbours, decoder_neighbours
from monosemantic.analysis.neurons import constituent_neurons, neuron_users
from monosemantic.analysis.sampling import GroupedBottomK, fill_up
from monosemantic.analysis.stats import Basis, StatsConfig, analysed_rows, compute_unit_stats, read_token_context
from monosemantic.progress import set_quiet

CTX, D, V = 8, 6, 11


def greedy_capped(keys, docs, k, cap):
    """Reference: walk keys upward, take an entry unless its document already has ``cap``."""
    taken, per_doc = [], {}
    for i in np.lexsort((np.arange(len(keys)), keys)):
        if cap is not None and per_doc.get(docs[i], 0) >= cap:
            continue
        taken.append(i)
        per_doc[docs[i]] = per_doc.get(docs[i], 0) + 1
        if len(taken) == k:
            break
    return taken


def capped_then_filled(keys, docs, k, cap):
    """Reference for the top examples: the capped list, topped up with the best entries it lacks."""
    taken = greedy_capped(keys, docs, k, cap)
    rest = [i for i in np.lexsort((np.arange(len(keys)), keys)) if i not in taken]
    chosen = taken + rest[: k - len(taken)]
    return sorted(chosen, key=lambda i: (keys[i], i))


def test_fill_up_tops_up_lists_short_of_documents():
    keys = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    docs = np.array([0, 0, 0, 0, 1, 0])  # doc 0 dominates
    capped, uncapped = GroupedBottomK(1, 4, 1, doc_cap=2), GroupedBottomK(1, 4, 1)
    for sampler in (capped, uncapped):
        sampler.offer(
            np.zeros(6, int),
            keys,
            np.arange(6),
            docs,
            keys.astype(np.float32),
            lambda idx: idx[:, None].astype(np.float32),
        )
        sampler.flush()
    assert capped.row[0].tolist() == [0, 1, 4, -1]
    fill_up(capped, uncapped)
    assert capped.row[0].tolist() == [0, 1, 2, 4] == capped_then_filled(keys, docs, 4, 2)
    assert capped.payload[0, :, 0].tolist() == [0, 1, 2, 4]


@pytest.mark.parametrize("cap", [None, 2])
@pytest.mark.parametrize("flush_at", [1, 7, 10_000])
def test_grouped_bottom_k_is_exact_whenever_it_flushes(cap, flush_at):
    rng = np.random.default_rng(0)
    G, k, n = 5, 4, 600
    group, key = rng.integers(0, G, n), rng.random(n)
    doc = rng.integers(0, 6, n)
    sampler = GroupedBottomK(G, k, payload_width=2, doc_cap=cap, flush_at=flush_at)
    for start in range(0, n, 37):
        idx = np.arange(start, min(n, start + 37))
        sampler.offer(
            group[idx],
            key[idx],
            idx,
            doc[idx],
            key[idx].astype(np.float32),
            lambda sel, idx=idx: np.stack([idx[sel], -idx[sel]], axis=1).astype(np.float32),
        )
    sampler.flush()
    for g in range(G):
        members = np.flatnonzero(group == g)
        expected = members[greedy_capped(key[members], doc[members], k, cap)]
        assert sampler.row[g].tolist() == expected.tolist()
        np.testing.assert_array_equal(sampler.payload[g, :, 0], expected)  # payload travelled with its entry
        assert np.all(np.diff(sampler.key[g]) >= 0)


def make_store(path, n_windows=12, seed=0):
    """Sparse non-negative activations, tokens, and documents that change every 5 rows."""
    rng = np.random.default_rng(seed)
    n = n_windows * CTX
    acts = rng.exponential(1.0, (n, D)) * (rng.random((n, D)) < 0.3)
    tokens = rng.integers(0, V, n)
    acts[:, 0] = np.where(tokens == 3, 2.0 + rng.random(n), 0.0)  # unit 0 fires exactly on token 3
    docs = np.arange(n) // 5
    with ActivationWriter(path, D, "blocks.0.mlp.hook_post", meta={"ctx": CTX}, rows_per_shard=40) as w:
        w.append(acts.astype(np.float32), tokens, docs, np.arange(n), np.zeros(n, dtype=int))
    return acts.astype(np.float32), tokens, docs


@pytest.mark.parametrize("dense_entries", [1 << 24, 0])  # dense and sparse count accumulators
def test_unit_stats_match_brute_force(tmp_path, monkeypatch, dense_entries):
    monkeypatch.setattr(stats_module, "DENSE_ENTRIES", dense_entries)
    set_quiet(True)
    acts, tokens, docs = make_store(tmp_path / "store")
    store = ActivationStore(tmp_path / "store")
    n_rows, ctx = analysed_rows(store, 10 * CTX + 3)  # rounded down to whole windows
    assert (n_rows, ctx) == (10 * CTX, CTX)
    acts, tokens, docs = acts[:n_rows], tokens[:n_rows], docs[:n_rows]
    text = read_token_context(store, n_rows, ctx)
    cfg = StatsConfig(
        n_rows=n_rows,
        top_k=6,
        doc_cap=2,
        n_intervals=3,
        per_interval=2,
        n_random=4,
        hist_bins=4,
        left=3,
        right=1,
        chunk_windows=3,
        seed=1,
    )
    identity = Basis("neurons", "neuron", D, lambda x: x)
    doubled = Basis("double", "feature", D, lambda x: 2 * x)
    stats, stats2 = compute_unit_stats(store, [identity, doubled], text, V, cfg)

    fired = acts > 0
    np.testing.assert_array_equal(stats.fire_count_U, fired.sum(0))
    np.testing.assert_allclose(stats.max_act_U, acts.max(0))
    np.testing.assert_allclose(stats.mean_act_U, acts.sum(0) / fired.sum(0), rtol=1e-5)
    np.testing.assert_array_equal(stats.hist_UH.sum(1), fired.sum(0))
    np.testing.assert_array_equal(stats2.fire_count_U, stats.fire_count_U)
    np.testing.assert_array_equal(stats2.top.row, stats.top.row)  # scaling a unit changes no ranking
    np.testing.assert_array_equal(stats.cofire_UU.toarray(), fired.T.astype(int) @ fired.astype(int))
    assert stats.cofire_rows == n_rows
    for u in range(D):
        np.testing.assert_array_equal(stats.token_fires_UV.toarray()[u], np.bincount(tokens[fired[:, u]], minlength=V))
        rows = np.flatnonzero(fired[:, u])
        expected = rows[capped_then_filled(-acts[rows, u].astype(np.float64), docs[rows], cfg.top_k, cfg.doc_cap)]
        got = stats.top.row[u][stats.top.row[u] >= 0]
        assert got.tolist() == expected.tolist()
        for slot, row in enumerate(got):  # context activations: 3 left, 1 right, cut at the window
            for offset, value in zip(range(-3, 2), stats.top.payload[u, slot]):
                other = row + offset
                if other // CTX == row // CTX:
                    assert value == acts[other, u]
                else:
                    assert np.isnan(value)
        for interval in range(3):
            lo, hi = interval * acts[:, u].max() / 3, (interval + 1) * acts[:, u].max() / 3
            members = rows[(acts[rows, u] >= lo) & ((acts[rows, u] < hi) | (interval == 2))]
            sampled = stats.intervals.row[u * 3 + interval]
            sampled = sampled[sampled >= 0]
            assert len(sampled) == min(2, len(members)) and set(sampled) <= set(members)
    for p, row in enumerate(stats.random_rows_P):
        np.testing.assert_array_equal(stats.random_acts_UPW[:, p, 3], acts[row])


def test_decoder_and_cofiring_neighbours_and_constituents():
    W_dec = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1], [0, 0.6, 0.8]])
    cos, idx = decoder_neighbours(W_dec, 2, block=3)
    assert idx[0].tolist() == [1, 3] and cos[0, 0] == pytest.approx(0.8)
    assert idx[2].tolist() == [3, 1] and cos[2, 0] == pytest.approx(0.8)
    import scipy.sparse as sp

    fired = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1]])
    jac, partner = cofiring_neighbours(sp.csr_matrix(fired.T @ fired), 2)
    assert partner[0].tolist() == [1, 2] and jac[0].tolist() == pytest.approx([2 / 3, 1 / 4])
    assert partner[1].tolist() == [0, -1]  # unit 1 never fires with unit 2
    weights, neurons = constituent_neurons(torch.tensor([[0.1, -0.9, 0.4], [0.6, 0.0, 0.8]]), 2)
    assert neurons.tolist() == [[1, 2], [2, 0]] and weights[0].tolist() == pytest.approx([-0.9, 0.4])
    weights, users = neuron_users(torch.tensor([[0.1, -0.9, 0.4], [0.6, 0.0, 0.8]]), 1)
    assert users.ravel().tolist() == [1, 0, 1] and weights.ravel().tolist() == pytest.approx([0.6, -0.9, 0.8])


def test_samples_do_not_depend_on_chunking(tmp_path):
    set_quiet(True)
    make_store(tmp_path / "store", seed=3)
    store = ActivationStore(tmp_path / "store")
    n_rows, ctx = analysed_rows(store, 10**6)
    text = read_token_context(store, n_rows, ctx)
    results = []
    for chunk_windows in (1, 5):
        cfg = StatsConfig(
            n_rows=n_rows, top_k=3, n_intervals=2, per_interval=2, left=2, right=1, chunk_windows=chunk_windows, seed=4
        )
        results.append(compute_unit_stats(store, [Basis("n", "neuron", D, lambda x: x)], text, V, cfg)[0])
    a, b = results
    np.testing.assert_array_equal(a.top.row, b.top.row)
    np.testing.assert_array_equal(a.intervals.row, b.intervals.row)
    np.testing.assert_array_equal(a.hist_UH, b.hist_UH)
    assert (a.cofire_UU != b.cofire_UU).nnz == 0


def test_cofiring_stops_at_its_budget(tmp_path, monkeypatch):
    set_quiet(True)
    monkeypatch.setattr(stats_module, "DENSE_ENTRIES", 0)
    monkeypatch.setattr(stats_module, "MAX_COFIRE_PAIRS", 1)
    acts, _, _ = make_store(tmp_path / "store")
    store = ActivationStore(tmp_path / "store")
    n_rows, ctx = analysed_rows(store, 10**6)
    cfg = StatsConfig(n_rows=n_rows, chunk_windows=2, left=1, right=1)
    stats = compute_unit_stats(
        store, [Basis("n", "neuron", D, lambda x: x)], read_token_context(store, n_rows, ctx), V, cfg
    )[0]
    fired = (acts[: 2 * CTX] > 0).astype(int)
    assert stats.cofire_rows == 2 * CTX  # the first chunk filled the budget
    np.testing.assert_array_equal(stats.cofire_UU.toarray(), fired.T @ fired)
