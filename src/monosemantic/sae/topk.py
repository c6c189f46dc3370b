"""TopK sparse autoencoder with the AuxK loss for dead latents.

Gao et al. 2024, *Scaling and evaluating sparse autoencoders* (arXiv 2406.04093): keep the k
largest pre-activations per token (then ReLU), no sparsity penalty; encoder initialised to the
decoder transpose; decoder rows unit norm with the parallel gradient component removed; dead
latents (no activation for a while — our ``dead_window``) get the auxiliary loss with
α = 1/32 and k_aux ≈ d_model/2 (both the paper's values).

Training is sparse on both sides: the k active latents per token are picked from pre-activations
computed without gradient and re-read with gradient (``pre_acts_at``), and only their decoder rows
are read; backward costs B·K·D instead of the dense B·F·D. The ranking product may be bf16
(``SAEConfig.select_precision``): the chosen values are still read exactly.
"""

from __future__ import annotations

import torch

from monosemantic.sae.base import SparseAutoencoder, StepOutput, mse


class TopKSAE(SparseAutoencoder):
    """σ(pre) = ReLU(TopK_k(pre)): the k largest entries of each row kept, the rest zeroed.

    loss = MSE(x̂, x) + α · AuxK, where, with e = x − x̂ (detached) the residual and
    ê = Σ_{f ∈ TopK_{k_aux} over dead f} ReLU(pre_f) W_dec[f] its reconstruction from dead
    latents only, AuxK = ‖e − ê‖² / ‖e − mean(e)‖² (normalised as in Gao et al.'s code; the mean and
    the normaliser are the whole batch's when ranks share it).
    """

    variant = "topk"
    saelens_architecture = "topk"

    def activate(self, pre_BF: torch.Tensor) -> torch.Tensor:
        vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=1, sorted=False)
        return torch.zeros_like(pre_BF).scatter_(1, idx_BK, vals_BK.relu())

    def select_active(self, pre_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The active latents as (idx, vals, offsets) for ``decode_sparse``: here [B, K], each
        token's latents in increasing order (the exact re-read's order, so it sorts nothing)."""
        vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=1, sorted=False)
        idx_BK, order_BK = idx_BK.sort(dim=1)
        return idx_BK, vals_BK.gather(1, order_BK).relu(), None

    def observe_kept(self, vals: torch.Tensor) -> None:
        """What a training step's kept latent values (exact, detached) teach a subclass; TopK
        itself learns nothing from them (BatchTopK's inference threshold does)."""

    def training_output(self, x_BD: torch.Tensor, dead_F: torch.Tensor, sparsity_scale: float) -> StepOutput:
        B = x_BD.shape[0]
        pre_BF = self.ranking_pre_acts(x_BD)  # only the selected entries need gradient (``pre_acts_at``)
        idx, _, offsets_B = self.select_active(pre_BF)
        vals = self.pre_acts_at(x_BD, pre_BF, idx, offsets_B).relu()
        self.observe_kept(vals.detach())
        recon_BD = self.decode_sparse(idx, vals, offsets_B) + self.b_dec
        mse_loss = mse(recon_BD, x_BD)
        loss, terms = mse_loss, {"mse": mse_loss.detach()}
        if self.any_dead(dead_F):
            aux = self.aux_loss(x_BD, pre_BF, dead_F, (x_BD - recon_BD).detach())
            loss = loss + self.cfg.aux_coeff * aux
            terms["auxk"] = aux.detach()
        active = vals > 0
        fired_F = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x_BD.device)
        fired_F[idx[active]] = True
        return StepOutput(loss, fired_F, active.sum().float().detach() / B, terms)

    def aux_loss(
        self, x_BD: torch.Tensor, pre_BF: torch.Tensor, dead_F: torch.Tensor, residual_BD: torch.Tensor
    ) -> torch.Tensor:
        """Normalised error of reconstructing ``residual_BD`` from the top-k_aux dead latents
        (``pre_BF``: x_BD's pre-activations for ranking, without gradient)."""
        idx, offsets_B = self.select_dead(pre_BF, dead_F)
        aux_recon_BD = self.decode_sparse(idx, self.pre_acts_at(x_BD, pre_BF, idx, offsets_B).relu(), offsets_B)
        baseline = self._batch_variance(residual_BD)
        return mse(aux_recon_BD, residual_BD) / baseline.clamp_min(1e-12)

    def _batch_variance(self, e_BD: torch.Tensor) -> torch.Tensor:
        """mean over the whole batch and D of (e − mean_batch(e))², the batch split over
        ``batch_world``'s ranks in equal parts."""
        world = self.batch_world
        n = e_BD.shape[0] * world.size
        mean_D = world.all_reduce_(e_BD.sum(dim=0)) / n
        return world.all_reduce_((e_BD - mean_D).pow(2).sum()) / (n * e_BD.shape[1])

    def any_dead(self, dead_F: torch.Tensor) -> bool:
        """Whether any latent is dead (``dead_F`` [F] bool): then the AuxK term is added."""
        return bool(dead_F.any())

    def select_dead(self, pre_BF: torch.Tensor, dead_F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each token's top-k_aux dead latents by ``pre_BF``, as (idx, offsets) for ``decode_sparse``:
        here [B, K] and None."""
        dead_idx = dead_F.nonzero().squeeze(1)
        if len(dead_idx) <= self.cfg.aux_k:  # few dead: all of them, no top-k over the batch's [B, F]
            return dead_idx.expand(pre_BF.shape[0], -1), None
        return dead_idx[pre_BF[:, dead_idx].topk(self.cfg.aux_k, dim=1, sorted=False).indices], None

    def saelens_fields(self) -> dict[str, object]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
