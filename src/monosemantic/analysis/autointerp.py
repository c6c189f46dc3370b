"""Automated interpretability: explain a unit from its examples, then score the explanation by how
well it predicts the unit's activations on held-out contexts — the same procedure for neurons and
features, so their scores can be compared.

Procedure (Bills et al. 2023, OpenAI "Language models can explain neurons"; Bricken et al. 2023;
Paulo et al. 2024, EleutherAI's delphi, for detection and fuzzing):

1. *Explain* from the explain split (half of the top examples, part of each activation interval).
2. *Simulation score*: from the explanation alone, predict an activation for every token of the
   score split (the other top examples and interval samples, plus random contexts); the score is
   the Pearson correlation, over all those tokens, of predicted and true activations (true ones
   divided by the unit's max) — OpenAI's correlation scoring.
3. *Detection score* (delphi): for each score context, does the unit fire anywhere in it? The
   balanced accuracy of the explainer's yes/no answers.
4. *Fuzzing score* (delphi): each context in which the unit fires is shown with its tokens above
   ``FUZZ_THRESHOLD`` × its maximum marked (correctly marked); each context in which it does not is
   shown with as many random tokens marked as the firing ones have on average, rounded up
   (incorrectly marked). Are the marks correct? The balanced accuracy of the answers.

Offline backends (no network, no LLM):

- ``OfflineExplainer`` ("offline-token-list", the baseline): the explanation is the list of tokens
  the unit prefers, each weighted by its mean normalised activation in the explain split, shrunk
  towards 0 for rare tokens (Σa / (count + 1)); the simulator predicts each token's weight.
- ``ContextExplainer`` ("offline-context"): the same token weights, times — on the listed tokens
  that are among the unit's tokens of most activation mass — the *lift* of the context's document
  source and of the token before (``context.py``), measured on the unit's activation on those
  tokens over all analysed text *less the score split's rows*, so the score split stays held out.
  The explanation names the sources with the largest shares of that activation and the most
  preferred previous tokens; the simulator uses those factors and one pooled factor for every
  context it does not name.

Offline detection says "fires" where the simulator predicts ≥ ``DETECT_THRESHOLD`` somewhere in the
context; offline fuzzing says "correct" when it predicts ≥ ``DETECT_THRESHOLD`` on every marked
token. ``llm.py`` holds the LLM backend. Every score records the backend that made it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from monosemantic.analysis.context import TokenSources, UnitContext, lifts

OFFLINE_BACKEND = "offline-token-list"
CONTEXT_BACKEND = "offline-context"
DETECT_THRESHOLD = 0.1  # predicted (normalised) activation that counts as "fires"
FUZZ_THRESHOLD = 0.3  # delphi's: tokens above this fraction of the context's max activation are marked


@dataclass
class Example:
    """A context window: token ids [L], the unit's activation on each token [L], and (when known)
    the activation store's row of each token [L], which gives its document source and previous token."""

    tokens: np.ndarray
    acts: np.ndarray
    rows: np.ndarray | None = None


@dataclass
class Explanation:
    text: str
    token_weights: dict[int, float] = field(default_factory=dict)  # offline backends only
    source_lifts: dict[int, float] = field(default_factory=dict)  # context backend: named sources
    other_source_lift: float = 1.0  # … and every other source
    prev_lifts: dict[int, float] = field(default_factory=dict)  # context backend: named previous tokens
    other_prev_lift: float = 1.0  # … and every other previous token
    context_tokens: set[int] = field(default_factory=set)  # the tokens the lifts apply to


@dataclass
class UnitScore:
    explanation: str
    simulation: float  # NaN when undefined (constant prediction or constant truth)
    detection: float  # NaN when the score split has only one class or nothing was answered
    fuzzing: float  # NaN likewise
    backend: str


