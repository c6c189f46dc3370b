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

        A full top-(k·B) over B·F entries is slow; instead take each token's top C candidates
        (C = 4k) and the top k·B among those. That is exact unless some token had all C of its
        candidates kept — then it might deserve more, and we retry with C four times larger.
        With the batch split over ``batch_world``'s N ranks (B rows each here), the candidates of
        all ranks are gathered in rank order — a world of 1's order — and each rank keeps its own
        entries of the global top k·N·B; the retry is decided for all ranks together.
        """
        B, F = pre_BF.shape
        world = self.batch_world
        per_row = min(F, 4 * self.cfg.k)
        while True:
            cand_vals_BC, cand_idx_BC = pre_BF.topk(per_row, dim=1, sorted=False)
            local_vals_L = cand_vals_BC.relu().flatten()
            _, pos_N = world.all_gather(local_vals_L).topk(self.cfg.k * B * world.size, sorted=False)
            first = world.rank * len(local_vals_L)
            pos_N = pos_N[(pos_N >= first) & (pos_N < first + len(local_vals_L))] - first
            rows_N = pos_N // per_row
            counts_B = torch.bincount(rows_N, minlength=B)
            saturated = torch.tensor(int(per_row < F and counts_B.max() >= per_row))
            if per_row == F or not world.all_reduce_(saturated, "max"):
                break
            per_row = min(F, 4 * per_row)
        order_N = rows_N.double().argsort()  # each token's entries together; float64: torch sorts int64 slowly on CPU
        pos_N = pos_N[order_N]
        return cand_idx_BC.flatten()[pos_N], local_vals_L[pos_N], torch.cumsum(counts_B, 0) - counts_B

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
