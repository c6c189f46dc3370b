"""Causal checks of a feature: steer the LM with it, or ablate it, at the SAE's hook point.

At the hook (the MLP's post-ReLU neurons x, [B, T, D]) feature f is changed and everything the
SAE does not explain is kept, so only f's contribution moves:

    clamp to v:  x' = x + (v − a_f(x)) · W_dec[f]        (a_f = sae.encode(x)[..., f])
    add v:       x' = x + v · W_dec[f]
    ablate:      clamp to 0

at every position (Bricken et al. 2023 pin a feature this way, e.g. their Arabic feature). We report
the change in the next-token distribution at the prompt's last position, a continuation sampled
with and without steering from the same seed, and, for ablation, the change in next-token loss at
the feature's top activating tokens.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from transformer_lens import HookedTransformer

from monosemantic.errors import UserError
from monosemantic.sae.base import SparseAutoencoder

Mode = Literal["clamp", "add", "ablate"]
MAX_NEW_TOKENS = 40  # the longest continuation the CLI and the browser sample
MAX_STEER_VALUE = 1e4  # beyond this a clamp only measures floating-point overflow


def steering_hook(sae: SparseAutoencoder, feature: int, mode: Mode, value: float = 0.0) -> Callable:
    """A TransformerLens forward hook applying ``mode`` to ``feature`` (see the module docstring)."""
    if not 0 <= feature < sae.cfg.d_sae:
        raise UserError(f"feature {feature}: the SAE has features 0…{sae.cfg.d_sae - 1}")
    if mode not in ("clamp", "add", "ablate"):
        raise UserError(f"--mode {mode}: choose clamp, add or ablate")
    direction_D = sae.W_dec[feature].detach()

    def hook(acts_BTD: torch.Tensor, hook=None) -> torch.Tensor:
        if mode == "add":
            return acts_BTD + value * direction_D
        target = 0.0 if mode == "ablate" else value
        latent_BT = sae.encode(acts_BTD.reshape(-1, acts_BTD.shape[-1]))[:, feature].reshape(acts_BTD.shape[:-1])
        return acts_BTD + (target - latent_BT)[..., None] * direction_D

    return hook


@torch.no_grad()
def next_token_change(
    model: HookedTransformer, hook_name: str, tokens_T: torch.Tensor, hook: Callable, top: int = 10
) -> dict[str, list[tuple[int, float, float]]]:
    """Next-token probabilities after ``tokens_T`` without and with ``hook``: the top tokens before,
    the top tokens after, and the largest probability gains p_after − p_before (not log-ratios, which
    tokens of negligible probability dominate) — each (token, p_before, p_after)."""
    before_V = model(tokens_T[None])[0, -1].log_softmax(-1)
    after_V = model.run_with_hooks(tokens_T[None], fwd_hooks=[(hook_name, hook)])[0, -1].log_softmax(-1)

    def rows(ids: torch.Tensor) -> list[tuple[int, float, float]]:
        return [(int(t), before_V[t].exp().item(), after_V[t].exp().item()) for t in ids]

    return {
        "before": rows(before_V.topk(top).indices),
        "after": rows(after_V.topk(top).indices),
        "gains": rows((after_V.exp() - before_V.exp()).topk(top).indices),
    }


@torch.no_grad()
def sample_continuation(
    model: HookedTransformer,
    hook_name: str,
    tokens_T: torch.Tensor,
    n_tokens: int,
    hook: Callable | None,
    seed: int = 0,
    temperature: float = 1.0,
) -> list[int]:
    """``n_tokens`` sampled after ``tokens_T`` (seeded; greedy at temperature 0), optionally steered."""
    generator = torch.Generator().manual_seed(seed)
    tokens = tokens_T.tolist()
    hooks = [(hook_name, hook)] if hook is not None else []
    for _ in range(n_tokens):
        window = torch.tensor(tokens[-model.cfg.n_ctx :])[None]
        logits_V = model.run_with_hooks(window, fwd_hooks=hooks)[0, -1].float()
        if temperature == 0:
            tokens.append(int(logits_V.argmax()))
        else:
            probs_V = (logits_V / temperature).softmax(-1)
            tokens.append(int(torch.multinomial(probs_V, 1, generator=generator)))
    return tokens[len(tokens_T) :]


@torch.no_grad()
def ablation_loss_change(
    model: HookedTransformer,
    hook_name: str,
    sae: SparseAutoencoder,
    feature: int,
    windows_BT: torch.Tensor,
    positions_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each window, the feature's activation at ``positions_B`` and the change in the loss of
    predicting the next token there when the feature is ablated: (activation [B], Δloss [B])."""
    if (positions_B >= windows_BT.shape[1] - 1).any():
        raise UserError("ablation positions must have a next token inside their window")
    captured = {}

    def keep(acts_BTD, hook=None):
        captured["acts"] = acts_BTD

    batch = torch.arange(len(positions_B))
    targets_B = windows_BT[batch, positions_B + 1]
    clean_BV = model.run_with_hooks(windows_BT, fwd_hooks=[(hook_name, keep)])[batch, positions_B].log_softmax(-1)
    ablated_BV = model.run_with_hooks(windows_BT, fwd_hooks=[(hook_name, steering_hook(sae, feature, "ablate"))])[
        batch, positions_B
    ].log_softmax(-1)
    activation_B = sae.encode(captured["acts"][batch, positions_B])[:, feature]
    return activation_B, clean_BV[batch, targets_B] - ablated_BV[batch, targets_B]