class Explainer(Protocol):
    backend: str
    uses_context: bool  # whether ``explain`` reads the unit's context mass (else it may be given None)

    def explain(self, examples: list[Example], max_act: float, context: UnitContext | None = None) -> Explanation:
        """An explanation from ``examples`` (and the unit's held-out-free context mass, if it uses it)."""

    def simulate(self, explanation: Explanation, contexts: list[Example]) -> list[np.ndarray]:
        """Predicted normalised activation of every token of every context (never reads ``acts``)."""

    def detect(self, explanation: Explanation, contexts: list[Example]) -> np.ndarray:
        """Per context: 1.0 "the unit fires here", 0.0 "it does not", NaN no usable answer."""

    def fuzz(self, explanation: Explanation, contexts: list[Example], marked: list[np.ndarray]) -> np.ndarray:
        """Per context with its ``marked`` tokens [L] bool: 1.0 "correctly marked", 0.0 not, NaN no answer."""


class OfflineExplainer:
    """Token-list explanations and their simulator (see the module docstring)."""

    backend = OFFLINE_BACKEND
    uses_context = False

    def __init__(self, token_strings: list[str], max_tokens: int = 8, min_weight: float = DETECT_THRESHOLD):
        self.token_strings, self.max_tokens, self.min_weight = token_strings, max_tokens, min_weight

    def explain(self, examples: list[Example], max_act: float, context: UnitContext | None = None) -> Explanation:
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
        listed = ", ".join(f"{self.quote(t)} ({w:.2f})" for t, w in chosen.items())
        return Explanation(f"tokens {listed}", chosen)

    def quote(self, token: int) -> str:
        return json.dumps(self.token_strings[token], ensure_ascii=False)

    def simulate(self, explanation: Explanation, contexts: list[Example]) -> list[np.ndarray]:
        if not contexts:
            return []
        return np.split(self._predict(explanation, contexts), np.cumsum([len(c.tokens) for c in contexts])[:-1])

    def _predict(self, explanation: Explanation, contexts: list[Example]) -> np.ndarray:
        """The prediction for every token of ``contexts``, concatenated: its listed weight, else 0."""
        tokens = np.concatenate([c.tokens for c in contexts]).astype(np.int64)
        return _lookup(explanation.token_weights, tokens, 0.0)

    def detect(self, explanation: Explanation, contexts: list[Example]) -> np.ndarray:
        return self.detect_predicted(self.simulate(explanation, contexts))

    def fuzz(self, explanation: Explanation, contexts: list[Example], marked: list[np.ndarray]) -> np.ndarray:
        return self.fuzz_predicted(self.simulate(explanation, contexts), marked)

    @staticmethod
    def detect_predicted(predicted: list[np.ndarray]) -> np.ndarray:
        """Detection read off the simulation: "fires" where some token is predicted ≥ ``DETECT_THRESHOLD``."""
        return np.array([float(p.max(initial=0) >= DETECT_THRESHOLD) for p in predicted])

    @staticmethod
    def fuzz_predicted(predicted: list[np.ndarray], marked: list[np.ndarray]) -> np.ndarray:
        """Fuzzing read off the simulation: "correct" when every marked token is predicted ≥ ``DETECT_THRESHOLD``."""
        return np.array([float((p[m] >= DETECT_THRESHOLD).all()) for p, m in zip(predicted, marked)])


def _lookup(table: dict[int, float], keys: np.ndarray, default: float) -> np.ndarray:
    """``table[k]`` for every key of ``keys`` (int64), ``default`` where a key is not in the table."""
    if not table:
        return np.full(len(keys), default, dtype=np.float64)
    ids = np.fromiter(table, dtype=np.int64, count=len(table))
    values = np.fromiter(table.values(), dtype=np.float64, count=len(table))
    order = np.argsort(ids)
    ids, values = ids[order], values[order]
    slot = np.minimum(np.searchsorted(ids, keys), len(ids) - 1)
    return np.where(ids[slot] == keys, values[slot], default)


