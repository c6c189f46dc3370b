"""Where a unit's activation comes from: by document source, by language, and by the token before.

Over the analysed rows n (token t_n, the token p_n before it in the same harvest window, the source
s_n and language l_n of its document), a unit u with activations a_un ≥ 0 has

    mass_u(s) = Σ_{n: s_n = s} a_un        (likewise mass_u(l) per language, mass_u(p) per previous token)
    share_u(s) = mass_u(s) / Σ_n a_un      "Python docs 91 %"

A share alone says little: a feature that fires on every " the" gets most of its mass wherever " the"
is most common. The context explanation therefore compares, on the tokens t its token explanation
lists (those among the unit's ``CONTEXT_TOKENS`` tokens of most mass, whose mass mass_u(t, s) and
mass_u(p → t) is kept per source and previous token), the mass with what each token's own mean
activation r(t) = Σ_s mass_u(t, s) / n(t) predicts from the analysed text's counts n(t, s), n(p → t):

    mass_u(s) = Σ_t mass_u(t, s),  expected_u(s) = Σ_t r(t) n(t, s),
    lift_u(s) = (mass_u(s) + κ μ_u) / (expected_u(s) · Σ_s mass_u(s) / Σ_s expected_u(s) + κ μ_u),

where μ_u is the unit's mean activation when it fires and κ = ``PRIOR_FIRINGS`` pseudo-firings pull
the lift of a context seen a few times towards 1. lift_u(s) ≫ 1: the unit prefers its tokens in s;
≪ 1: it ignores them there. The same holds for previous tokens p with n(p → t).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from monosemantic.corpus.sources import DocumentSources

PRIOR_FIRINGS = 3.0  # κ: pseudo-firings at lift 1 added to every context


@dataclass
class TokenSources:
    """The analysed rows' contexts: source, language and previous token of every row, and the counts
    n(t, s) and n(p → t) the lifts are measured against."""

    sources: list[str]
    languages: list[str]
    tokens_N: np.ndarray  # int64 [N]
    source_N: np.ndarray  # int64 [N]
    language_N: np.ndarray  # int64 [N]
    prev_N: np.ndarray  # int64 [N], −1 for the first row of a harvest window (the model saw nothing before)
    token_source_VS: np.ndarray  # float64 [V, S] token counts per source
    bigram_PV: sp.csc_matrix  # [V, V] counts of (previous token, token), by column = token

    @classmethod
    def build(
        cls, tokens_N: np.ndarray, docs_N: np.ndarray, ctx: int, doc_sources: DocumentSources, vocab_size: int
    ) -> TokenSources:
        if len(docs_N) and docs_N.max() >= len(doc_sources.source_D):
            raise ValueError(f"document {docs_N.max()} has no source ({len(doc_sources.source_D)} documents known)")
        source_N = doc_sources.source_D[docs_N].astype(np.int64)
        language_N = doc_sources.language_D[docs_N].astype(np.int64)
        prev_N = np.concatenate([[-1], tokens_N[:-1]]).astype(np.int64)
        prev_N[np.arange(len(tokens_N)) % ctx == 0] = -1
        S = len(doc_sources.sources)
        token_source_VS = np.bincount(tokens_N * S + source_N, minlength=vocab_size * S).reshape(vocab_size, S)
        has = prev_N >= 0
        bigram_PV = sp.csc_matrix(
            (np.ones(int(has.sum())), (prev_N[has], tokens_N[has])), shape=(vocab_size, vocab_size)
        )
        bigram_PV.sum_duplicates()
        return cls(
            doc_sources.sources,
            doc_sources.languages,
            tokens_N.astype(np.int64),
            source_N,
            language_N,
            prev_N,
            token_source_VS.astype(np.float64),
            bigram_PV,
        )

    @classmethod
    def single_source(
        cls, tokens_N: np.ndarray, docs_N: np.ndarray, ctx: int, vocab_size: int, name: str = "corpus"
    ) -> TokenSources:
        n_docs = int(docs_N.max()) + 1 if len(docs_N) else 0
        return cls.build(tokens_N, docs_N, ctx, DocumentSources.single(name, n_docs), vocab_size)

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_languages(self) -> int:
        return len(self.languages)


@dataclass
class UnitContext:
    """One unit's activation mass by source [S], by language [L] and by previous token (sparse), and
    on its tokens of most mass [T] by source [T, S] and by previous token [T, V]."""

    source_mass_S: np.ndarray
    language_mass_L: np.ndarray
    prev_tokens: np.ndarray  # previous-token ids with mass, ascending
    prev_mass: np.ndarray  # their mass
    mean_act: float  # μ: mean activation when firing
    tokens_T: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # −1: no token
    token_source_TS: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    token_prev_TV: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def total(self) -> float:
        return float(self.source_mass_S.sum())

    def without_rows(self, rows_R: np.ndarray, acts_R: np.ndarray, text: TokenSources) -> UnitContext:
        """This mass less the unit's activations ``acts_R`` on rows ``rows_R`` (distinct rows): what
        an explainer may use when those rows are held out for scoring."""
        source = self.source_mass_S - np.bincount(
            text.source_N[rows_R], weights=acts_R, minlength=len(self.source_mass_S)
        )
        language = self.language_mass_L - np.bincount(
            text.language_N[rows_R], weights=acts_R, minlength=len(self.language_mass_L)
        )
        prev_R = text.prev_N[rows_R]
        prev_mass = self.prev_mass.copy()
        if len(self.prev_tokens):
            slot_R = np.minimum(np.searchsorted(self.prev_tokens, prev_R), len(self.prev_tokens) - 1)
            hit_R = self.prev_tokens[slot_R] == prev_R  # a row with no previous token (−1) never hits
            np.subtract.at(prev_mass, slot_R[hit_R], acts_R[hit_R])
        token_source, token_prev = self.token_source_TS.copy(), self.token_prev_TV.copy()
        entry, slot = np.nonzero(self.tokens_T[None, :] == text.tokens_N[rows_R][:, None])
        np.subtract.at(token_source, (slot, text.source_N[rows_R][entry]), acts_R[entry])
        has = text.prev_N[rows_R][entry] >= 0
        np.subtract.at(token_prev, (slot[has], text.prev_N[rows_R][entry][has]), acts_R[entry][has])
        return UnitContext(
            np.maximum(source, 0),
            np.maximum(language, 0),
            self.prev_tokens,
            np.maximum(prev_mass, 0),
            self.mean_act,
            self.tokens_T,
            np.maximum(token_source, 0),
            np.maximum(token_prev, 0),
        )

    def source_shares(self) -> np.ndarray:
        return self.source_mass_S / max(self.total, 1e-30)

    def language_shares(self) -> np.ndarray:
        return self.language_mass_L / max(self.total, 1e-30)


def lifts(
    mass_C: np.ndarray, expected_C: np.ndarray, total_mass: float, total_expected: float, mean_act: float
) -> np.ndarray:
    """lift(c) = (mass(c) + κμ) / (expected(c) · total_mass / total_expected + κμ): expected mass is
    rescaled to the unit's total over all contexts (see the module docstring); 1 when nothing is expected."""
    if total_expected <= 0:
        return np.ones(len(mass_C))
    prior = PRIOR_FIRINGS * max(mean_act, 1e-12)
    expected_C = np.asarray(expected_C, dtype=float) * (total_mass / total_expected)
    return (np.asarray(mass_C, dtype=float) + prior) / (expected_C + prior)


def js_divergence(distributions_KS: np.ndarray, weights_K: np.ndarray) -> float:
    """Generalised Jensen–Shannon divergence in bits: H(Σ_k w_k P_k) − Σ_k w_k H(P_k), rows P_k
    normalised, weights normalised; 0 when all rows agree, at most log2(K)."""
    P = distributions_KS / np.maximum(distributions_KS.sum(axis=1, keepdims=True), 1e-300)
    w = weights_K / weights_K.sum()

    def entropy(p: np.ndarray) -> np.ndarray:
        return -(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0)).sum(axis=-1)

    return float(entropy(w @ P) - (w * entropy(P)).sum())


def describe_sources(
    shares_S: np.ndarray, names: list[str], n: int = 3, min_share: float = 0.05
) -> list[tuple[str, float]]:
    """The ``n`` largest shares of at least ``min_share``, as (name, share), largest first."""
    order = np.argsort(-shares_S, kind="stable")[:n]
    return [(names[i], float(shares_S[i])) for i in order if shares_S[i] >= min_share]
