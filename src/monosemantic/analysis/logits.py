"""Direct logit effects of a unit: what it pushes the next-token prediction towards.

A unit writes a direction into the MLP's neuron space — a neuron its own basis vector e_n, a
feature its decoder row W_dec[f] — which the MLP maps into the residual stream and, in a one-layer
model, straight on to the unembedding:

    r_u      = d_u W_out                              (d_u: [d_mlp], W_out: [d_mlp, d_model])
    effect_u = (r_u − mean(r_u)) ⊙ w_ln  W_U          ([d_vocab])
    logit_u  = effect_u − median_v effect_u           (Bricken et al. 2023: "median-shifted")

The final LayerNorm is linearised at the direction: its centring and its gain ``w_ln`` act on r_u,
its per-token scale (a positive number) only rescales every logit alike, and its bias does not
depend on the unit. The top of logit_u is what the unit promotes, the bottom what it suppresses.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer


@torch.no_grad()
def logit_effects(model: HookedTransformer, directions_UM: torch.Tensor, block: int = 0) -> torch.Tensor:
    """Median-shifted direct logit effects [U, d_vocab] of MLP-neuron-space directions [U, d_mlp]."""
    W_out_MR = model.blocks[block].mlp.W_out.detach().float().cpu()
    resid_UR = directions_UM.float() @ W_out_MR
    resid_UR = resid_UR - resid_UR.mean(dim=1, keepdim=True)
    ln_gain = getattr(model.ln_final, "w", None)
    if ln_gain is not None:
        resid_UR = resid_UR * ln_gain.detach().float().cpu()
    effects_UV = resid_UR @ model.W_U.detach().float().cpu()
    return effects_UV - effects_UV.median(dim=1, keepdim=True).values


def top_and_bottom(effects_UV: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top values, top tokens, bottom values, bottom tokens), each [U, n], strongest first."""
    top = effects_UV.topk(n, dim=1)
    bottom = effects_UV.topk(n, dim=1, largest=False)
    return top.values, top.indices, bottom.values, bottom.indices
