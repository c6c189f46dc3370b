"""SAEBench compatibility: its ``core`` eval's metrics under its names and JSON structure, and its
custom-SAE interface, so that SAEBench's other evals run on our SAEs.

``core_eval`` follows SAEBench 0.6.0's ``sae_bench/evals/core/main.py`` formula by formula, over
our run's held-out tokens instead of a streamed dataset (no BOS is prepended: our windows are
corpus windows). Sparsity and variance are measured on batches of ``batch_size_prompts`` windows
of the activation store, as SAEBench batches prompts; for N tokens x with reconstructions x̂:

    l0, l1            mean over tokens of #{f: a_f ≠ 0} and Σ_f a_f
    l2_norm_in/out    mean ‖x‖, mean ‖x̂‖;  l2_ratio = mean ‖x̂‖/‖x‖ (‖x‖ < 1e-4 counted as 1)
    relative_reconstruction_bias = mean ‖x̂‖² / mean ⟨x, x̂⟩           (Rajamanoharan et al. 2024, eq. 10)
    mse               mean over tokens of ‖x − x̂‖² / n_b, n_b the tokens in the token's batch
                      (SAEBench's definition: it depends on the batch size, so compare like with like)
    explained_variance = 1 − mean ‖x − x̂‖² / (mean ‖x‖² − (mean_{d} mean x_d²)²)   (SAEBench's formula)
    explained_variance_legacy = mean over tokens of 1 − ‖x − x̂‖² / ‖x − mean_batch x‖²
    cossim            mean cos(x, x̂)
    feature_density   fraction of tokens with a_f > 0;  frac_alive = fraction of features with density > 0
    consistent_activation_heuristic = tokens a_f > 0 / prompts with some a_f > 0

and from the LM with the hook's activations left alone, replaced by x̂, or zeroed (per token):

    ce_loss_score = (CE_zero − CE_sae) / (CE_zero − CE_clean)
    kl_div_score  = (KL_zero − KL_sae) / KL_zero,   KL(p_clean ‖ p_·) per token

The ``fvu`` (1 − R² against the mean) and ``loss_recovered`` in ``run.json`` are our own measures;
the numbers here are SAEBench's, for comparison with its published results.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import torch
import torch.nn.functional as F_
from torch import nn

from monosemantic.sae.base import SparseAutoencoder

SAEBENCH_VERSION = "0.6.0"  # the release whose core eval output we write
EVAL_TYPE_ID = "core"


@dataclasses.dataclass
class CoreEvalConfig:
    """SAEBench's ``CoreEvalConfig`` fields, with the values this evaluation used."""

    model_name: str
    dataset: str
    context_size: int
    llm_dtype: str = "float32"
    batch_size_prompts: int = 16
    n_eval_reconstruction_batches: int = 10
    n_eval_sparsity_variance_batches: int = 1
    compute_kl: bool = True
    compute_ce_loss: bool = True
    compute_l2_norms: bool = True
    compute_sparsity_metrics: bool = True
    compute_variance_metrics: bool = True
    compute_featurewise_density_statistics: bool = True
    compute_featurewise_weight_based_metrics: bool = True
    exclude_special_tokens_from_reconstruction: bool = False
    verbose: bool = False


