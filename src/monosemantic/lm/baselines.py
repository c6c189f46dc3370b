"""Count-based baselines the transformer must beat: unigram and bigram next-token models.

Both are fitted on the train split and scored on exactly the targets the LM is scored on (every
position but the first of each non-overlapping ``n_ctx`` window of the val split), in nats:

- unigram:  p(b) = (c(b) + 1) / (N + V)                                  (add-one)
- bigram:   p(b | a) = (c(a, b) + β · p_uni(b)) / (c(a) + β)             (Dirichlet smoothing)

β is chosen on the last 5 % of the train tokens, never on the validation split.
"""

from __future__ import annotations

import numpy as np

from monosemantic.corpus.shards import TokenShards


def _pairs(tokens_T: np.ndarray, vocab: int) -> np.ndarray:
    return tokens_T[:-1].astype(np.int64) * vocab + tokens_T[1:].astype(np.int64)


def _val_targets(val: TokenShards, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, target token) for every LM-scored position of the val split."""
    windows_WT = np.stack([w for _, _, w in val.sequential_windows(ctx)])
    return windows_WT[:, :-1].ravel(), windows_WT[:, 1:].ravel()


DENSE_PAIRS_MAX = 1 << 26  # up to this many (a, b) cells a dense count table is fastest


class _Bigram:
    def __init__(self, tokens_T: np.ndarray, vocab: int):
        self.vocab = vocab
        self.unigram_V = (np.bincount(tokens_T, minlength=vocab) + 1.0) / (len(tokens_T) + vocab)
        pairs_N = _pairs(tokens_T, vocab)
        if vocab * vocab <= DENSE_PAIRS_MAX:
            self.dense_counts = np.bincount(pairs_N, minlength=vocab * vocab)
        else:  # large vocabularies: sorted distinct pairs, looked up by binary search
            self.dense_counts = None
            self.keys, self.pair_counts = np.unique(pairs_N, return_counts=True)
        self.prev_counts_V = np.bincount(tokens_T[:-1], minlength=vocab).astype(np.float64)

    def pair_counts_of(self, keys_N: np.ndarray) -> np.ndarray:
        if self.dense_counts is not None:
            return self.dense_counts[keys_N]
        pos_N = np.clip(np.searchsorted(self.keys, keys_N), 0, len(self.keys) - 1)
        return np.where(self.keys[pos_N] == keys_N, self.pair_counts[pos_N], 0)

    def nll(self, prev_N: np.ndarray, next_N: np.ndarray, beta: float) -> float:
        keys_N = prev_N.astype(np.int64) * self.vocab + next_N
        count_N = self.pair_counts_of(keys_N)
        p_N = (count_N + beta * self.unigram_V[next_N]) / (self.prev_counts_V[prev_N] + beta)
        return float(-np.log(p_N).mean())


def baseline_losses(train: TokenShards, val: TokenShards, ctx: int) -> dict:
    """Unigram and bigram validation loss (nats/token) and the β the bigram used."""
    vocab = train.vocab_size
    train_T = np.concatenate([np.asarray(t, dtype=np.int64) for t in train.tokens])
    prev_N, next_N = _val_targets(val, ctx)

    split = int(len(train_T) * 0.95)
    fit, tune = _Bigram(train_T[:split], vocab), train_T[split:]
    betas = [0.1, 0.3, 1, 3, 10, 30, 100, 300]
    beta = min(betas, key=lambda b: fit.nll(tune[:-1], tune[1:], b))

    full = _Bigram(train_T, vocab)
    return {
        "unigram_loss": float(-np.log(full.unigram_V[next_N]).mean()),
        "bigram_loss": full.nll(prev_N, next_N, beta),
        "bigram_beta": beta,
    }
