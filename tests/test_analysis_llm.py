"""The LLM explainer end to end against a real HTTP server on 127.0.0.1 that speaks the OpenAI
chat-completions protocol (and Anthropic's messages API): prompts, retries, timeouts, 429s, a server
that goes away, malformed answers, caps, concurrency and the answer cache."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from monosemantic.analysis.analyze import _score_units
from monosemantic.analysis.autointerp import Example, score_unit
from monosemantic.analysis.config import AnalysisConfig
from monosemantic.analysis.context import TokenSources, UnitContext
from monosemantic.analysis.llm import AnswerCache, ChatClient, LLMExplainer, llm_explainer_from_config
from monosemantic.errors import UserError
from monosemantic.progress import set_quiet

STRINGS = [f"tok{i}" for i in range(20)]
set_quiet(True)


def smart_answer(prompt: str) -> str:
    """What a perfect model of "the unit fires on tok7" answers to each of the explainer's prompts."""
    if "say what the unit responds to" in prompt:
        return "the token tok7\nsecond line is ignored"
    if "predict the unit's activation" in prompt:
        lists = [json.loads(line) for line in prompt.splitlines() if line.startswith("[")]
        return json.dumps([[10 if t == "tok7" else 0 for t in tokens] for tokens in lists])
    excerpts = [json.loads(m) for m in re.findall(r"^Excerpt \d+: (.*)$", prompt, re.M)]
    if "marked <<like this>>" in prompt:
        marked = [re.findall(r"<<(.*?)>>", e) for e in excerpts]
        return json.dumps([int(bool(m) and all(t == "tok7" for t in m)) for m in marked])
    return "Sure: " + json.dumps([int("tok7" in e) for e in excerpts])


