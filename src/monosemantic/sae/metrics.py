"""How good an SAE is, measured the same way for every variant on held-out activations.

Reconstruction: MSE and fraction of variance unexplained (FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖²).
Sparsity: L0 (mean active features per token), per-feature firing density, dead features
(never fired on the held-out tokens) and dense ones (fire on > 10 % of tokens), and the log10
density histogram of Bricken et al. 2023. Faithfulness to the model: loss recovered, splicing
x̂ into the LM in place of the activations, (L_ablate − L_sae) / (L_ablate − L_clean) against
zero- and mean-ablation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from monosemantic.errors import UserError
from monosemantic.figures import new_figure, save_figure
from monosemantic.sae.base import SparseAutoencoder, check_activations

DENSE_THRESHOLD = 0.1  # "dense": fires on more than 10 % of tokens (the definition)
ULTRALOW_DENSITY = 1e-6  # Bricken et al. 2023's ultralow-density cluster lies below this
ROWS_PER_PASS = 8192  # latents held at once: 8192 × F floats (128 MB at F = 4096)


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, chunks: Iterable[torch.Tensor]) -> dict[str, Any]:
    """Stream held-out activation chunks ([N, D] each) through ``sae``, ``ROWS_PER_PASS`` rows at a
    time, so memory does not grow with the chunk size or the number of tokens. Returns ``mse``, ``fvu``,
    ``l0``, ``dead_frac``, ``dense_frac``, ``n_tokens`` and ``density`` (float64 numpy array [F]:
    fraction of tokens each feature fired on).
    """
    device = sae.W_dec.device
    D, F = sae.W_dec.shape[1], sae.W_dec.shape[0]
    n = 0
    sq_err = torch.zeros((), dtype=torch.float64, device=device)
    sum_D = torch.zeros(D, dtype=torch.float64, device=device)
    sum_sq_D = torch.zeros(D, dtype=torch.float64, device=device)
    active = torch.zeros((), dtype=torch.float64, device=device)
    fires_F = torch.zeros(F, dtype=torch.float64, device=device)
    for i, chunk_ND in enumerate(chunks):
        check_activations(chunk_ND, D, f"held-out activation chunk {i}")
        for x_ND in chunk_ND.split(ROWS_PER_PASS):
            x_ND = x_ND.to(device, torch.float32)
            latents_NF = sae.encode(x_ND)
            recon_ND = sae.decode(latents_NF)
            sq_err += (recon_ND - x_ND).double().pow(2).sum()
            sum_D += x_ND.double().sum(dim=0)
            sum_sq_D += x_ND.double().pow(2).sum(dim=0)
            active_NF = latents_NF != 0
            active += active_NF.sum()
            fires_F += active_NF.sum(dim=0)
            n += x_ND.shape[0]
    if n == 0:
        raise UserError("held-out activations: no tokens to evaluate the SAE on")
    total_var = (sum_sq_D - sum_D.pow(2) / n).sum().clamp_min(1e-30)
    density_F = (fires_F / n).cpu().numpy()
    return {
        "mse": (sq_err / (n * D)).item(),
        "fvu": (sq_err / total_var).item(),
        "l0": (active / n).item(),
        "dead_frac": float((density_F == 0).mean()),
        "dense_frac": float((density_F > DENSE_THRESHOLD).mean()),
        "n_tokens": n,
        "density": density_F,
    }


def density_summary(density_F: np.ndarray, n_tokens: int) -> dict[str, Any]:
    """Dead (never fired) and ultralow (fired, on fewer than ULTRALOW_DENSITY of the tokens)
    fractions of a dictionary, from densities measured on ``n_tokens`` tokens; ultralow is None
    when one firing is already above that density (too few tokens to see the cluster)."""
    fired_F = density_F > 0
    ultralow = float((fired_F & (density_F < ULTRALOW_DENSITY)).mean()) if n_tokens * ULTRALOW_DENSITY > 1 else None
    return {
        "n_tokens": n_tokens,
        "dead_frac": float((~fired_F).mean()),
        "ultralow_frac": ultralow,
        "log10_hist": np.histogram(np.log10(density_F[fired_F]), bins=40, range=(-8, 0))[0].tolist(),
    }


def plot_density_histogram(density_F: np.ndarray, path: str | Path, title: str = "Feature density") -> Path:
    """Histogram of log10(feature firing density), the paper's plot; dead features are counted
    in the legend (their log density is −∞). Written atomically as PNG."""
    density_F = np.asarray(density_F, dtype=np.float64)
    alive = density_F[density_F > 0]
    fig, ax = new_figure((6, 3.5))
    if alive.size:
        ax.hist(np.log10(alive), bins=60, color="tab:blue", label=f"{alive.size} live features")
    n_dead = int((density_F == 0).sum())
    ax.plot([], [], " ", label=f"{n_dead} dead ({n_dead / max(density_F.size, 1):.1%})")
    ax.set_xlabel("log10 feature density (fraction of tokens)")
    ax.set_ylabel("features")
    ax.set_title(title)
    ax.legend(loc="upper left", frameon=False)
    return save_figure(fig, path)


@torch.no_grad()
def loss_recovered(
    model: HookedTransformer,  # noqa: F821 — transformer_lens, imported lazily by callers
    sae: SparseAutoencoder,
    tokens_BT: torch.Tensor,
    hook_name: str,
    mean_acts_D: torch.Tensor,
) -> dict[str, float]:
    """Next-token cross-entropy (nats) of ``model`` on ``tokens_BT`` when the activations at
    ``hook_name`` are left alone (clean), replaced by the SAE's reconstruction (sae), by zeros
    (zero_ablation) or by ``mean_acts_D`` (mean_ablation); and the fractions of loss recovered
    (L_ablate − L_sae) / (L_ablate − L_clean) for both ablations.
    """
    device = sae.W_dec.device

    def run(replace: Any) -> float:
        hooks = [] if replace is None else [(hook_name, lambda acts, hook: replace(acts))]
        loss = model.run_with_hooks(tokens_BT, return_type="loss", fwd_hooks=hooks)
        return float(loss.item())

    def splice(acts: torch.Tensor) -> torch.Tensor:
        x_ND = acts.reshape(-1, acts.shape[-1]).to(device, torch.float32)
        return sae(x_ND).reshape(acts.shape).to(acts.dtype).to(acts.device)

    clean = run(None)
    with_sae = run(splice)
    zero = run(torch.zeros_like)
    mean = run(lambda acts: mean_acts_D.to(acts.device, acts.dtype).expand_as(acts).clone())

    def recovered(ablated: float) -> float:
        gap = ablated - clean
        return (ablated - with_sae) / gap if gap != 0 else float("nan")

    return {
        "clean_loss": clean,
        "sae_loss": with_sae,
        "zero_ablation_loss": zero,
        "mean_ablation_loss": mean,
        "loss_recovered": recovered(zero),
        "loss_recovered_mean_ablation": recovered(mean),
    }
