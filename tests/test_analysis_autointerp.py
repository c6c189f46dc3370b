"""Explain-then-score: the offline backends' numbers (token list and context), detection and fuzzing.
The LLM backend runs against a real HTTP server in tests/test_analysis_llm.py."""

from __future__ import annotations

import numpy as np
import pytest

from monosemantic.analysis.autointerp import (
    ContextExplainer,
    Example,
    Explanation,
    OfflineExplainer,
    detection_accuracy,
    fuzzing_marks,
    pearson,
    score_unit,
)
from monosemantic.analysis.context import TokenSources, js_divergence, lifts
from monosemantic.corpus.sources import DocumentSources

STRINGS = [f"tok{i}" for i in range(20)]


def contexts(rng, n, fires_on, length=9):
    """Random contexts; the unit is 0.5 + noise on tokens in ``fires_on`` and 0 elsewhere."""
    out = []
    for _ in range(n):
        tokens = rng.integers(0, 20, length)
        acts = np.where(np.isin(tokens, list(fires_on)), 0.5 + 0.5 * rng.random(length), 0.0)
        out.append(Example(tokens, acts))
    return out


def test_offline_explainer_finds_a_token_feature_and_predicts_it():
    rng = np.random.default_rng(0)
    explain, score = contexts(rng, 20, {7}), contexts(rng, 20, {7})
    result = score_unit(OfflineExplainer(STRINGS), explain, score, max_act=1.0)
    assert result.explanation.startswith('tokens "tok7"')
    assert result.backend == "offline-token-list"
    # prediction is a constant on token 7, truth 0.5–1 there and 0 elsewhere
    assert 0.85 < result.simulation < 1.0
    assert result.detection == 1.0 or np.isnan(result.detection)
    assert result.fuzzing == 1.0 or np.isnan(result.fuzzing)


def test_held_out_scoring_punishes_a_polysemantic_unit():
    rng = np.random.default_rng(1)
    explain = contexts(rng, 20, {1, 2, 3})  # what the explainer saw …
    score = contexts(rng, 20, {11, 12, 13})  # … is not what the unit does on held-out text
    result = score_unit(OfflineExplainer(STRINGS), explain, score, max_act=1.0)
    assert abs(result.simulation) < 0.2


