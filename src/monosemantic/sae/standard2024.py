"""Anthropic's April 2024 update to the 2023 recipe: the L1 penalty weighted by decoder norms.

Conerly et al., "Circuits Updates — April 2024: Update on how we train SAEs"
(transformer-circuits.pub/2024/april-update). The architecture is the 2023 one (ReLU encoder,
linear decoder); what changes is how it is trained:

- no unit-norm constraint on W_dec; the penalty is λ Σ_f latents_f ‖W_dec[f]‖, so shrinking a
  decoder row to cheat the L1 term costs as much as it saves;
- W_dec rows start as random directions of one fixed norm (the update allows 0.05 to 1), W_enc =
  W_decᵀ. We keep decoder norm 1 and start the encoder at 0.1 · W_decᵀ, as the 2023 recipe here
  (``StandardSAE``): on ``tests/test_sae_synthetic.py``'s dictionary (D=64, F=512, 100k samples)
  norm 0.1 on both reached MMCS 0.51 and norm 1 on both 0.96; on the demo's LM activations
  (F = 4,096, 1M samples) the encoder at 1 · W_decᵀ gave FVU 0.46 and loss recovered 30 %, at
  0.1 · W_decᵀ 0.24 and 70 % (measured);
- λ warmed up linearly over the first 5 % of training, the learning rate decayed linearly to 0 over
  the last 20 %, gradients clipped to norm 1, no resampling, inputs scaled to a fixed mean norm
  (these are ``SAEConfig`` defaults for this variant, and the trainer's input scaling).

The update's loss is a sum of squared errors over the input dimensions with λ ≈ 5; ours is the
mean over dimensions (as the 2023 recipe here), so the same λ reads λ/D here: 5/512 ≈ 0.01, the
default. Saved SAEs are SAELens ``standard`` SAEs (same inference math).
"""

from __future__ import annotations

import torch

from monosemantic.sae.base import Entries
from monosemantic.sae.standard import StandardSAE


class Standard2024SAE(StandardSAE):
    """σ = ReLU; loss = MSE(x̂, x) + λ · Σ_f latents_f ‖W_dec[f]‖ (mean over the batch)."""

    variant = "standard2024"
    unit_norm_decoder = False

    def sparsity_penalty(self, latents: Entries) -> torch.Tensor:
        """Σ_f latents_f ‖W_dec[f]‖, averaged over the batch."""
        return latents.total(self.W_dec.norm(dim=1)) / latents.n_rows