def _max_other_cosine(vectors_FD: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per row, the largest cosine similarity with any other row, [F] (chunks of rows: no F×F matrix)."""
    unit_FD = F_.normalize(vectors_FD.double(), dim=1)
    out_F = torch.empty(len(unit_FD), dtype=torch.float64)
    for start in range(0, len(unit_FD), chunk):
        sims_CF = unit_FD[start : start + chunk] @ unit_FD.T
        rows_C = torch.arange(len(sims_CF))
        sims_CF[rows_C, rows_C + start] = -torch.inf
        out_F[start : start + chunk] = sims_CF.max(dim=1).values.cpu()
    return out_F


def weight_metrics(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """SAEBench's feature-wise weight metrics, each [F]."""
    W_enc_FD, W_dec_FD = sae.W_enc.detach().T.double(), sae.W_dec.detach().double()
    return {
        "encoder_bias": sae.b_enc.detach().double(),
        "encoder_norm": W_enc_FD.norm(dim=1),
        "encoder_decoder_cosine_sim": F_.cosine_similarity(W_enc_FD, W_dec_FD, dim=1),
        "max_encoder_cosine_sim": _max_other_cosine(W_enc_FD),
        "max_decoder_cosine_sim": _max_other_cosine(W_dec_FD),
    }


@torch.no_grad()
def sparsity_and_variance(sae: SparseAutoencoder, batches_BTD) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The sparsity, shrinkage and reconstruction metrics over ``batches_BTD`` (each [prompts, T, D])."""
    names = ("l0", "l1", "l2_norm_in", "l2_norm_out", "l2_ratio", "mse", "ev_legacy", "cossim")
    sums: dict[str, float] = dict.fromkeys((*names, "sq_in", "resid", "xhat_sq", "x_dot_xhat"), 0.0)
    mean_sq_D, n_tokens, n_batches = None, 0, 0
    fires_F = prompts_F = None
    for x_BTD in batches_BTD:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D).to(sae.W_dec.device, torch.float32)
        acts_NF = sae.encode(x_ND)
        x_hat_ND = sae.decode(acts_NF)
        x_ND, x_hat_ND = x_ND.double(), x_hat_ND.double()
        n = B * T
        norm_in_N, norm_out_N = x_ND.norm(dim=1), x_hat_ND.norm(dim=1)
        resid_N = (x_ND - x_hat_ND).pow(2).sum(dim=1)
        centred_N = (x_ND - x_ND.mean(dim=0)).pow(2).sum(dim=1)
        sums["l0"] += float((acts_NF != 0).sum())
        sums["l1"] += float(acts_NF.double().sum())
        sums["l2_norm_in"] += float(norm_in_N.sum())
        sums["l2_norm_out"] += float(norm_out_N.sum())
        sums["l2_ratio"] += float((norm_out_N / torch.where(norm_in_N.abs() < 1e-4, 1.0, norm_in_N)).sum())
        sums["xhat_sq"] += float(norm_out_N.pow(2).sum())
        sums["x_dot_xhat"] += float((x_ND * x_hat_ND).sum())
        sums["mse"] += float(resid_N.sum()) / n
        sums["ev_legacy"] += float((1 - resid_N / centred_N).sum())
        sums["cossim"] += float(F_.cosine_similarity(x_ND, x_hat_ND, dim=1).sum())
        sums["sq_in"] += float(x_ND.pow(2).sum(dim=1).mean())  # per batch, averaged over batches below
        sums["resid"] += float(resid_N.mean())
        batch_mean_sq_D = x_ND.pow(2).mean(dim=0)
        mean_sq_D = batch_mean_sq_D if mean_sq_D is None else mean_sq_D + batch_mean_sq_D
        fired_BTF = (acts_NF > 0).reshape(B, T, -1)
        batch_fires_F, batch_prompts_F = fired_BTF.sum(dim=(0, 1)).double(), fired_BTF.any(dim=1).sum(dim=0).double()
        fires_F = batch_fires_F if fires_F is None else fires_F + batch_fires_F
        prompts_F = batch_prompts_F if prompts_F is None else prompts_F + batch_prompts_F
        n_tokens += n
        n_batches += 1
    total_variance = sums["sq_in"] / n_batches - float((mean_sq_D / n_batches).mean()) ** 2
    metrics = {
        "l0": sums["l0"] / n_tokens,
        "l1": sums["l1"] / n_tokens,
        "l2_norm_in": sums["l2_norm_in"] / n_tokens,
        "l2_norm_out": sums["l2_norm_out"] / n_tokens,
        "l2_ratio": sums["l2_ratio"] / n_tokens,
        "relative_reconstruction_bias": sums["xhat_sq"] / sums["x_dot_xhat"],
        "mse": sums["mse"] / n_tokens,
        "explained_variance": 1 - (sums["resid"] / n_batches) / total_variance,
        "explained_variance_legacy": sums["ev_legacy"] / n_tokens,
        "cossim": sums["cossim"] / n_tokens,
        "n_tokens": n_tokens,
    }
    features = {"feature_density": fires_F / n_tokens, "consistent_activation_heuristic": fires_F / prompts_F}
    return metrics, features


@torch.no_grad()
def downstream(sae: SparseAutoencoder, model, hook_name: str, tokens_BT: torch.Tensor, batch: int) -> dict[str, float]:
    """CE loss and KL divergence with the hook's activations clean, reconstructed and zeroed."""
    sums = dict.fromkeys(("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero"), 0.0)
    n_ce = n_kl = 0

    def reconstruct(acts, hook=None):
        return sae.decode(sae.encode(acts.flatten(0, -2))).reshape(acts.shape).to(acts.dtype)

    def zero(acts, hook=None):
        return torch.zeros_like(acts)

    for start in range(0, len(tokens_BT), batch):
        toks = tokens_BT[start : start + batch]
        clean_logits, ce_clean = model(toks, return_type="both", loss_per_token=True)
        log_p = clean_logits.log_softmax(-1)
        sums["ce_clean"] += float(ce_clean.sum())
        for name, hook in (("sae", reconstruct), ("zero", zero)):
            logits, ce = model.run_with_hooks(
                toks, return_type="both", loss_per_token=True, fwd_hooks=[(hook_name, hook)]
            )
            sums[f"ce_{name}"] += float(ce.sum())
            sums[f"kl_{name}"] += float((log_p.exp() * (log_p - logits.log_softmax(-1))).sum())
        n_ce += ce_clean.numel()
        n_kl += toks.numel()
    ce = {k: sums[k] / n_ce for k in ("ce_clean", "ce_sae", "ce_zero")}
    kl = {k: sums[k] / n_kl for k in ("kl_sae", "kl_zero")}
    return {
        "kl_div_score": (kl["kl_zero"] - kl["kl_sae"]) / kl["kl_zero"],
        "kl_div_with_ablation": kl["kl_zero"],
        "kl_div_with_sae": kl["kl_sae"],
        "ce_loss_score": (ce["ce_zero"] - ce["ce_sae"]) / (ce["ce_zero"] - ce["ce_clean"]),
        "ce_loss_with_ablation": ce["ce_zero"],
        "ce_loss_with_sae": ce["ce_sae"],
        "ce_loss_without_sae": ce["ce_clean"],
    }


def misc_metrics(density_F: torch.Tensor, weights: dict[str, torch.Tensor]) -> dict[str, float]:
    total = float(density_F.sum())

    def share_over(level: float) -> float:
        return float(density_F[density_F > level].sum()) / total if total > 0 else 0.0

    return {
        "freq_over_1_percent": float((density_F > 0.01).double().mean()),
        "freq_over_10_percent": float((density_F > 0.1).double().mean()),
        "normalized_freq_over_1_percent": share_over(0.01),
        "normalized_freq_over_10_percent": share_over(0.1),
        "average_max_encoder_cosine_sim": float(weights["max_encoder_cosine_sim"].mean()),
        "average_max_decoder_cosine_sim": float(weights["max_decoder_cosine_sim"].mean()),
        "frac_alive": float((density_F > 0).double().mean()),
    }


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None  # JSON has no NaN


def core_eval(
    sae: SparseAutoencoder,
    model,
    hook_name: str,
    acts_BTD,
    tokens_BT: torch.Tensor,
    cfg: CoreEvalConfig,
    sae_cfg_dict: dict[str, Any],
    sae_id: str,
    release: str,
) -> dict[str, Any]:
    """SAEBench's ``CoreEvalOutput`` for ``sae`` as a JSON-ready dict: sparsity and variance over
    ``acts_BTD`` (batches of [prompts, T, D] activations at ``hook_name``), CE and KL from
    ``model`` on ``tokens_BT`` (in batches of ``cfg.batch_size_prompts``)."""
    sparsity, features = sparsity_and_variance(sae, acts_BTD)
    n_sv_tokens = sparsity.pop("n_tokens")
    recon = downstream(sae, model, hook_name, tokens_BT, cfg.batch_size_prompts)
    weights = weight_metrics(sae)
    per_feature = {**features, **weights}
    details = [
        {"index": f, **{name: _finite(float(values[f])) for name, values in per_feature.items()}}
        for f in range(sae.cfg.d_sae)
    ]
    metrics = {
        "model_behavior_preservation": {
            k: recon[k] for k in ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae")
        },
        "model_performance_preservation": {
            k: recon[k] for k in ("ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae")
        },
        "reconstruction_quality": {
            k: sparsity[k] for k in ("explained_variance", "explained_variance_legacy", "mse", "cossim")
        },
        "shrinkage": {
            k: sparsity[k] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias")
        },
        "sparsity": {"l0": sparsity["l0"], "l1": sparsity["l1"]},
        "token_stats": {
            "total_tokens_eval_reconstruction": int(tokens_BT.numel()),
            "total_tokens_eval_sparsity_variance": n_sv_tokens,
        },
        "misc_metrics": misc_metrics(features["feature_density"], weights),
    }
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": dataclasses.asdict(cfg),
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        "eval_result_unstructured": None,
        "sae_bench_commit_hash": f"monosemantic (SAEBench {SAEBENCH_VERSION} core formulas)",
        "sae_lens_id": sae_id,
        "sae_lens_release_id": release,
        "sae_lens_version": None,
        "sae_cfg_dict": sae_cfg_dict,
    }


