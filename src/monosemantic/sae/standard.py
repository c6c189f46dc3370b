"""The 2023 recipe: ReLU encoder, L1 penalty, unit-norm decoder, dead-feature resampling.

Bricken et al. 2023, *Towards Monosemanticity*, "Advice for training sparse autoencoders"
(transformer-circuits.pub/2023/monosemantic-features). Resampling lives in ``sae/resampling.py``
and is scheduled by the trainer (``SAEConfig.resample_at``); the decoder-norm constraint is the
trainer's too, since every variant here shares it.

Once few latents are active, training is sparse (``SparseAutoencoder.pre_acts_above``): the
decoder and the backward pass run over the nonzero latents only (ReLU's gradient is 0 elsewhere),
B·N·D work instead of B·F·D; while many are active (early in training), dense.
"""

from __future__ import annotations

import torch

from monosemantic.sae.base import Entries, SparseAutoencoder, StepOutput, mse


class StandardSAE(SparseAutoencoder):
    """σ = ReLU; loss = MSE(x̂, x) + λ · Σ_f latents_f (mean over the batch).

    MSE is a mean over vector elements and the L1 term a sum over features, as in the paper;
    with unit-norm decoder rows the L1 term cannot be shrunk by rescaling the dictionary.

    Initialisation departs from the paper (untied, PyTorch-default Kaiming-uniform): we start
    with W_enc = s · W_decᵀ, s = ``cfg.encoder_init_scale`` (default 0.1), as Anthropic's April
    2024 update ties them at a small norm. Measured on ``benchmarks/sae_synthetic.py``'s small
    setting (D=64, 256 true features, F=512, 300k samples, λ=0.03): untied init reaches MMCS 0.44,
    tied (s = 1) 0.96. Why s < 1: with F random unit rows, x̂ − b_dec starts near s · F/(2D) · x̄ (half the
    latents fire), 4 x̄ for s = 1 at F = 8D, and the first steps shrink every latent at once; at the
    demo's budget (1M samples, F = 4,096, λ 0.01) that left nearly all features faint (FVU 0.54,
    loss recovered 14 %), against FVU 0.29 and 67 % for s = 0.1, whose features split into a main
    cluster (density 1e-3…1e-1) that scores like TopK's and a rare one (README, "The 2023
    recipe at the demo's budget"; all without λ warm-up, which the config adds: ``sae/config.py``).
    """

    variant = "standard"
    saelens_architecture = "standard"

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        super().reset_parameters(generator)
        self.W_enc.mul_(self.cfg.encoder_init_scale)

    def activate(self, pre_BF: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre_BF)

    def sparsity_penalty(self, latents: Entries) -> torch.Tensor:
        """Σ_f latents_f, averaged over the batch."""
        return latents.total() / latents.n_rows

    def training_output(self, x_BD: torch.Tensor, dead_F: torch.Tensor, sparsity_scale: float) -> StepOutput:
        B = x_BD.shape[0]
        pre = self.pre_acts_above(x_BD, torch.zeros_like(self.b_enc))  # ReLU: only entries above 0 matter
        latents = pre._replace(values=pre.values.relu())
        recon_BD = self.decode_entries(latents)
        mse_loss = mse(recon_BD, x_BD)
        l1 = self.sparsity_penalty(latents)
        return StepOutput(
            loss=mse_loss + sparsity_scale * self.cfg.l1_coeff * l1,
            fired_F=latents.fired(self.cfg.d_sae),
            l0=(latents.values > 0).sum().float().detach() / B,
            terms={"mse": mse_loss.detach(), "l1": l1.detach()},
        )
