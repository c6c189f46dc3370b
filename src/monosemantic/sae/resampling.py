"""Dead-feature resampling, as Bricken et al. 2023 describe it ("Advice for training sparse
autoencoders", *Towards Monosemanticity*).

At each scheduled step, every feature that has not fired over the preceding window is given a
new direction: an input drawn with probability ∝ (its reconstruction loss)², where the model is
doing worst. Constants (the paper's): encoder row scaled to 0.2 × the mean encoder-row norm of
live features, encoder bias 0, Adam moments of every touched entry reset.
"""

from __future__ import annotations

import torch

from monosemantic.sae.base import SparseAutoencoder

ENCODER_SCALE = 0.2  # paper: "0.2 × the average norm of the encoder weights of alive neurons"


@torch.no_grad()
def resample_dead_features(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Adam,
    dead_F: torch.Tensor,
    inputs_ND: torch.Tensor,
    generator: torch.Generator,
) -> int:
    """Re-initialise the features marked in ``dead_F`` [F] from ``inputs_ND`` [N, D] (in the
    units the SAE is trained in). Returns how many were resampled."""
    dead_idx = dead_F.nonzero().squeeze(1)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        return 0
    loss_N = (sae(inputs_ND) - inputs_ND).pow(2).sum(dim=1)
    weights_N = loss_N.pow(2).cpu()
    if weights_N.sum() <= 0:  # a perfect reconstruction everywhere: nothing better to aim at
        weights_N = torch.ones_like(weights_N)
    pick = torch.multinomial(weights_N, n_dead, replacement=n_dead > inputs_ND.shape[0], generator=generator)
    new_dirs_KD = inputs_ND[pick.to(inputs_ND.device)]
    new_dirs_KD = new_dirs_KD / new_dirs_KD.norm(dim=1, keepdim=True).clamp_min(1e-8)

    live_F = ~dead_F
    live_norm = sae.W_enc[:, live_F].norm(dim=0).mean() if live_F.any() else torch.tensor(1.0)
    sae.W_dec[dead_idx] = new_dirs_KD
    sae.W_enc[:, dead_idx] = new_dirs_KD.T * (ENCODER_SCALE * live_norm)
    sae.b_enc[dead_idx] = 0.0

    for param, index in ((sae.W_dec, (dead_idx,)), (sae.W_enc, (slice(None), dead_idx)), (sae.b_enc, (dead_idx,))):
        state = optimizer.state.get(param, {})
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state:
                state[moment][index] = 0.0
    return n_dead
