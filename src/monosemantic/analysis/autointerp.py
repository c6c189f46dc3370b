"""Automated interpretability: explain a unit from its examples, then score the explanation by how
well it predicts the unit's activations on held-out contexts — the same procedure for neurons and
features, so their scores can be compared.

Procedure (Bills et al. 2023, OpenAI "Language models can explain neurons"; Bricken et al. 2023):

1. *Explain* from the explain split (half of the top examples, part of each activation interval).
2. *Simulate*: from the explanation alone, predict an activation in [0, 1] for every token of the
   score split (the other top examples and interval samples, plus random contexts).
3. *Simulation score* = Pearson correlation, over all those tokens, between predicted and true
   activations (true ones divided by the unit's max) — OpenAI's correlation scoring.
   *Detection score* = balanced accuracy of "the context contains a token predicted > 0" against
   "the unit fires somewhere in the context" (the question EleutherAI's delphi asks an LLM).

Backends (``Explainer``):

- ``OfflineExplainer`` (default, no network, no LLM): the explanation is the list of tokens the unit
  prefers, each weighted by its mean normalised activation in the explain split, shrunk towards 0
  for rare tokens (Σa / (count + 1)); the simulator predicts each token's weight (0 if unlisted).
  It can only express token-level regularities — a lower bound on what an LLM explainer finds.
- ``LLMExplainer``: any OpenAI-compatible chat-completions endpoint or the Anthropic messages API,
  configured by environment variables (see ``llm_explainer_from_env``); never needed by the tests.
Every score records the backend that made it.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from monosemantic.errors import UserError

OFFLINE_BACKEND = "offline-token-list"


@dataclass
class Example:
    """A context window: token ids [L] and the unit's activation on each token [L]."""

    tokens: np.ndarray
    acts: np.ndarray


@dataclass
class Explanation:
    text: str
    token_weights: dict[int, float] = field(default_factory=dict)  # offline backend only


@dataclass
class UnitScore:
    explanation: str
    simulation: float  # NaN when undefined (constant prediction or constant truth)
    detection: float  # NaN when the score split has only one class
    backend: str


class Explainer(Protocol):
    backend: str

    def explain(self, examples: list[Example], max_act: float) -> Explanation: ...

    def simulate(self, explanation: Explanation, token_lists: list[np.ndarray]) -> list[np.ndarray]: ...


class OfflineExplainer:
    """Token-list explanations and their simulator (see the module docstring)."""

    backend = OFFLINE_BACKEND

    def __init__(self, token_strings: list[str], max_tokens: int = 8, min_weight: float = 0.1):
        self.token_strings, self.max_tokens, self.min_weight = token_strings, max_tokens, min_weight

    def explain(self, examples: list[Example], max_act: float) -> Explanation:
        if not examples or max_act <= 0:
            return Explanation("(no activations)")
        tokens = np.concatenate([e.tokens for e in examples])
        acts = np.concatenate([e.acts for e in examples]) / max_act
        ids, inverse = np.unique(tokens, return_inverse=True)
        weight = np.bincount(inverse, weights=acts) / (np.bincount(inverse) + 1)
        order = np.lexsort((ids, -weight))[: self.max_tokens]
        chosen = {int(ids[i]): float(weight[i]) for i in order if weight[i] >= self.min_weight}
        if not chosen:
            return Explanation("(no consistent tokens)")
        listed = ", ".join(f"{json.dumps(self.token_strings[t], ensure_ascii=False)} ({w:.2f})"
                           for t, w in chosen.items())
        return Explanation(f"tokens {listed}", chosen)

    def simulate(self, explanation: Explanation, token_lists: list[np.ndarray]) -> list[np.ndarray]:
        lookup = explanation.token_weights
        return [np.array([lookup.get(int(t), 0.0) for t in tokens]) for tokens in token_lists]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def detection_accuracy(predicted_C: np.ndarray, actual_C: np.ndarray) -> float:
    """Balanced accuracy of boolean predictions [C] against boolean labels [C] (NaN if one class)."""
    if actual_C.all() or not actual_C.any():
        return float("nan")
    return float((predicted_C[actual_C].mean() + (~predicted_C[~actual_C]).mean()) / 2)


def score_unit(explainer: Explainer, explain: list[Example], score: list[Example], max_act: float) -> UnitScore:
    """Explain from ``explain``, simulate ``score``, and measure both scores."""
    explanation = explainer.explain(explain, max_act)
    if not score or max_act <= 0:
        return UnitScore(explanation.text, float("nan"), float("nan"), explainer.backend)
    predicted = explainer.simulate(explanation, [e.tokens for e in score])
    true_all = np.concatenate([e.acts for e in score]) / max_act
    simulation = pearson(np.concatenate(predicted), true_all)
    detection = detection_accuracy(np.array([p.max(initial=0) > 0 for p in predicted]),
                                   np.array([e.acts.max(initial=0) > 0 for e in score]))
    return UnitScore(explanation.text, simulation, detection, explainer.backend)


# ---------------------------------------------------------------- LLM backends (optional)

Transport = Callable[[str, dict, dict], dict]  # (url, headers, json body) → parsed JSON response


