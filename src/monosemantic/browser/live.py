"""The browser's live parts: run the run's LM (+ an SAE) on text a user types, and steer with a feature.

Models load on first use and stay cached. TransformerLens adds and removes hooks on the shared
model during ``run_with_hooks``, so one lock serialises every forward pass; the app calls these
from a thread pool so the event loop keeps answering other requests meanwhile.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import torch

from monosemantic.activations import ActivationStore
from monosemantic.analysis.store import NEURONS
from monosemantic.corpus.tokenizer import eos_id, load_tokenizer
from monosemantic.errors import UserError
from monosemantic.interventions.steer import (
    MAX_NEW_TOKENS,
    MAX_STEER_VALUE,
    next_token_change,
    sample_continuation,
    steering_hook,
)
from monosemantic.lm.model import load_lm
from monosemantic.sae.base import SparseAutoencoder
from monosemantic.sae.io import load_sae, saved_hook_name

MAX_CHARS = 4000


class LiveModel:
    """The run's LM, tokenizer and SAEs, loaded lazily from ``run_dir`` and kept."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir)
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None
        self._saes: dict[str, SparseAutoencoder] = {}

    def _load(self) -> None:
        if self._model is None:
            self._tokenizer = load_tokenizer(self.path / "tokenizer.json")
            self.hook_name = ActivationStore(self.path / "activations" / "val").hook_name
            self._model = load_lm(self.path / "lm")

    def sae(self, name: str) -> SparseAutoencoder:
        if name not in self._saes:
            self._saes[name] = load_sae(self.path / "saes" / name)
        return self._saes[name]

    def hook_of(self, dict_name: str) -> str:
        """The hook point ``dict_name`` reads: its saved config's, else the run's (the neurons')."""
        if dict_name == NEURONS:
            return self.hook_name
        return saved_hook_name(self.path / "saes" / dict_name) or self.hook_name

    @property
    def max_tokens(self) -> int:
        """Longest text, in tokens, the LM reads (its context, less the leading end-of-text token)."""
        self._load()
        return self._model.cfg.n_ctx - 1

    def tokenize(self, text: str) -> torch.Tensor:
        """``text`` as LM input [T]: the end-of-text token, then the text's tokens (bounded)."""
        if not text.strip():
            raise UserError("text: empty")
        if len(text) > MAX_CHARS:
            raise UserError(f"text: {len(text):,} characters; at most {MAX_CHARS:,}")
        ids = self._tokenizer.encode(text).ids
        if len(ids) > self.max_tokens:
            raise UserError(f"text: {len(ids)} tokens; the LM reads at most {self.max_tokens}")
        return torch.tensor([eos_id(self._tokenizer), *ids])

    def activations(self, text: str, dict_name: str, per_token: int = 5) -> dict[str, Any]:
        """Which units of ``dict_name`` (an SAE or ``neurons``) fire on each token of ``text``:
        per token its ``per_token`` strongest units, and the units by their max over the text."""
        with self._lock:
            self._load()
            tokens_T = self.tokenize(text)
            captured = {}

            def keep(acts_BTD, hook=None):
                captured["acts"] = acts_BTD

            with torch.no_grad():
                self._model.run_with_hooks(tokens_T[None], fwd_hooks=[(self.hook_of(dict_name), keep)])
                acts_TD = captured["acts"][0, 1:]
                acts_TF = acts_TD if dict_name == NEURONS else self.sae(dict_name).encode(acts_TD)
        values_TK, units_TK = acts_TF.topk(min(per_token, acts_TF.shape[1]), dim=1)
        tokens = []
        for t, token in enumerate(tokens_T[1:].tolist()):
            tokens.append(
                {
                    "token": token,
                    "text": self._tokenizer.decode([token]),
                    "units": [{"unit": int(u), "act": float(v)} for u, v in zip(units_TK[t], values_TK[t]) if v > 0],
                }
            )
        max_F = acts_TF.max(dim=0).values
        order = max_F.argsort(descending=True)[:20]
        fired = [
            {"unit": int(u), "max_act": float(max_F[u]), "acts": [float(a) for a in acts_TF[:, u]]}
            for u in order
            if max_F[u] > 0
        ]
        return {"dict": dict_name, "tokens": tokens, "units": fired}

    def steer(
        self,
        sae_name: str,
        feature: int,
        value: float,
        prompt: str,
        mode: str = "clamp",
        n_tokens: int = 20,
        seed: int = 0,
    ) -> dict[str, Any]:
        """The next-token distribution after ``prompt`` with ``feature`` clamped/added/ablated, and a
        continuation sampled with and without it (same seed)."""
        if not math.isfinite(value) or abs(value) > MAX_STEER_VALUE:
            raise UserError(f"value={value}: must be a finite number within ±{MAX_STEER_VALUE:g}")
        if not 0 <= n_tokens <= MAX_NEW_TOKENS:
            raise UserError(f"n_tokens={n_tokens}: must be 0…{MAX_NEW_TOKENS}")
        with self._lock:
            self._load()
            tokens_T = self.tokenize(prompt)
            hook, hook_name = steering_hook(self.sae(sae_name), feature, mode, value), self.hook_of(sae_name)
            change = next_token_change(self._model, hook_name, tokens_T, hook, top=10)
            plain = sample_continuation(self._model, hook_name, tokens_T, n_tokens, None, seed)
            steered = sample_continuation(self._model, hook_name, tokens_T, n_tokens, hook, seed)
        decode = self._tokenizer.decode
        rows = {
            k: [{"token": t, "text": decode([t]), "p_before": b, "p_after": a} for t, b, a in v]
            for k, v in change.items()
        }
        return {
            "sae": sae_name,
            "feature": feature,
            "value": value,
            "mode": mode,
            "prompt": prompt,
            **rows,
            "continuation": decode(plain),
            "steered_continuation": decode(steered),
        }
