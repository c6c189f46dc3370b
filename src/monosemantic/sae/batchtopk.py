"""BatchTopK sparse autoencoder, with a global threshold for inference.

Bussmann, Leask & Nanda 2024, *BatchTopK Sparse Autoencoders* (arXiv 2412.06410): during training
keep the k·B largest ReLU'd pre-activations over the whole batch (so k active per token on
average, adaptively spread over tokens); at inference, where batches are not available, keep
every pre-activation above one global threshold θ, estimated during training from the smallest
activation the batch selection kept. The paper averages that minimum over batches; we keep an
exponential moving average (rate ``threshold_ema``, default 0.1) so θ tracks the final
weights rather than the early ones (``sae/config.py`` has the measurement). Everything else — AuxK,
unit-norm decoder, encoder = decoder transpose init — is TopK's (the paper trains with Gao et al.'s
AuxK loss), hence the subclass.

SAELens stores BatchTopK SAEs as JumpReLU SAEs with θ in every feature's threshold; so do we.
"""

from __future__ import annotations

import torch

from monosemantic.sae.topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    """Training: latents = BatchTopK_{k·B}(ReLU(pre)) over the flattened [B·F] batch.
    Inference: σ(pre) = pre · 1[pre > θ] with θ ≥ 0 the learned global threshold.
    """

    variant = "batchtopk"
    saelens_architecture = "jumprelu"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))

    def activate(self, pre_BF: torch.Tensor) -> torch.Tensor:
        return torch.where(pre_BF > self.threshold, pre_BF.relu(), 0.0)

    def select_active(self, pre_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's top k·B latents, flattened [N] and ordered by token, with offsets [B].

        A full top-(k·B) over B·F entries is slow; instead estimate a lower bound λ for the
        (k·B)-th largest value from a sample of S ≤ 64 rows (their m·k·S-th largest, m = 2), take every
        entry above λ as a candidate (row-major, so already ordered by token) and the top k·B among
        those. That is exact when at least k·B entries exceed λ; otherwise retry with m four times
        larger, and finally with every entry. With the batch split over ``batch_world``'s N ranks
        (B rows each here), λ is the smallest over ranks, the count is global, and each rank's
        candidates (padded with −∞ to the longest rank's count) are gathered in rank order; each
        rank keeps its own entries of the global top k·N·B. Ties at the cutoff (frequent in a bf16
        ranking) go to the earliest tokens, so a world of N keeps what a world of 1 keeps.
        """
        B, F = pre_BF.shape
        world, kept = self.batch_world, self.cfg.k * B * self.batch_world.size
        sample_SF = pre_BF[:: max(1, B // 64)]
        for margin in (2, 8, None):
            picks = None if margin is None else margin * self.cfg.k * len(sample_SF)
            if picks is None or picks >= sample_SF.numel():
                bound = torch.tensor(float("-inf"))
            else:
                bound = sample_SF.flatten().topk(picks, sorted=False).values.min().float()
            bound = world.all_reduce_(bound, "min")
            flat_L = (pre_BF > bound).flatten().nonzero().squeeze(1)
            count = torch.tensor(len(flat_L))
            if margin is None or world.all_reduce_(count.clone(), "sum") >= kept:
                break
        longest = int(world.all_reduce_(count, "max"))
        local_vals_L = pre_BF.flatten()[flat_L].relu()
        padded_M = torch.full((longest,), float("-inf"), dtype=local_vals_L.dtype, device=pre_BF.device)
        padded_M[: len(local_vals_L)] = local_vals_L
        cutoff = world.all_gather(padded_M).topk(kept, sorted=False).values.min()
        above_L, tied_L = local_vals_L > cutoff, local_vals_L == cutoff
        tied_R = world.all_gather(tied_L.sum().reshape(1))  # per rank
        wanted = kept - world.all_reduce_(above_L.sum(), "sum") - tied_R[: world.rank].sum()
        pos_N = (above_L | (tied_L & (tied_L.cumsum(0) <= wanted))).nonzero().squeeze(1)
        flat_N = flat_L[pos_N]
        counts_B = torch.bincount(flat_N // F, minlength=B)
        return flat_N % F, local_vals_L[pos_N], torch.cumsum(counts_B, 0) - counts_B

    @torch.no_grad()
    def observe_kept(self, vals_N: torch.Tensor) -> None:
        """θ ← EMA of the smallest positive kept value over the whole batch (read exactly, whatever
        ranked them)."""
        if not self.training:
            return
        positive = vals_N[vals_N > 0]
        smallest = positive.min() if len(positive) else torch.tensor(float("inf"), device=vals_N.device)
        smallest = self.batch_world.all_reduce_(smallest.float(), "min")
        if torch.isfinite(smallest):
            rate = self.cfg.threshold_ema if self.threshold > 0 else 1.0  # first batch: start there
            self.threshold.lerp_(smallest, rate)

    @torch.no_grad()
    def rescale_units(self, scale: float) -> None:
        super().rescale_units(scale)
        self.threshold /= scale

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(), "threshold": self.threshold.expand(self.cfg.d_sae)}

    def saelens_fields(self) -> dict[str, object]:
        return {}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_saelens_tensors(tensors)
        self.threshold.copy_(tensors["threshold"][0])