def _http_post(url: str, headers: dict, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as err:
        raise UserError(f"LLM endpoint {url}: request failed ({err})") from None


class LLMExplainer:
    """Explanations and simulations from an LLM behind an HTTP API.

    ``provider`` "openai": POST {base_url}/chat/completions (any OpenAI-compatible server);
    "anthropic": POST {base_url}/v1/messages. Activations are shown to the LLM on OpenAI's 0–10
    scale (a / max · 10, rounded); the simulator answers one integer per token.
    """

    def __init__(self, provider: str, model: str, api_key: str, base_url: str, token_strings: list[str],
                 transport: Transport = _http_post, max_examples: int = 20):
        if provider not in ("openai", "anthropic"):
            raise UserError(f"LLM provider {provider!r}: must be openai or anthropic")
        self.provider, self.model, self.api_key = provider, model, api_key
        self.base_url, self.token_strings = base_url.rstrip("/"), token_strings
        self.transport, self.max_examples = transport, max_examples
        self.backend = f"{provider}:{model}"

    def _ask(self, prompt: str) -> str:
        if self.provider == "openai":
            reply = self.transport(f"{self.base_url}/chat/completions",
                                   {"authorization": f"Bearer {self.api_key}"},
                                   {"model": self.model, "temperature": 0,
                                    "messages": [{"role": "user", "content": prompt}]})
            return reply["choices"][0]["message"]["content"]
        reply = self.transport(f"{self.base_url}/v1/messages",
                               {"x-api-key": self.api_key, "anthropic-version": "2023-06-01"},
                               {"model": self.model, "max_tokens": 2048, "temperature": 0,
                                "messages": [{"role": "user", "content": prompt}]})
        return "".join(block.get("text", "") for block in reply["content"])

    def _show(self, tokens: np.ndarray) -> list[str]:
        return [self.token_strings[int(t)] for t in tokens]

    def explain(self, examples: list[Example], max_act: float) -> Explanation:
        if not examples or max_act <= 0:
            return Explanation("(no activations)")
        blocks = []
        for example in examples[: self.max_examples]:
            scaled = np.rint(np.clip(example.acts / max_act, 0, 1) * 10).astype(int)
            blocks.append("\n".join(f"{json.dumps(s, ensure_ascii=False)}\t{a}"
                                    for s, a in zip(self._show(example.tokens), scaled)))
        prompt = ("We study a unit of a small language model. Below are text excerpts, one token per line, "
                  "each with the unit's activation on a 0-10 scale. In one short phrase, say what the unit "
                  "responds to. Answer with the phrase only.\n\n" + "\n\n".join(blocks))
        answer = self._ask(prompt).strip()
        return Explanation(answer.splitlines()[0][:300] if answer else "(empty answer)")

    def simulate(self, explanation: Explanation, token_lists: list[np.ndarray]) -> list[np.ndarray]:
        shown = [self._show(tokens) for tokens in token_lists]
        prompt = (f"A unit of a small language model responds to: {explanation.text}\n"
                  "For each excerpt below (a JSON list of tokens), predict the unit's activation on every "
                  "token as an integer 0-10. Answer with a JSON list of lists of integers only, one inner "
                  "list per excerpt, of the same lengths.\n\n"
                  + "\n".join(json.dumps(tokens, ensure_ascii=False) for tokens in shown))
        answer = self._ask(prompt)
        match = re.search(r"\[.*\]", answer, re.S)
        try:
            values = json.loads(match.group(0)) if match else None
            predicted = [np.asarray(v, dtype=float)[: len(t)] / 10 for v, t in zip(values, shown)]
            if len(predicted) != len(shown) or any(len(p) != len(t) for p, t in zip(predicted, shown)):
                raise ValueError("wrong shape")
        except (ValueError, TypeError):
            predicted = [np.zeros(len(t)) for t in shown]  # an unusable answer predicts nothing
        return predicted


def llm_explainer_from_env(provider: str, token_strings: list[str], model: str | None = None,
                           transport: Transport = _http_post) -> LLMExplainer:
    """An ``LLMExplainer`` configured by environment variables.

    openai:    OPENAI_API_KEY (or MONOSEMANTIC_LLM_API_KEY), MONOSEMANTIC_LLM_BASE_URL
               (default https://api.openai.com/v1), MONOSEMANTIC_LLM_MODEL (default gpt-4o-mini);
    anthropic: ANTHROPIC_API_KEY (or MONOSEMANTIC_LLM_API_KEY), MONOSEMANTIC_LLM_BASE_URL
               (default https://api.anthropic.com), MONOSEMANTIC_LLM_MODEL (default claude-3-5-haiku-latest).
    """
    defaults = {"openai": ("OPENAI_API_KEY", "https://api.openai.com/v1", "gpt-4o-mini"),
                "anthropic": ("ANTHROPIC_API_KEY", "https://api.anthropic.com", "claude-3-5-haiku-latest")}
    if provider not in defaults:
        raise UserError(f"explainer {provider!r}: must be offline, openai or anthropic")
    key_var, base_url, default_model = defaults[provider]
    api_key = os.environ.get("MONOSEMANTIC_LLM_API_KEY") or os.environ.get(key_var)
    if not api_key:
        raise UserError(f"explainer {provider}: set {key_var} (or MONOSEMANTIC_LLM_API_KEY), "
                        "or use the offline explainer")
    return LLMExplainer(provider, model or os.environ.get("MONOSEMANTIC_LLM_MODEL") or default_model, api_key,
                        os.environ.get("MONOSEMANTIC_LLM_BASE_URL") or base_url, token_strings, transport)
