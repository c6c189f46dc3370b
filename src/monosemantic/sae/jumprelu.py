"""JumpReLU sparse autoencoder trained on L0 with straight-through estimators.

Rajamanoharan et al. 2024, *Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse
Autoencoders* (arXiv 2407.14435). Per-feature thresholds θ = exp(log θ); the loss penalises the L0
of the latents directly. The step function has zero gradient almost everywhere, so the paper
gives θ a pseudo-derivative through a rectangle kernel of width ε (the bandwidth); the encoder
weights get gradient only from the reconstruction, through the kept pre-activations. Anthropic's
2025 setup (a tanh penalty, the pseudo-derivative passed to the pre-activations too, a loss that
lifts dead features) is available as options (``JumpReLUSAE``). Training is
sparse once few latents are active (``SparseAutoencoder.pre_acts_above``): only the entries above
θ − ε/2 (the active ones and those in the kernel's window) are read with gradient and decoded,
the others' latents and gradients being 0; with ``select_precision=bfloat16`` those entries are
chosen from a bf16 product and then read exactly, so the step test stays exact. Our
default ε and initial θ differ from the paper's 0.001 so that short runs work; ``sae/config.py``
says why and what we measured.
"""

from __future__ import annotations

from typing import Any

import torch

from monosemantic.sae.base import SparseAutoencoder, StepOutput, mse


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """y = z · H(z − θ); ∂y/∂z = H(z − θ) (+ (θ/ε) K((z − θ)/ε) when the estimator reaches the
    input); ∂y/∂θ ≈ −(θ/ε) K((z − θ)/ε). z is [B, F] with θ [F], or a list of entries [N] with each
    one's θ [N]."""

    @staticmethod
    def forward(ctx: Any, pre_BF: torch.Tensor, threshold_F: torch.Tensor, eps: float, to_input: bool) -> torch.Tensor:
        ctx.save_for_backward(pre_BF, threshold_F)
        ctx.eps, ctx.to_input = eps, to_input
        return pre_BF * (pre_BF > threshold_F)

    @staticmethod
    def backward(ctx: Any, grad_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        pre_BF, threshold_F = ctx.saved_tensors
        ste_BF = threshold_F / ctx.eps * _rectangle((pre_BF - threshold_F) / ctx.eps) * grad_BF
        grad_pre_BF = (pre_BF > threshold_F) * grad_BF
        return grad_pre_BF + ste_BF if ctx.to_input else grad_pre_BF, -ste_BF.sum_to_size(threshold_F.shape), None, None


class _Step(torch.autograd.Function):
    """y = H(z − θ); ∂y/∂z = 0 (or (1/ε) K((z − θ)/ε) when the estimator reaches the input);
    ∂y/∂θ ≈ −(1/ε) K((z − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre_BF: torch.Tensor, threshold_F: torch.Tensor, eps: float, to_input: bool) -> torch.Tensor:
        ctx.save_for_backward(pre_BF, threshold_F)
        ctx.eps, ctx.to_input = eps, to_input
        return (pre_BF > threshold_F).to(pre_BF.dtype)

    @staticmethod
    def backward(ctx: Any, grad_BF: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None, None]:
        pre_BF, threshold_F = ctx.saved_tensors
        ste_BF = _rectangle((pre_BF - threshold_F) / ctx.eps) * grad_BF / ctx.eps
        return ste_BF if ctx.to_input else None, -ste_BF.sum_to_size(threshold_F.shape), None, None


class JumpReLUSAE(SparseAutoencoder):
    """σ(pre) = pre · H(pre − θ) with θ_F = exp(log_threshold_F) > 0 per feature.

    loss = MSE(x̂, x) + λ · Σ_f H(pre_f − θ_f)   (``jumprelu_sparsity`` step: the L0, as in the paper)
    loss = MSE(x̂, x) + λ · Σ_f tanh(c · σ(pre_f))   (tanh: Anthropic's 2025 penalty, c the
    ``jumprelu_tanh_scale``; their ‖W_dec,f‖ factor is 1 here, the decoder rows being unit-norm)
    (means over the batch; λ warmed up by the trainer). The L0 penalty reaches only θ, through the
    estimator; tanh also shrinks the kept values, as a saturating L1. With ``jumprelu_ste_to_input``
    the estimator's gradient reaches the pre-activations, and so the encoder, too. Anthropic's setup
    takes both, and adds μ · Σ_{f dead} ReLU(θ_f − pre_f) (μ = ``jumprelu_pre_act_coeff``): a dead
    feature, which no other term reaches, has its pre-activations pulled up to its threshold.
    """

    variant = "jumprelu"
    saelens_architecture = "jumprelu"

    def __init__(self, cfg):
        super().__init__(cfg)
        init = torch.full((cfg.d_sae,), float(cfg.jumprelu_init_threshold))
        self.log_threshold = torch.nn.Parameter(init.log())

    def activate(self, pre_BF: torch.Tensor) -> torch.Tensor:
        return pre_BF * (pre_BF > self.log_threshold.exp())

    def training_output(self, x_BD: torch.Tensor, dead_F: torch.Tensor, sparsity_scale: float) -> StepOutput:
        threshold_F = self.log_threshold.exp()
        eps = self.cfg.jumprelu_bandwidth
        # entries at or below θ − ε/2 are 0 and outside the kernel: no value, no gradient
        pre = self.pre_acts_above(x_BD, (threshold_F - eps / 2).detach())
        threshold, to_input = pre.at(threshold_F), self.cfg.jumprelu_ste_to_input
        latents = pre._replace(values=_JumpReLU.apply(pre.values, threshold, eps, to_input))
        recon_BD = self.decode_entries(latents)
        mse_loss = mse(recon_BD, x_BD)
        active = pre._replace(values=_Step.apply(pre.values, threshold, eps, to_input))
        l0 = active.total() / x_BD.shape[0]
        penalty, terms = l0, {"mse": mse_loss.detach(), "l0": l0.detach()}
        if self.cfg.jumprelu_sparsity == "tanh":
            penalty = torch.tanh(self.cfg.jumprelu_tanh_scale * latents.values).sum() / x_BD.shape[0]
            terms["tanh"] = penalty.detach()
        loss = mse_loss + sparsity_scale * self.cfg.l0_coeff * penalty
        if self.cfg.jumprelu_pre_act_coeff:
            dead_G = dead_F.nonzero().squeeze(1)  # none dead: an empty product, and the term is 0
            W_enc_DG = self.W_enc[:, dead_G]
            pre_BG = torch.addmm(self.b_enc[dead_G] - self.b_dec @ W_enc_DG, x_BD, W_enc_DG)
            below = (threshold_F[dead_G] - pre_BG).relu().sum() / x_BD.shape[0]
            loss = loss + self.cfg.jumprelu_pre_act_coeff * below
            terms["pre_act"] = below.detach()
        return StepOutput(
            loss=loss,
            fired_F=active.fired(self.cfg.d_sae),
            l0=l0.detach(),
            terms=terms,
        )

    @torch.no_grad()
    def rescale_units(self, scale: float) -> None:
        super().rescale_units(scale)
        self.log_threshold -= torch.log(torch.tensor(scale))

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(), "threshold": self.log_threshold.detach().exp()}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_saelens_tensors(tensors)
        # SAELens computes ReLU(pre)·H(pre − θ): θ ≤ 0 acts as 0, i.e. log θ = −inf, a plain ReLU.
        self.log_threshold.copy_(tensors["threshold"].clamp_min(0).log())
