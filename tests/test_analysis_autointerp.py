"""Explain-then-score: the offline backend's numbers, and the LLM backend against a fake endpoint."""

from __future__ import annotations

import numpy as np
import pytest

from monosemantic.analysis.autointerp import (
    Example,
    LLMExplainer,
    OfflineExplainer,
    detection_accuracy,
    llm_explainer_from_env,
    pearson,
    score_unit,
)
from monosemantic.errors import UserError

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


def test_held_out_scoring_punishes_a_polysemantic_unit():
    rng = np.random.default_rng(1)
    explain = contexts(rng, 20, {1, 2, 3})  # what the explainer saw …
    score = contexts(rng, 20, {11, 12, 13})  # … is not what the unit does on held-out text
    result = score_unit(OfflineExplainer(STRINGS), explain, score, max_act=1.0)
    assert abs(result.simulation) < 0.2


def test_score_helpers():
    assert pearson(np.array([0, 1, 2.0]), np.array([0, 2, 4.0])) == pytest.approx(1.0)
    assert np.isnan(pearson(np.zeros(3), np.array([0, 1, 2.0])))  # nothing predicted: undefined
    predicted, actual = np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 0, 0, 1], bool)
    assert detection_accuracy(predicted, actual) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(detection_accuracy(predicted, np.ones(5, bool)))


class FakeEndpoint:
    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, url, headers, body):
        self.calls.append((url, headers, body))
        text = self.answers.pop(0)
        if "chat/completions" in url:
            return {"choices": [{"message": {"content": text}}]}
        return {"content": [{"type": "text", "text": text}]}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_llm_backend_builds_requests_and_parses_answers(provider):
    fake = FakeEndpoint(["the token tok7\nextra line", "[[0, 10, 0], [5, 0, 0]]"])
    explainer = LLMExplainer(provider, "some-model", "KEY", "http://llm.local/", STRINGS, transport=fake)
    example = Example(np.array([1, 7, 2]), np.array([0.0, 2.0, 0.0]))
    explanation = explainer.explain([example], max_act=2.0)
    assert explanation.text == "the token tok7"
    url, headers, body = fake.calls[0]
    if provider == "openai":
        assert url == "http://llm.local/chat/completions" and headers["authorization"] == "Bearer KEY"
    else:
        assert url == "http://llm.local/v1/messages" and headers["x-api-key"] == "KEY"
    prompt = body["messages"][0]["content"]
    assert '"tok7"\t10' in prompt and '"tok1"\t0' in prompt  # activations shown on the 0–10 scale
    predicted = explainer.simulate(explanation, [np.array([1, 7, 2]), np.array([7, 1, 1])])
    assert [p.tolist() for p in predicted] == [[0, 1, 0], [0.5, 0, 0]]
    assert explainer.backend == f"{provider}:some-model"


def test_llm_backend_unusable_answer_predicts_nothing_and_needs_a_key(monkeypatch):
    fake = FakeEndpoint(["tok7", "I cannot do that"])
    explainer = LLMExplainer("openai", "m", "KEY", "http://x", STRINGS, transport=fake)
    result = score_unit(explainer, [Example(np.array([7]), np.array([1.0]))],
                        [Example(np.array([7, 1]), np.array([1.0, 0.0]))], max_act=1.0)
    assert np.isnan(result.simulation) and result.backend == "openai:m"
    for var in ("OPENAI_API_KEY", "MONOSEMANTIC_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        llm_explainer_from_env("openai", STRINGS)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("MONOSEMANTIC_LLM_BASE_URL", "http://local:8000/v1")
    configured = llm_explainer_from_env("openai", STRINGS)
    assert configured.base_url == "http://local:8000/v1" and configured.model == "gpt-4o-mini"