@dataclasses.dataclass
class SAEBenchConfig:
    """The fields of SAEBench's ``CustomSAEConfig`` (its core eval reads several blank ones)."""

    model_name: str
    d_in: int
    d_sae: int
    hook_layer: int
    hook_name: str
    context_size: int | None = None
    hook_head_index: int | None = None
    architecture: str = ""
    apply_b_dec_to_input: bool = True
    finetuning_scaling_factor: bool = False
    activation_fn_str: str = ""
    activation_fn_kwargs: dict = dataclasses.field(default_factory=dict)
    prepend_bos: bool = True
    normalize_activations: str = "none"
    dtype: str = "float32"
    device: str = "cpu"
    model_from_pretrained_kwargs: dict = dataclasses.field(default_factory=dict)
    dataset_path: str = ""
    dataset_trust_remote_code: bool = True
    seqpos_slice: tuple = (None,)
    training_tokens: int = -100_000
    sae_lens_training_version: str | None = None
    neuronpedia_id: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SAEBenchSAE(nn.Module):
    """One of our SAEs behind SAEBench's custom-SAE interface: ``encode``/``decode``/``forward`` on
    activations of any leading shape [..., D], ``W_enc`` [D, F], ``W_dec`` [F, D] (unit rows),
    ``b_enc``, ``b_dec`` (the wrapped SAE's own parameters), ``dtype``, ``device`` and ``cfg``."""

    def __init__(self, sae: SparseAutoencoder, model_name: str, hook_name: str, context_size: int | None = None):
        super().__init__()
        self.sae = sae
        layer = hook_name.split(".")[1] if hook_name.startswith("blocks.") else "0"
        self.cfg = SAEBenchConfig(
            model_name=model_name,
            d_in=sae.cfg.d_in,
            d_sae=sae.cfg.d_sae,
            hook_layer=int(layer),
            hook_name=hook_name,
            context_size=context_size,
            architecture=sae.saelens_architecture,
            activation_fn_str=sae.variant,
        )
        self.dtype, self.device = sae.W_dec.dtype, sae.W_dec.device
        self.cfg.dtype, self.cfg.device = str(self.dtype).removeprefix("torch."), str(self.device)

    @property
    def W_enc(self) -> nn.Parameter:
        return self.sae.W_enc

    @property
    def W_dec(self) -> nn.Parameter:
        return self.sae.W_dec

    @property
    def b_enc(self) -> nn.Parameter:
        return self.sae.b_enc

    @property
    def b_dec(self) -> nn.Parameter:
        return self.sae.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] → latents [..., F]."""
        return self.sae.encode(x.reshape(-1, x.shape[-1]).to(self.dtype)).reshape(*x.shape[:-1], -1)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """latents [..., F] → x̂ [..., D]."""
        return self.sae.decode(feature_acts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def to(self, *args, **kwargs) -> SAEBenchSAE:
        super().to(*args, **kwargs)
        self.dtype, self.device = self.sae.W_dec.dtype, self.sae.W_dec.device
        self.cfg.dtype, self.cfg.device = str(self.dtype).removeprefix("torch."), str(self.device)
        return self