class ContextExplainer(OfflineExplainer):
    """Token weights × source lift × previous-token lift (see the module docstring)."""

    backend = CONTEXT_BACKEND
    uses_context = True

    def __init__(
        self,
        token_strings: list[str],
        sources: TokenSources,
        max_tokens: int = 8,
        n_sources: int = 3,
        min_source_share: float = 0.1,
        n_prev: int = 3,
        min_prev_share: float = 0.05,
        min_prev_lift: float = 2.0,
    ):
        super().__init__(token_strings, max_tokens)
        self.sources = sources
        self.n_sources, self.min_source_share = n_sources, min_source_share
        self.n_prev, self.min_prev_share, self.min_prev_lift = n_prev, min_prev_share, min_prev_lift

    def explain(self, examples: list[Example], max_act: float, context: UnitContext | None = None) -> Explanation:
        base = super().explain(examples, max_act)
        if not base.token_weights or context is None:
            return base
        # the listed tokens whose activation mass the statistics split by context
        slots = [i for i, t in enumerate(context.tokens_T.tolist()) if t in base.token_weights]
        ids = context.tokens_T[slots]
        mass_TS = context.token_source_TS[slots]
        mass_S = mass_TS.sum(axis=0)
        total, mu = float(mass_S.sum()), context.mean_act
        if total <= 0:
            return base
        # each token's own mean activation, so a context's lift measures the context, not token weights' errors
        rate = mass_TS.sum(axis=1) / np.maximum(self.sources.token_source_VS[ids].sum(axis=1), 1)

        expected_S = rate @ self.sources.token_source_VS[ids]
        lift_S = lifts(mass_S, expected_S, total, expected_S.sum(), mu)
        shares_S = mass_S / total
        named = [
            int(s)
            for s in np.argsort(-shares_S, kind="stable")[: self.n_sources]
            if shares_S[s] >= self.min_source_share and len(shares_S) > 1
        ]  # one source says nothing
        source_lifts = {s: float(lift_S[s]) for s in named}
        rest = np.setdiff1d(np.arange(len(shares_S)), named)
        other_source = float(
            lifts(mass_S[rest].sum(keepdims=True), expected_S[rest].sum(keepdims=True), total, expected_S.sum(), mu)[0]
        )

        # previous tokens: the same comparison against n(p → t)
        mass_V = context.token_prev_TV[slots].sum(axis=0)
        expected_V = np.asarray(self.sources.bigram_PV[:, ids] @ rate).ravel()
        prev_total, prev_expected = float(mass_V.sum()), float(expected_V.sum())
        prev_lift = lifts(mass_V, expected_V, prev_total, prev_expected, mu)
        prev_share = mass_V / total
        candidates = [
            int(p)
            for p in np.argsort(-prev_share, kind="stable")[: 4 * self.n_prev]
            if prev_share[p] >= self.min_prev_share and prev_lift[p] >= self.min_prev_lift
        ][: self.n_prev]
        prev_lifts = {p: float(prev_lift[p]) for p in candidates}
        other_prev = 1.0
        if prev_lifts:
            rest_mass = prev_total - mass_V[candidates].sum()
            rest_expected = prev_expected - expected_V[candidates].sum()
            other_prev = float(
                lifts(np.array([rest_mass]), np.array([rest_expected]), prev_total, prev_expected, mu)[0]
            )

        where = ", ".join(f"{self.sources.sources[s]} {shares_S[s]:.0%} (×{source_lifts[s]:.1f})" for s in named)
        after = ", ".join(f"{self.quote(p)} ×{lift:.1f}" for p, lift in prev_lifts.items())
        text = base.text + (f" — {where}" if where else "") + (f" · after {after}" if after else "")
        return Explanation(
            text, base.token_weights, source_lifts, other_source, prev_lifts, other_prev, {int(t) for t in ids}
        )

    def _predict(self, explanation: Explanation, contexts: list[Example]) -> np.ndarray:
        predicted = super()._predict(explanation, contexts)
        if not explanation.context_tokens:
            return predicted
        known = [c.rows is not None for c in contexts]  # a context without rows gets no factors
        tokens = np.concatenate([c.tokens for c, k in zip(contexts, known) if k] + [np.zeros(0, np.int64)])
        rows = np.concatenate([c.rows for c, k in zip(contexts, known) if k] + [np.zeros(0, np.int64)])
        source_lift = np.full(self.sources.n_sources, explanation.other_source_lift)
        source_lift[list(explanation.source_lifts)] = list(explanation.source_lifts.values())
        factor = source_lift[self.sources.source_N[rows]] * _lookup(
            explanation.prev_lifts, self.sources.prev_N[rows], explanation.other_prev_lift
        )
        where = np.repeat(known, [len(c.tokens) for c in contexts])
        in_context = np.isin(tokens, np.fromiter(explanation.context_tokens, dtype=np.int64))
        predicted[where] = np.where(in_context, predicted[where] * factor, predicted[where])
        return predicted


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def detection_accuracy(predicted_C: np.ndarray, actual_C: np.ndarray) -> float:
    """Balanced accuracy of predictions [C] (1/0, NaN = no answer: left out) against boolean labels
    [C]; NaN when the answered contexts hold only one class."""
    answered = ~np.isnan(np.asarray(predicted_C, dtype=float))
    predicted, actual = np.asarray(predicted_C, dtype=float)[answered] > 0.5, np.asarray(actual_C, bool)[answered]
    if actual.all() or not actual.any():
        return float("nan")
    return float((predicted[actual].mean() + (~predicted[~actual]).mean()) / 2)