class ChatServer:
    """A chat-completions server on a free port. ``script`` is a list of behaviours consumed one per
    request ("ok", "429", "500", "garbage", "slow", "nonsense", "401"); when empty, every request is "ok"."""

    def __init__(self, delay_s: float = 0.0, tokens_per_answer: int = 100):
        self.script: list[str] = []
        self.prompts: list[str] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.delay_s, self.tokens_per_answer = delay_s, tokens_per_answer
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with server.lock:
                    behaviour = server.script.pop(0) if server.script else "ok"
                    server.prompts.append(body["messages"][0]["content"])
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s + (1.0 if behaviour == "slow" else 0.0))
                    self.respond(behaviour, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def respond(self, behaviour: str, body: dict):
                if behaviour in ("429", "500", "401"):
                    self.send_response(int(behaviour))
                    self.send_header("retry-after", "0")
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                prompt = body["messages"][0]["content"]
                content = "I cannot do that" if behaviour == "nonsense" else smart_answer(prompt)
                if self.path.endswith("/v1/messages"):
                    reply = {
                        "content": [{"type": "text", "text": content}],
                        "usage": {"input_tokens": server.tokens_per_answer, "output_tokens": 0},
                    }
                else:
                    reply = {
                        "choices": [{"message": {"role": "assistant", "content": content}}],
                        "usage": {"total_tokens": server.tokens_per_answer},
                    }
                data = b"<html>bad gateway" if behaviour == "garbage" else json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.stop()


def client(server: ChatServer, **kwargs) -> ChatClient:
    options = {"timeout_s": 5.0, "retries": 3, "backoff_s": 0.0, **kwargs}
    return ChatClient("openai", "local-model", server.url, **options)


def contexts(rng, n, length=9):
    out = []
    for _ in range(n):
        tokens = rng.integers(0, 20, length)
        out.append(Example(tokens, np.where(tokens == 7, 0.5 + 0.5 * rng.random(length), 0.0)))
    return out


def test_explain_and_all_three_scores_against_the_server(server):
    rng = np.random.default_rng(0)
    explain, score = contexts(rng, 10), contexts(rng, 30)
    explainer = LLMExplainer(client(server), STRINGS, max_prompt_chars=900, batch_size=10)
    result = score_unit(explainer, explain, score, max_act=1.0)
    assert result.explanation == "the token tok7" and result.backend == "openai:local-model"
    assert 0.85 < result.simulation < 1.0  # predicted 1.0 on tok7; true activations 0.5–1 there
    assert result.detection == 1.0 and result.fuzzing == 1.0
    # every prompt fits the limit: the explainer dropped examples, the scorers asked in batches
    assert max(len(p) for p in server.prompts) <= 900
    assert sum("predict the unit's activation" in p for p in server.prompts) >= 3
    assert sum(p.count("Excerpt ") for p in server.prompts if "fires anywhere" in p) == 30
    explain_prompt = server.prompts[0]
    assert '"tok7"\t10' in explain_prompt or '"tok7"\t5' in explain_prompt  # activations on the 0–10 scale
    assert "authorization" not in {k.lower() for k in server.headers[0]}  # no key: none sent to a local server


def test_retries_429_5xx_and_garbage_then_succeeds(server):
    server.script = ["429", "500", "garbage"]
    chat = client(server)
    assert chat.ask("say what the unit responds to") == "the token tok7\nsecond line is ignored"
    assert len(server.prompts) == 4 and chat.requests == 4


def test_gives_up_with_one_clear_error(server):
    server.script = ["500"] * 10
    with pytest.raises(UserError, match=r"no answer after 3 tries \(last: HTTP 500\)"):
        client(server, retries=2).ask("x")
    server.script = ["401"]
    with pytest.raises(UserError, match="HTTP 401.*model name, the key and the base URL"):
        client(server).ask("y")  # a client error is not retried
    assert len(server.prompts) == 4


def test_timeouts_are_retried(server):
    server.script = ["slow"]
    assert client(server, timeout_s=0.3).ask("say what the unit responds to").startswith("the token")
    server.script = ["slow", "slow"]
    with pytest.raises(UserError, match="last: timed out"):
        client(server, timeout_s=0.3, retries=1).ask("another prompt")


def test_a_server_that_goes_away():
    gone = ChatServer()
    chat = client(gone, retries=1)
    assert chat.ask("say what the unit responds to")
    gone.stop()
    with pytest.raises(UserError, match="no answer after 2 tries.*Connect"):
        chat.ask("a new prompt")


def test_request_and_token_caps_stop_with_a_clear_message(server):
    chat = client(server, max_requests=3)
    for i in range(3):
        chat.ask(f"prompt {i}")
    with pytest.raises(UserError, match=r"request cap reached: 3 requests sent \(analysis.llm_max_requests=3\)"):
        chat.ask("prompt 3")
    assert len(server.prompts) == 3
    chat.ask("prompt 0")  # a cached answer costs nothing
    tokens = client(server, max_tokens=150)
    tokens.ask("a")
    tokens.ask("b")  # 200 tokens used now
    with pytest.raises(
        UserError,
        match=r"token cap reached: the server reports 200 tokens used "
        r"\(analysis.llm_max_tokens=150\)",
    ):
        tokens.ask("c")


def test_malformed_answers_predict_nothing(server):
    server.script = ["ok", "nonsense", "nonsense", "nonsense"]
    rng = np.random.default_rng(1)
    result = score_unit(LLMExplainer(client(server), STRINGS), contexts(rng, 5), contexts(rng, 8), max_act=1.0)
    assert result.explanation == "the token tok7"
    assert np.isnan(result.simulation) and np.isnan(result.detection) and np.isnan(result.fuzzing)


def test_cache_means_a_rerun_asks_nothing(server, tmp_path):
    rng = np.random.default_rng(2)
    explain, score = contexts(rng, 6), contexts(rng, 12)
    first = score_unit(
        LLMExplainer(client(server, cache=AnswerCache(tmp_path / "cache.sqlite")), STRINGS), explain, score, max_act=1.0
    )
    n = len(server.prompts)
    rerun = LLMExplainer(client(server, cache=AnswerCache(tmp_path / "cache.sqlite")), STRINGS)
    again = score_unit(rerun, explain, score, max_act=1.0)
    assert len(server.prompts) == n and rerun.client.requests == 0
    assert again == first


def test_units_are_scored_concurrently():
    slow = ChatServer(delay_s=0.15)
    try:
        rng = np.random.default_rng(3)
        n_units, length = 8, 9
        tokens_N = rng.integers(0, 20, n_units * 2 * length)
        sources = TokenSources.single_source(tokens_N, np.zeros(len(tokens_N), dtype=np.int64), length, 20)
        examples = {}
        for u in range(n_units):
            rows = [np.arange((2 * u + k) * length, (2 * u + k + 1) * length) for k in range(2)]
            made = [Example(tokens_N[r], np.where(tokens_N[r] == 7, 1.0, 0.0), r) for r in rows]
            examples[u] = {"explain": made[:1], "score": made[1:]}
        stats = SimpleNamespace(
            name="toy",
            first_unit=0,
            max_act_U=np.ones(n_units),
            context=lambda u: UnitContext(np.ones(1), np.ones(1), np.arange(0), np.zeros(0), 1.0),
        )
        explainer = LLMExplainer(client(slow), STRINGS)
        scores = _score_units(explainer, stats, examples, list(range(n_units)), sources, seed=0, workers=4)
        assert sorted(scores) == list(range(n_units))
        assert all(s.explanation == "the token tok7" for s in scores.values())
        assert slow.max_in_flight >= 3
    finally:
        slow.stop()


def test_configuration_and_the_anthropic_protocol(server, monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MONOSEMANTIC_LLM_API_KEY", "MONOSEMANTIC_LLM_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="set OPENAI_API_KEY"):
        llm_explainer_from_config(AnalysisConfig(explainer="openai"), STRINGS, None)  # the hosted API needs a key
    local = llm_explainer_from_config(
        AnalysisConfig(explainer="openai", llm_base_url=server.url, llm_model="m"), STRINGS, tmp_path / "cache.sqlite"
    )
    assert local.backend == "openai:m" and local.client.url == f"{server.url}/chat/completions"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    keyed = llm_explainer_from_config(AnalysisConfig(explainer="openai", llm_base_url=server.url), STRINGS, None)
    keyed.client.ask("hello")
    assert server.headers[-1]["authorization"] == "Bearer sk-test"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ak-test")
    anthropic = llm_explainer_from_config(
        AnalysisConfig(explainer="anthropic", llm_base_url=server.url[:-3]), STRINGS, None
    )
    assert anthropic.client.ask("say what the unit responds to").startswith("the token tok7")
    assert server.headers[-1]["x-api-key"] == "ak-test" and anthropic.client.tokens == 100
