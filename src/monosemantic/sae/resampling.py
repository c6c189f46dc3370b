"""Dead-feature resampling, as Bricken et al. 2023 describe it ("Advice for training sparse
autoencoders", *Towards Monosemanticity*).

At each scheduled step, every feature that has not fired over the preceding window is given a
new direction: an input drawn with probability ∝ (its reconstruction loss)², where the model is
doing worst. The trainer composes the three steps (``resampling_weights``, ``pick_inputs``,
``reinitialise_features``), gathering the weights and the picked inputs across ranks in between.
Constants (the paper's): encoder row scaled to 0.2 × the mean encoder-row norm of
live features, encoder bias 0, Adam moments of every touched entry reset.
"""

from __future__ import annotations

import torch

from monosemantic.sae.base import SparseAutoencoder

ENCODER_SCALE = 0.2  # paper: "0.2 × the average norm of the encoder weights of alive neurons"


@torch.no_grad()
def resampling_weights(sae: SparseAutoencoder, inputs_ND: torch.Tensor) -> torch.Tensor:
    """Each input's chance of being picked, unnormalised: (its squared reconstruction error)²,
    float [N] on the CPU, for ``inputs_ND`` [N, D] in the units the SAE is trained in."""
    return (sae(inputs_ND) - inputs_ND).pow(2).sum(dim=1).pow(2).cpu()


def pick_inputs(weights_N: torch.Tensor, n_dead: int, generator: torch.Generator) -> torch.Tensor:
    """Indices [n_dead] of inputs drawn with probability ∝ ``weights_N`` (uniformly where every
    weight is 0: a perfect reconstruction everywhere leaves nothing better to aim at)."""
    if weights_N.sum() <= 0:
        weights_N = torch.ones_like(weights_N)
    return torch.multinomial(weights_N, n_dead, replacement=n_dead > len(weights_N), generator=generator)


@torch.no_grad()
def reinitialise_features(
    sae: SparseAutoencoder, optimizer: torch.optim.Adam, dead_F: torch.Tensor, inputs_KD: torch.Tensor
) -> None:
    """Give the K features marked in ``dead_F`` [F] the directions of ``inputs_KD`` [K, D] (one
    picked input each, in feature order): decoder row = unit input, encoder row = that times 0.2 ×
    the mean live encoder norm, encoder bias 0, their Adam moments reset."""
    dead_idx = dead_F.nonzero().squeeze(1)
    new_dirs_KD = inputs_KD / inputs_KD.norm(dim=1, keepdim=True).clamp_min(1e-8)
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