def fuzzing_marks(score: list[Example], rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """delphi's fuzzing set over ``score``: per context its marked tokens [L] and whether the marks
    are correct (see the module docstring)."""
    max_C = [e.acts.max(initial=0) for e in score]
    marks: list[np.ndarray | None] = [e.acts > FUZZ_THRESHOLD * m if m > 0 else None for e, m in zip(score, max_C)]
    n_marked = [int(mark.sum()) for mark in marks if mark is not None]
    n_wrong = math.ceil(np.mean(n_marked)) if n_marked else 1
    for c, e in enumerate(score):
        if marks[c] is None:
            mark = np.zeros(len(e.tokens), dtype=bool)
            mark[rng.choice(len(e.tokens), size=min(n_wrong, len(e.tokens)), replace=False)] = True
            marks[c] = mark
    return marks, np.array([m > 0 for m in max_C], dtype=bool)


def score_unit(
    explainer: Explainer,
    explain: list[Example],
    score: list[Example],
    max_act: float,
    context: UnitContext | None = None,
    seed: int = 0,
) -> UnitScore:
    """Explain from ``explain`` (and ``context``), then measure the three scores on ``score``;
    ``seed`` picks fuzzing's wrongly marked tokens."""
    explanation = explainer.explain(explain, max_act, context)
    if not score or max_act <= 0:
        return UnitScore(explanation.text, float("nan"), float("nan"), float("nan"), explainer.backend)
    predicted = explainer.simulate(explanation, score)
    true_all = np.concatenate([e.acts for e in score]) / max_act
    simulation = pearson(np.concatenate(predicted), true_all)
    fires_C = np.array([e.acts.max(initial=0) > 0 for e in score])
    marks, correct_C = fuzzing_marks(score, np.random.default_rng(seed))
    if isinstance(explainer, OfflineExplainer):  # its answers are read off the simulation just made
        detected_C, fuzzed_C = explainer.detect_predicted(predicted), explainer.fuzz_predicted(predicted, marks)
    else:
        detected_C, fuzzed_C = explainer.detect(explanation, score), explainer.fuzz(explanation, score, marks)
    detection = detection_accuracy(detected_C, fires_C)
    fuzzing = detection_accuracy(fuzzed_C, correct_C)
    return UnitScore(explanation.text, simulation, detection, fuzzing, explainer.backend)
