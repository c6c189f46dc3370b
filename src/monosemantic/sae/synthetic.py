"""Activations with a known answer: a random dictionary, sparse codes, and how well an SAE found it.

x = Σ_g a_g d_g + σ·ε, with G random unit directions d_g in R^D (G > D: superposition),
feature g firing independently with probability p_g and magnitude a_g ~ Exponential(1), and
ε ~ N(0, I/D) noise. Firing probabilities are log-uniform over ``density_decades`` decades,
rescaled so that Σ_g p_g = ``mean_active`` — a spread like the one real features show (Bricken
et al. 2023's density histogram spans several decades).
"""

from __future__ import annotations

from typing import Iterator

import torch


class SyntheticFeatures:
    """A fixed ground-truth dictionary ``dictionary_GD`` [G, D] and its firing rates ``density_G``."""

    def __init__(
        self,
        d: int,
        n_features: int,
        mean_active: float = 5.0,
        density_decades: float = 2.0,
        noise: float = 0.01,
        seed: int = 0,
    ):
        generator = torch.Generator().manual_seed(seed)
        dictionary_GD = torch.randn(n_features, d, generator=generator)
        self.dictionary_GD = dictionary_GD / dictionary_GD.norm(dim=1, keepdim=True)
        log_density_G = -density_decades * torch.rand(n_features, generator=generator)
        density_G = 10**log_density_G
        self.density_G = (density_G * mean_active / density_G.sum()).clamp(max=1.0)
        self.noise = noise

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n activation vectors, [n, D]."""
        # How often each feature fires, then on which tokens: O(firings), not O(n × G). A feature
        # lands twice on one token with probability ~p², which then adds its two magnitudes.
        counts_G = torch.binomial(torch.full_like(self.density_G, n), self.density_G, generator=generator)
        feature_M = torch.repeat_interleave(torch.arange(self.density_G.numel()), counts_G.long())
        token_M, order_M = torch.randint(n, feature_M.shape, generator=generator).sort()
        magnitude_M = torch.empty(token_M.numel()).exponential_(generator=generator)
        counts_N = torch.bincount(token_M, minlength=n)
        x_ND = torch.nn.functional.embedding_bag(  # Σ magnitude · direction per token
            feature_M[order_M],
            self.dictionary_GD,
            torch.cumsum(counts_N, 0) - counts_N,
            mode="sum",
            per_sample_weights=magnitude_M,
        )
        d = self.dictionary_GD.shape[1]
        return x_ND + self.noise / d**0.5 * torch.randn(x_ND.shape, generator=generator)

    def batches(self, batch_size: int, n_batches: int, seed: int = 0) -> Iterator[torch.Tensor]:
        """``n_batches`` fresh [batch_size, D] batches, reproducible from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        for _ in range(n_batches):
            yield self.sample(batch_size, generator)


def max_cosines(decoder_FD: torch.Tensor, true_dict_GD: torch.Tensor) -> torch.Tensor:
    """For each true feature, its best cosine similarity with any learned decoder row: [G]."""
    learned_FD = decoder_FD / decoder_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)
    true_GD = true_dict_GD / true_dict_GD.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return (true_GD @ learned_FD.T).max(dim=1).values


def mmcs(decoder_FD: torch.Tensor, true_dict_GD: torch.Tensor) -> float:
    """Mean max cosine similarity of the true dictionary against the learned one."""
    return max_cosines(decoder_FD, true_dict_GD).mean().item()


def recovered_fraction(decoder_FD: torch.Tensor, true_dict_GD: torch.Tensor, threshold: float = 0.9) -> float:
    """Fraction of true features matched by some learned decoder row at cosine > ``threshold``."""
    return (max_cosines(decoder_FD, true_dict_GD) > threshold).float().mean().item()
