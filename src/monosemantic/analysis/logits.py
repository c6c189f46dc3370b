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

A unit read at another hook point (a dictionary trained elsewhere) writes its direction straight
into the residual stream when the hook carries residual-width vectors (``hook_resid_*``,
``hook_mlp_out``, ``hook_attn_out``): r_u = d_u. ``blocks.L.mlp.hook_post`` goes through block L's
W_out. Either way it is the direct path to the logits, ignoring later layers (exact in a one-layer
model). Other hooks (attention heads' ``hook_z``, pre-activations) have no such linear path: None.
"""

from __future__ import annotations

import re

import torch
from transformer_lens import HookedTransformer

_RESIDUAL_HOOKS = re.compile(r"^(blocks\.\d+\.hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out)|hook_embed)$")
_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")


@torch.no_grad()
def logit_effects(
    model: HookedTransformer, directions_UM: torch.Tensor, hook_name: str = "blocks.0.mlp.hook_post"
) -> torch.Tensor | None:
    """Median-shifted direct logit effects [U, d_vocab] of directions [U, M] in the space of
    ``hook_name`` (M = d_mlp for an MLP's ``hook_post``, d_model for a residual-width hook); None
    for a hook with no linear path to the logits. Computed on the directions' device."""
    device = directions_UM.device
    mlp = _MLP_POST.match(hook_name)
    if mlp:
        resid_UR = directions_UM.float() @ model.blocks[int(mlp.group(1))].mlp.W_out.detach().float().to(device)
    elif _RESIDUAL_HOOKS.match(hook_name):
        resid_UR = directions_UM.float()
    else:
        return None
    if str(model.cfg.normalization_type).startswith("LN"):  # RMSNorm (Llama) scales without centring
        resid_UR = resid_UR - resid_UR.mean(dim=1, keepdim=True)
    ln_gain = getattr(model.ln_final, "w", None)
    if ln_gain is not None:
        resid_UR = resid_UR * ln_gain.detach().float().to(device)
    effects_UV = resid_UR @ model.W_U.detach().float().to(device)
    return effects_UV - effects_UV.median(dim=1, keepdim=True).values


def top_and_bottom(effects_UV: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top values, top tokens, bottom values, bottom tokens), each [U, n], strongest first."""
    top = effects_UV.topk(n, dim=1)
    bottom = effects_UV.topk(n, dim=1, largest=False)
    return top.values, top.indices, bottom.values, bottom.indices
