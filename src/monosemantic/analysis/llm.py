"""The LLM explainer: explanations, simulations, detection and fuzzing answers from a chat model
behind an HTTP API — any server speaking OpenAI's chat-completions protocol (vLLM, llama.cpp's
``llama-server``, Ollama, OpenAI, OpenRouter…) or Anthropic's messages API.

Every request goes through one ``ChatClient`` (httpx), which

- retries connection errors, timeouts, HTTP 429 and 5xx, and bodies that are not the protocol's
  JSON, up to ``retries`` times, waiting the server's ``Retry-After`` or ``backoff_s`` · 2^attempt
  (at most ``MAX_WAIT_S``), then fails with one ``UserError`` naming the endpoint and the last error;
- stops with a ``UserError`` naming the setting before the ``max_requests``-th + 1 request or once
  the server-reported tokens (``usage``) pass ``max_tokens``: a run never spends more than allowed;
- caches every answer in SQLite under a hash of (protocol, model, prompt), so a re-run asks nothing
  it has asked before (cache hits count against no cap);
- is safe to share between threads: the analysis scores ``concurrency`` units at once.

Prompts stay under ``max_prompt_chars``: ``explain`` drops examples from the end, the scorers
split their contexts into batches. An answer that cannot be parsed predicts nothing (simulation) or
counts as no answer (detection, fuzzing); see ``autointerp.py`` for how each is scored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from monosemantic.analysis.autointerp import Example, Explanation
from monosemantic.analysis.config import AnalysisConfig
from monosemantic.analysis.context import UnitContext
from monosemantic.errors import UserError

MAX_WAIT_S = 60.0
PROVIDERS = {  # provider → (API key variable, default base URL, default model)
    "openai": ("OPENAI_API_KEY", "https://api.openai.com/v1", "gpt-4o-mini"),
    "anthropic": ("ANTHROPIC_API_KEY", "https://api.anthropic.com", "claude-3-5-haiku-latest"),
}


class AnswerCache:
    """Prompt → answer, in a SQLite file (or in memory for ``None``), one row per prompt hash."""

    def __init__(self, path: Path | None):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path) if path is not None else ":memory:", check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        self.lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT answer FROM answers WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, answer: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, answer))
            self.db.commit()


class _Retryable(Exception):
    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


class ChatClient:
    """One prompt in, the model's text out, with retries, caps and a cache (see the module docstring)."""

    def __init__(
        self,
        provider: str,
        model: str,
        base_url: str,
        api_key: str | None = None,
        cache: AnswerCache | None = None,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        max_answer_tokens: int = 1024,
    ):
        if provider not in PROVIDERS:
            raise UserError(f"LLM provider {provider!r}: must be one of {', '.join(PROVIDERS)}")
        self.provider, self.model, self.base_url = provider, model, base_url.rstrip("/")
        self.api_key, self.cache = api_key, cache if cache is not None else AnswerCache(None)
        self.retries, self.backoff_s = retries, backoff_s
        self.max_requests, self.max_tokens, self.max_answer_tokens = max_requests, max_tokens, max_answer_tokens
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s))
        self.lock = threading.Lock()
        self.requests = 0  # requests sent (cache hits excluded)
        self.tokens = 0  # tokens the server reported using

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions" if self.provider == "openai" else f"{self.base_url}/v1/messages"

    def ask(self, prompt: str) -> str:
        key = hashlib.sha256(json.dumps([self.provider, self.model, prompt]).encode()).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        last = ""
        for attempt in range(self.retries + 1):
            self._count_request()
            try:
                answer = self._post(prompt)
            except _Retryable as err:
                last = str(err)
                if attempt < self.retries:
                    time.sleep(min(err.wait_s if err.wait_s is not None else self.backoff_s * 2**attempt, MAX_WAIT_S))
                continue
            self.cache.put(key, answer)
            return answer
        raise UserError(f"LLM endpoint {self.url}: no answer after {self.retries + 1} tries (last: {last})")

    def _count_request(self) -> None:
        with self.lock:
            if self.max_requests is not None and self.requests >= self.max_requests:
                raise UserError(
                    f"LLM request cap reached: {self.requests} requests sent "
                    f"(analysis.llm_max_requests={self.max_requests}); raise it, or score fewer units "
                    f"(analysis.n_scored_units); answers so far are cached"
                )
            if self.max_tokens is not None and self.tokens >= self.max_tokens:
                raise UserError(
                    f"LLM token cap reached: the server reports {self.tokens} tokens used "
                    f"(analysis.llm_max_tokens={self.max_tokens}); raise it, or score fewer units "
                    f"(analysis.n_scored_units); answers so far are cached"
                )
            self.requests += 1

    def _post(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if self.provider == "openai":
            headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            body = {"model": self.model, "temperature": 0, "max_tokens": self.max_answer_tokens, "messages": messages}
        else:
            headers = {"x-api-key": self.api_key or "", "anthropic-version": "2023-06-01"}
            body = {"model": self.model, "temperature": 0, "max_tokens": self.max_answer_tokens, "messages": messages}
        try:
            response = self.http.post(self.url, headers=headers, json=body)
        except httpx.TimeoutException:
            raise _Retryable("timed out") from None
        except httpx.TransportError as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}", _retry_after(response))
        if response.status_code >= 400:
            raise UserError(
                f"LLM endpoint {self.url}: HTTP {response.status_code} ({response.text[:200]!r}); "
                f"check the model name, the key and the base URL"
            )
        try:
            reply = response.json()
            usage = reply.get("usage") or {}
            used = usage.get("total_tokens") or (usage.get("input_tokens", 0) + usage.get("output_tokens", 0))
            if self.provider == "openai":
                text = reply["choices"][0]["message"]["content"]
            else:
                text = "".join(block.get("text", "") for block in reply["content"])
            if not isinstance(text, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise _Retryable(f"malformed response ({type(err).__name__}: {err})") from None
        with self.lock:
            self.tokens += int(used or 0)
        return text

    def close(self) -> None:
        self.http.close()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(float(response.headers.get("retry-after", "")), 0.0)
    except ValueError:
        return None


class LLMExplainer:
    """The ``Explainer`` protocol (``autointerp.py``) answered by a chat model.

    Activations are shown on OpenAI's 0–10 scale (a / max · 10, rounded); the simulator answers
    one integer per token, detection and fuzzing one 0/1 per excerpt (delphi's prompts' shape)."""

    uses_context = False  # the prompt shows examples only

    def __init__(
        self,
        client: ChatClient,
        token_strings: list[str],
        max_examples: int = 20,
        max_prompt_chars: int = 12_000,
        batch_size: int = 10,
    ):
        self.client, self.token_strings = client, token_strings
        self.max_examples, self.max_prompt_chars, self.batch_size = max_examples, max_prompt_chars, batch_size
        self.backend = f"{client.provider}:{client.model}"

    def _show(self, tokens: np.ndarray) -> list[str]:
        return [self.token_strings[int(t)] for t in tokens]

    def explain(self, examples: list[Example], max_act: float, context: UnitContext | None = None) -> Explanation:
        if not examples or max_act <= 0:
            return Explanation("(no activations)")
        head = (
            "We study a unit of a small language model. Below are text excerpts, one token per line, "
            "each with the unit's activation on a 0-10 scale. In one short phrase, say what the unit "
            "responds to. Answer with the phrase only.\n\n"
        )
        blocks = []
        for example in examples[: self.max_examples]:
            scaled = np.rint(np.clip(example.acts / max_act, 0, 1) * 10).astype(int)
            block = "\n".join(
                f"{json.dumps(s, ensure_ascii=False)}\t{a}" for s, a in zip(self._show(example.tokens), scaled)
            )
            if blocks and len(head) + sum(len(b) + 2 for b in blocks) + len(block) > self.max_prompt_chars:
                break
            blocks.append(block)
        answer = self.client.ask(head + "\n\n".join(blocks)).strip()
        return Explanation(answer.splitlines()[0][:300] if answer else "(empty answer)")

    def _batches(self, head: str, lines: list[str]) -> list[list[int]]:
        """Indices of ``lines`` in groups of at most ``batch_size``, each prompt under ``max_prompt_chars``."""
        batches: list[list[int]] = [[]]
        size = len(head)
        for i, line in enumerate(lines):
            if batches[-1] and (len(batches[-1]) == self.batch_size or size + len(line) + 1 > self.max_prompt_chars):
                batches.append([])
                size = len(head)
            batches[-1].append(i)
            size += len(line) + 1
        return [b for b in batches if b]

    def simulate(self, explanation: Explanation, contexts: list[Example]) -> list[np.ndarray]:
        shown = [self._show(c.tokens) for c in contexts]
        head = (
            f"A unit of a small language model responds to: {explanation.text}\n"
            "For each excerpt below (a JSON list of tokens), predict the unit's activation on every "
            "token as an integer 0-10. Answer with a JSON list of lists of integers only, one inner "
            "list per excerpt, of the same lengths.\n\n"
        )
        lines = [json.dumps(tokens, ensure_ascii=False) for tokens in shown]
        predicted: list[np.ndarray] = [np.zeros(len(t)) for t in shown]  # an unusable answer predicts nothing
        for batch in self._batches(head, lines):
            values = _json_list(self.client.ask(head + "\n".join(lines[i] for i in batch)))
            try:
                rows = [np.asarray(v, dtype=float) / 10 for v in values] if values is not None else []
            except (ValueError, TypeError):
                continue
            if len(rows) == len(batch) and all(r.ndim == 1 and len(r) == len(shown[i]) for r, i in zip(rows, batch)):
                for r, i in zip(rows, batch):
                    predicted[i] = r
        return predicted

    def _classify(self, head: str, lines: list[str]) -> np.ndarray:
        """One 0/1 answer per line, asked in batches; NaN where a batch's answer is unusable."""
        answers = np.full(len(lines), np.nan)
        for batch in self._batches(head, lines):
            numbered = "\n".join(f"Excerpt {k + 1}: {lines[i]}" for k, i in enumerate(batch))
            values = _json_list(self.client.ask(head + numbered))
            if values is not None and len(values) == len(batch) and all(v in (0, 1) for v in values):
                answers[batch] = values
        return answers

    def detect(self, explanation: Explanation, contexts: list[Example]) -> np.ndarray:
        head = (
            f"A unit of a small language model responds to: {explanation.text}\n"
            "For each numbered excerpt below, answer 1 if the unit fires anywhere in it, else 0. "
            "Answer with a JSON list of 0s and 1s only, one per excerpt.\n\n"
        )
        return self._classify(head, [json.dumps("".join(self._show(c.tokens)), ensure_ascii=False) for c in contexts])

    def fuzz(self, explanation: Explanation, contexts: list[Example], marked: list[np.ndarray]) -> np.ndarray:
        head = (
            f"A unit of a small language model responds to: {explanation.text}\n"
            "In each numbered excerpt below some tokens are marked <<like this>>. Answer 1 if the marked "
            "tokens are exactly where this unit would fire, else 0. Answer with a JSON list of 0s and 1s "
            "only, one per excerpt.\n\n"
        )
        lines = [json.dumps(_mark(self._show(c.tokens), m), ensure_ascii=False) for c, m in zip(contexts, marked)]
        return self._classify(head, lines)


def _mark(tokens: list[str], marked: np.ndarray) -> str:
    """Tokens joined, each run of marked tokens wrapped in << >> (delphi's highlighting)."""
    out, inside = [], False
    for token, mark in zip(tokens, marked):
        if mark and not inside:
            out.append("<<")
        elif not mark and inside:
            out.append(">>")
        inside = bool(mark)
        out.append(token)
    return "".join(out) + (">>" if inside else "")


def _json_list(answer: str) -> list | None:
    """The first JSON list in ``answer`` (a model may wrap it in prose), or None."""
    match = re.search(r"\[.*\]", answer, re.S)
    if match is None:
        return None
    try:
        value = json.loads(match.group(0))
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def llm_explainer_from_config(cfg: AnalysisConfig, token_strings: list[str], cache_path: Path | None) -> LLMExplainer:
    """An ``LLMExplainer`` for ``cfg.explainer`` ("openai": any chat-completions server, "anthropic").

    Base URL: ``analysis.llm_base_url``, else MONOSEMANTIC_LLM_BASE_URL, else the provider's hosted
    API. Model: ``analysis.llm_model``, else MONOSEMANTIC_LLM_MODEL, else a small hosted model.
    Key: MONOSEMANTIC_LLM_API_KEY or OPENAI_API_KEY / ANTHROPIC_API_KEY — required for the hosted
    APIs, optional for a local server. Keys are read from the environment only, never from a config."""
    if cfg.explainer not in PROVIDERS:
        raise UserError(f"explainer {cfg.explainer!r}: must be offline, {' or '.join(PROVIDERS)}")
    key_var, hosted_url, default_model = PROVIDERS[cfg.explainer]
    base_url = cfg.llm_base_url or os.environ.get("MONOSEMANTIC_LLM_BASE_URL") or hosted_url
    api_key = os.environ.get("MONOSEMANTIC_LLM_API_KEY") or os.environ.get(key_var)
    if not api_key and base_url.rstrip("/") == hosted_url:
        raise UserError(
            f"explainer {cfg.explainer}: set {key_var} (or MONOSEMANTIC_LLM_API_KEY) for {hosted_url}, "
            "point analysis.llm_base_url at a local server, or use the offline explainer"
        )
    model = cfg.llm_model or os.environ.get("MONOSEMANTIC_LLM_MODEL") or default_model
    client = ChatClient(
        cfg.explainer,
        model,
        base_url,
        api_key,
        AnswerCache(cache_path),
        cfg.llm_timeout_s,
        cfg.llm_retries,
        cfg.llm_backoff_s,
        cfg.llm_max_requests,
        cfg.llm_max_tokens,
    )
    return LLMExplainer(client, token_strings, max_prompt_chars=cfg.llm_max_prompt_chars)