def test_score_helpers():
    assert pearson(np.array([0, 1, 2.0]), np.array([0, 2, 4.0])) == pytest.approx(1.0)
    assert np.isnan(pearson(np.zeros(3), np.array([0, 1, 2.0])))  # nothing predicted: undefined
    predicted, actual = np.array([1, 1, 0, 0, 1], float), np.array([1, 0, 0, 0, 1], bool)
    assert detection_accuracy(predicted, actual) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(detection_accuracy(predicted, np.ones(5, bool)))
    unanswered = np.array([1, np.nan, 0, 0, 1])  # an unanswered context is left out
    assert detection_accuracy(unanswered, actual) == pytest.approx(1.0)
    assert js_divergence(np.array([[1.0, 0], [0, 1.0]]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert js_divergence(np.array([[0.3, 0.7], [3.0, 7.0]]), np.array([1.0, 5.0])) == pytest.approx(0.0)
    assert js_divergence(np.eye(3), np.array([1.0, 1, 1])) == pytest.approx(np.log2(3))
    # no evidence → lift 1; much less mass than expected → lift near 0; κμ pulls a rare context to 1
    np.testing.assert_allclose(lifts(np.array([0.0, 10.0]), np.array([0.0, 10.0]), 10, 10, 1.0), [1.0, 1.0])
    assert lifts(np.array([0.0]), np.array([1000.0]), 1000, 1000, 1.0)[0] == pytest.approx(3 / 1003)
    assert lifts(np.array([0.0]), np.array([1.0]), 1000, 1000, 1.0)[0] == pytest.approx(3 / 4)


def test_fuzzing_marks_follow_delphi():
    rng = np.random.default_rng(0)
    firing = Example(np.arange(6), np.array([0, 1.0, 0.2, 0.9, 0, 0]))  # 2 tokens above 0.3 × max
    silent = Example(np.arange(6), np.zeros(6))
    marks, correct = fuzzing_marks([firing, silent, silent], rng)
    assert marks[0].tolist() == [False, True, False, True, False, False]
    assert [m.sum() for m in marks[1:]] == [2, 2]  # as many wrong marks as firing contexts mark on average
    assert correct.tolist() == [True, False, False]


TWO_SOURCES = DocumentSources(
    ["bible", "python"], ["en"], np.array([0, 1] * 50, dtype=np.int32), np.zeros(100, dtype=np.int32)
)


def context_corpus(rng, n_windows=400, ctx=16):
    """Windows of random tokens 0–19, each from one document (even: bible, odd: python). The unit fires
    on token 7 only in python documents, and twice as strongly after token 3."""
    tokens = rng.integers(0, 20, (n_windows, ctx))
    docs = np.repeat(np.arange(n_windows) % 100, ctx).reshape(n_windows, ctx)
    acts = np.where((tokens == 7) & (docs % 2 == 1), 0.4 + 0.1 * rng.random(tokens.shape), 0.0)
    acts[:, 1:] *= np.where(tokens[:, :-1] == 3, 2.0, 1.0)
    return tokens.ravel(), docs.ravel(), acts.ravel(), ctx


def unit_context(sources: TokenSources, acts_N: np.ndarray, n_tokens: int = 3):
    """A unit's context statistics computed directly from its activations ``acts_N`` on every row."""
    from monosemantic.analysis.context import UnitContext

    has = sources.prev_N >= 0
    by_prev = np.bincount(sources.prev_N[has], weights=acts_N[has], minlength=20)
    tokens_T = np.argsort(-np.bincount(sources.tokens_N, weights=acts_N, minlength=20), kind="stable")[:n_tokens]
    token_source_TS = np.array(
        [np.bincount(sources.source_N, weights=acts_N * (sources.tokens_N == t), minlength=2) for t in tokens_T]
    )
    token_prev_TV = np.array(
        [
            np.bincount(sources.prev_N[has], weights=(acts_N * (sources.tokens_N == t))[has], minlength=20)
            for t in tokens_T
        ]
    )
    return UnitContext(
        np.bincount(sources.source_N, weights=acts_N, minlength=2),
        np.array([acts_N.sum()]),
        np.arange(20),
        by_prev,
        float(acts_N[acts_N > 0].mean()),
        tokens_T,
        token_source_TS,
        token_prev_TV,
    )


def test_context_explainer_scores_above_the_token_list_on_a_context_feature():
    rng = np.random.default_rng(0)
    tokens_N, docs_N, acts_N, ctx = context_corpus(rng)
    sources = TokenSources.build(tokens_N, docs_N, ctx, TWO_SOURCES, vocab_size=20)
    context = unit_context(sources, acts_N)

    def examples(rows_list):
        return [Example(tokens_N[r], acts_N[r], r) for r in rows_list]

    fired = np.flatnonzero(acts_N > 0)
    explain = examples([np.arange(r - 3, r + 2) for r in fired[:40] if r % ctx >= 3 and r % ctx < ctx - 2])
    score = examples([np.arange(w * ctx, (w + 1) * ctx) for w in range(300, 400)])  # whole windows, both sources
    max_act = float(acts_N.max())
    token_only = score_unit(OfflineExplainer(STRINGS), explain, score, max_act, seed=1)
    with_context = score_unit(ContextExplainer(STRINGS, sources), explain, score, max_act, context, seed=1)
    assert with_context.backend == "offline-context" and token_only.backend == "offline-token-list"
    assert with_context.explanation.startswith('tokens "tok7"') and "python 100% (×" in with_context.explanation
    assert 'after "tok3" ×' in with_context.explanation
    assert with_context.simulation > token_only.simulation + 0.2
    assert with_context.simulation > 0.9
    assert with_context.detection > token_only.detection  # the token list also "detects" tok7 in the bible


def test_context_without_rows_removes_exactly_the_held_out_mass():
    rng = np.random.default_rng(2)
    tokens_N, docs_N, acts_N, ctx = context_corpus(rng, n_windows=20)
    sources = TokenSources.build(tokens_N, docs_N, ctx, TWO_SOURCES, vocab_size=20)
    held_out = np.unique(rng.integers(0, len(tokens_N), 60))
    keep = np.ones(len(tokens_N), bool)
    keep[held_out] = False
    full = unit_context(sources, acts_N)
    reduced = full.without_rows(held_out, acts_N[held_out], sources)
    expected = unit_context(sources, np.where(keep, acts_N, 0.0))
    np.testing.assert_array_equal(full.tokens_T, expected.tokens_T)  # token 7 first either way
    for name in ("source_mass_S", "prev_mass", "language_mass_L", "token_source_TS", "token_prev_TV"):
        np.testing.assert_allclose(getattr(reduced, name), getattr(expected, name), atol=1e-12, err_msg=name)


def test_context_simulation_is_weight_times_lifts_token_by_token():
    """The batched simulation against its definition, one token at a time: the listed weight (0 if
    unlisted), times the source's and the previous token's lift on the context tokens only; a
    context without rows gets no lifts."""
    rng = np.random.default_rng(4)
    tokens_N, docs_N, _, ctx = context_corpus(rng)
    sources = TokenSources.build(tokens_N, docs_N, ctx, TWO_SOURCES, vocab_size=20)
    explanation = Explanation(
        "made up", {3: 0.5, 7: 0.8, 11: 0.2}, {1: 3.0}, 0.5, {3: 4.0, 19: 2.0}, 0.25, context_tokens={7, 11}
    )
    windows = [np.arange(w * ctx, (w + 1) * ctx) for w in range(5)]
    contexts = [Example(tokens_N[r], np.zeros(len(r)), r) for r in windows] + [Example(tokens_N[windows[0]], [])]
    predicted = ContextExplainer(STRINGS, sources).simulate(explanation, contexts)
    assert [len(p) for p in predicted] == [len(c.tokens) for c in contexts]
    for p, c in zip(predicted, contexts):
        for i, token in enumerate(c.tokens.tolist()):
            expected = explanation.token_weights.get(token, 0.0)
            if c.rows is not None and token in explanation.context_tokens:
                row = c.rows[i]
                expected *= explanation.source_lifts.get(int(sources.source_N[row]), 0.5)
                expected *= explanation.prev_lifts.get(int(sources.prev_N[row]), 0.25)
            assert p[i] == pytest.approx(expected)
    token_only = OfflineExplainer(STRINGS).simulate(explanation, contexts)
    for t, c in zip(token_only, contexts):
        assert np.array_equal(t, [explanation.token_weights.get(x, 0.0) for x in c.tokens.tolist()])
    assert not all(np.allclose(p, t) for p, t in zip(predicted, token_only))  # some lifts did apply
    assert np.array_equal(predicted[-1], token_only[-1])
