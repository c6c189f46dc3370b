"""The interface every sparse-autoencoder variant shares, and the parts they have in common.

A variant is one small subclass that states its sparsity rule (``activate``) and its training loss
(``training_output``); the trainer (``sae/trainer.py``) does everything else for all of them.
"""

from __future__ import annotations

import functools
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F_
from torch import nn

from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.sae.config import SAEConfig, SelectPrecision


class StepOutput(NamedTuple):
    """What one training forward pass hands back to the trainer."""

    loss: torch.Tensor  # scalar that the optimizer minimises
    fired_F: torch.Tensor  # bool: feature was active on some token of the batch
    l0: torch.Tensor  # detached scalar: mean active features per token
    terms: dict[str, torch.Tensor]  # detached named loss terms, for the log


class Entries(NamedTuple):
    """Some entries of a batch's [B, F] matrix (pre-activations or latents); the others are 0.

    Either all of them (``idx`` None, ``values`` [B, F]), or a list ordered by token: ``values`` and
    ``idx`` (the feature of each entry) [N], with ``offsets_B`` [B] marking where each token's
    entries start, as ``SparseAutoencoder.decode_sparse`` takes them."""

    values: torch.Tensor
    idx: torch.Tensor | None = None
    offsets_B: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        """B, the batch's token count."""
        return len(self.values) if self.idx is None else len(self.offsets_B)

    def at(self, per_feature_F: torch.Tensor) -> torch.Tensor:
        """``per_feature_F`` [F] at each entry, shaped to combine with ``values`` elementwise."""
        return per_feature_F if self.idx is None else per_feature_F[self.idx]

    def total(self, weights_F: torch.Tensor | None = None) -> torch.Tensor:
        """Σ over the entries of values (· weights_F[f] when given)."""
        return self.values.sum() if weights_F is None else (self.values * self.at(weights_F)).sum()

    def fired(self, n_features: int) -> torch.Tensor:
        """bool [F]: the feature has a nonzero value at some entry."""
        if self.idx is None:
            return (self.values != 0).any(dim=0)
        fired_F = torch.zeros(n_features, dtype=torch.bool, device=self.values.device)
        return fired_F.index_fill_(0, self.idx[self.values != 0], True)


class _SparseDecode(torch.autograd.Function):
    """x̂_BD = Σ_n vals_n W_dec[idx_n] over each token's entries, with a sparse backward:
    ∂/∂vals_n = ⟨grad_b, W_dec[idx_n]⟩ (a sampled product, ``exact_entries``) and ∂/∂W_dec = Sᵀ grad_BD
    for the sparse code S [B, F] (``feature_sums``). (``embedding_bag``'s own backward is slower on
    CPU: 2× for W_dec at F = 4,096, 1.5–2× for vals at F = 6,144, ``benchmarks/sae_step_levers.py``.)"""

    @staticmethod
    def forward(ctx, idx, vals, offsets_B, W_dec_FD):  # noqa: ANN001, ANN205 — autograd signature
        ctx.save_for_backward(idx, vals, offsets_B, W_dec_FD)
        return F_.embedding_bag(idx, W_dec_FD, offsets_B, mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, grad_BD):  # noqa: ANN001, ANN205
        idx, vals, offsets_B, W_dec_FD = ctx.saved_tensors
        F = W_dec_FD.shape[0]
        rows_N, idx_N = token_rows(idx, offsets_B, grad_BD.shape[0]), idx.flatten()
        grad_vals_N = exact_entries(grad_BD, W_dec_FD.T, W_dec_FD.new_zeros(F), rows_N, idx_N)
        return None, grad_vals_N.view(vals.shape), None, feature_sums(rows_N, idx_N, vals.flatten(), grad_BD, F)


class _SparseEncode(torch.autograd.Function):
    """vals_n = pre[b_n, f_n] = x̄_{b_n} · W_enc[:, f_n] + b_enc[f_n] (x̄ = x − b_dec) for the selected
    entries, read from the pre_BF already computed without gradient (or recomputed exactly, B·K·D
    work, when that pre_BF is a lower-precision one used only for ranking), with a sparse backward:
    for the sparse gradient G [B, F] of the selected entries, ∂/∂W_enc = x̄ᵀ G (``feature_sums``), ∂/∂b_enc = Σ_b G and
    ∂/∂b_dec = −W_enc ∂/∂b_enc — B·K·D work where backpropagating through the dense pre_BF costs a
    second B·F·D matmul (and through a folded bias b_enc − b_dec W_enc, a dense D×F outer product).
    With no entries named (rows_N None), every entry: pre_BF itself, and the same gradients with a
    dense G (one B·F·D matmul)."""

    @staticmethod
    def forward(ctx, pre_BF, rows_N, idx_N, x_BD, W_enc_DF, b_enc_F, b_dec_D):  # noqa: ANN001, ANN205 — autograd
        centred_BD = x_BD - b_dec_D
        ctx.dense = rows_N is None
        ctx.save_for_backward(*(() if ctx.dense else (rows_N, idx_N)), centred_BD, W_enc_DF)
        ctx.n_features = pre_BF.shape[1]
        if ctx.dense:  # every entry: pre_BF is the exact product (``pre_acts_at`` checks)
            return pre_BF.view_as(pre_BF)
        if pre_BF.dtype == W_enc_DF.dtype:
            return pre_BF[rows_N, idx_N]
        return exact_entries(centred_BD, W_enc_DF, b_enc_F, rows_N, idx_N)  # pre_BF only ranked them

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205 — grad is [N], or [B, F] when dense
        *entries, centred_BD, W_enc_DF = ctx.saved_tensors
        F = ctx.n_features
        if ctx.dense:
            grad_W_enc_DF = (grad.T @ centred_BD).T  # [F, D] storage, as W_enc's (class docstring)
            grad_b_enc_F = grad.sum(dim=0)
        else:
            rows_N, idx_N = entries
            grad_W_enc_DF = feature_sums(rows_N, idx_N, grad, centred_BD, F).T  # W_enc's feature-major layout
            grad_b_enc_F = torch.zeros(F, dtype=grad.dtype, device=grad.device).index_add_(0, idx_N, grad)
        return None, None, None, None, grad_W_enc_DF, grad_b_enc_F, -(W_enc_DF @ grad_b_enc_F)


def exact_entries(
    x_BD: torch.Tensor, W_enc_DF: torch.Tensor, bias_F: torch.Tensor, rows_N: torch.Tensor, idx_N: torch.Tensor
) -> torch.Tensor:
    """x_{b_n} · W_enc[:, f_n] + bias[f_n] for each (b_n, f_n) = (rows_N, idx_N), in full precision.

    One sampled product (SDDMM) over the N entries; its CPU kernel wants W_enc's columns
    contiguous (it would copy them anyway), and CSR wants the entries sorted by (row, column):
    they are sorted here unless they come so (TopK's and BatchTopK's selections do)."""
    B, F = x_BD.shape[0], W_enc_DF.shape[1]
    keys_N = rows_N * F + idx_N
    in_order = bool((keys_N[1:] >= keys_N[:-1]).all())
    order_N = None if in_order else argsort_keys(keys_N, B * F)
    sorted_idx_N = idx_N if order_N is None else idx_N[order_N]
    counts_B = torch.bincount(rows_N, minlength=B)
    crow_B1 = torch.cat([counts_B.new_zeros(1), counts_B.cumsum(0)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        pattern_BF = torch.sparse_csr_tensor(
            crow_B1, sorted_idx_N, bias_F[sorted_idx_N], (B, F), check_invariants=False
        )
    W_FD = W_enc_DF.T.contiguous()
    sorted_N = torch.sparse.sampled_addmm(pattern_BF, x_BD, W_FD.T).values()
    return sorted_N if order_N is None else torch.empty_like(sorted_N).index_copy_(0, order_N, sorted_N)


def argsort_keys(keys_N: torch.Tensor, bound: int) -> torch.Tensor:
    """The order that sorts the integer ``keys_N`` [N], each in [0, bound).

    As int32 where they fit: torch's CPU sort of int64 keys turns ~400× slower (0.17 → 70 ms for
    32k keys) when another process keeps the cores busy, float64 keys sort 2× (distinct keys) to 13×
    (many repeats) slower than int32 on an idle machine, and int32 keys are the fastest either way
    (``benchmarks/sae_step_levers.py``)."""
    return keys_N.int().argsort() if bound <= 2**31 else keys_N.double().argsort()


def feature_sums(
    rows_N: torch.Tensor, idx_N: torch.Tensor, weights_N: torch.Tensor, x_BD: torch.Tensor, F: int
) -> torch.Tensor:
    """Sᵀ x_BD [F, D] for the sparse S [B, F] whose entries (rows_N, idx_N) hold weights_N: each
    feature's weighted sum of the rows it is active on.

    One ``embedding_bag`` over the entries sorted by feature (a bag per feature): it writes each
    output row once, where a sparse [F, B]×[B, D] product zero-fills [F, D] first and then
    scatters into it, 1.5–5× slower on CPU at d = 1,536, F = 6,144 (``benchmarks/sae_step_levers.py``)."""
    order_N = argsort_keys(idx_N, F)
    counts_F = torch.bincount(idx_N, minlength=F)
    return F_.embedding_bag(
        rows_N[order_N], x_BD, torch.cumsum(counts_F, 0) - counts_F, mode="sum", per_sample_weights=weights_N[order_N]
    )


# Density of candidate entries up to which ``pre_acts_above`` lists them: benchmarks/sae_sparse_density.py
# at d = 1,536, F = 6,144, batch 1,024 measured the sparse step 1.7× the dense one at 1 %, 1.15× at 5 %,
# 0.9–1.15× at 8 % and 0.6–0.7× at 12 % (standard and jumprelu).
SPARSE_BELOW = 0.05
RANKING_SIGMAS = 8.0  # standard deviations of bf16 rounding error that ``ranking_error`` allows


@functools.cache
def bfloat16_matmul_is_fast(device: torch.device) -> bool:
    """Whether torch multiplies bf16 matrices natively (faster than fp32) on ``device``: CUDA GPUs
    with bf16, CPUs with AVX512-BF16 or AMX through oneDNN; elsewhere bf16 is emulated, slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        has_bf16_units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return torch.backends.mkldnn.is_available() and has_bf16_units
    return False


def selection_dtype(
    precision: SelectPrecision,
    device: torch.device,
    bf16_is_fast: Callable[[torch.device], bool] = bfloat16_matmul_is_fast,
) -> torch.dtype:
    """The dtype of the product that ranks latents: ``auto`` takes bf16 where ``bf16_is_fast``."""
    if precision == "bfloat16" or (precision == "auto" and bf16_is_fast(device)):
        return torch.bfloat16
    return torch.float32


def token_rows(idx: torch.Tensor, offsets_B: torch.Tensor | None, B: int) -> torch.Tensor:
    """The token (batch row) of each entry of ``idx``, flat [N]: idx is [B, K], or flat [N] with
    ``offsets_B`` [B] marking where each token's entries start."""
    if offsets_B is None:
        return torch.arange(B, device=idx.device).repeat_interleave(idx.shape[1])
    ends_B = torch.cat([offsets_B[1:], offsets_B.new_tensor([idx.numel()])])
    return torch.arange(B, device=idx.device).repeat_interleave(ends_B - offsets_B)


class SparseAutoencoder(nn.Module, ABC):
    """A dictionary of F directions in R^D with a sparse encoder.

    Math (OpenAI ``sparse_autoencoder`` notation, b_dec doubling as the pre-encoder bias):

        x̄         = x − b_dec
        pre       = x̄ W_enc + b_enc                 (pre-activations,  [B, F])
        latents   = σ(pre)                          (variant's sparsity rule, [B, F])
        x̂         = latents W_dec + b_dec           ([B, D])

    Parameters: ``W_enc`` [D, F], ``b_enc`` [F], ``W_dec`` [F, D] (row f = feature f's unit-norm
    dictionary vector), ``b_dec`` [D]. These names and shapes are SAELens's, so saving is a copy.
    W_enc is stored feature-major (a transposed view of an [F, D] tensor): the sparse backward
    produces its gradient in that layout and the exact re-read (``exact_entries``) reads its
    columns, so neither copies 4·D·F bytes per step; the dense matmuls take either layout.
    """

    variant: ClassVar[str]
    saelens_architecture: ClassVar[str]
    unit_norm_decoder: ClassVar[bool] = True  # the trainer keeps every W_dec row at unit norm
    bf16_is_fast: Callable[[torch.device], bool] = staticmethod(bfloat16_matmul_is_fast)  # tests swap it
    batch_world: World = SINGLE  # the ranks that each hold part of every training batch (trainer sets it)
    sparse_below: float = SPARSE_BELOW  # ``pre_acts_above``'s density cutoff (tests force either path)
    _last_dense = True  # whether ``pre_acts_above``'s last batch was dense (the first is taken to be)

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        D, F = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(F, D).T)  # [D, F] stored feature-major: see the class docstring
        self.b_enc = nn.Parameter(torch.zeros(F))
        self.W_dec = nn.Parameter(torch.empty(F, D))
        self.b_dec = nn.Parameter(torch.zeros(D))
        self.reset_parameters(torch.Generator().manual_seed(cfg.seed))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random unit decoder rows, encoder = decoder transpose (Gao et al. 2024; Anthropic's
        April 2024 update), so every feature starts out detecting its own direction."""
        W_dec_FD = torch.randn(self.W_dec.shape, generator=generator)
        self.W_dec.copy_(W_dec_FD / W_dec_FD.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.T)

    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """pre_BF = (x − b_dec) W_enc + b_enc, with b_dec folded into a [F] bias so that its
        gradient costs a vector product rather than a second [B, F]×[F, D] matmul."""
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x_BD, self.W_enc)

    @torch.no_grad()
    def ranking_pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """pre_BF without gradient, for choosing the active latents only: in bf16 when
        ``cfg.select_precision`` resolves to it (``selection_dtype``), a quarter of the fp32
        product's time on hardware with bf16 units; ``pre_acts_at`` then re-reads the chosen
        entries exactly, so only the choice near the k-th largest value can differ."""
        dtype = selection_dtype(self.cfg.select_precision, x_BD.device, self.bf16_is_fast)
        if dtype == self.W_enc.dtype:
            return self.pre_acts(x_BD)
        # x centred first: a pass over [B, D] rather than b_dec W_enc's pass over [D, F]
        return torch.addmm(self.b_enc.to(dtype), (x_BD - self.b_dec).to(dtype), self.W_enc.to(dtype))

    @torch.no_grad()
    def ranking_above(self, x_BD: torch.Tensor, floor_F: torch.Tensor) -> torch.Tensor:
        """A bf16 [B, F] whose entry (b, f) is > 0 wherever the exact pre_bf exceeds floor_f (up to a
        statistical bound on the rounding), for ``pre_acts_above``'s candidates: one bf16 product

            pre′ − floor_f + z · u √(2/3) · ‖x_b‖₄ ‖W_enc[:, f]‖₄ + 2u · |bias_f − floor_f|

        with unit roundoff u = 2⁻⁸. Rounding x and W_enc to bf16 perturbs each term x_d W_df by
        (ε + ε′) x_d W_df, |ε|, |ε′| ≤ u; taken as independent and uniform, their sum has standard
        deviation u √(2/3) ‖x_b ∘ W_f‖₂ ≤ u √(2/3) ‖x_b‖₄ ‖W_f‖₄ (Cauchy–Schwarz), of which the
        margin allows z = ``RANKING_SIGMAS``: a column of ‖x_b‖₄ in x and a row of ‖W_f‖₄ in W_enc
        add it inside the product. The last term covers rounding the folded bias (b_enc − b_dec
        W_enc − floor); rounding the output cannot change its sign. A statistical bound, not a
        worst case (that is ~√D times larger): benchmarks/sae_speed.py measures how often an exact
        entry above the floor is missed (``sel. diff``)."""
        u, (D, F) = 2.0**-8, self.W_enc.shape
        bias_F = self.b_enc - self.b_dec @ self.W_enc - floor_F
        margin_B = RANKING_SIGMAS * u * (2 / 3) ** 0.5 * (1 + 4 * u) * x_BD.norm(p=4, dim=1)
        x_BE = torch.cat([x_BD, margin_B[:, None]], dim=1).to(torch.bfloat16)
        W_FE = torch.empty(F, D + 1, dtype=torch.bfloat16, device=x_BD.device)  # feature-major, as W_enc
        W_FE[:, :D] = self.W_enc.T
        W_FE[:, D] = torch.linalg.vector_norm(self.W_enc.T.square(), dim=1).sqrt()  # ‖W_f‖₄
        return torch.addmm((bias_F + 2 * u * bias_F.abs()).to(torch.bfloat16), x_BE, W_FE.T)

    def pre_acts_above(self, x_BD: torch.Tensor, floor_F: torch.Tensor) -> Entries:
        """pre_BF, with gradient, at every entry that may exceed ``floor_F`` [F] (what the caller
        does with an entry at or below its floor must not depend on its value or carry gradient):
        listed (``pre_acts_at``) when at most ``sparse_below`` of the batch's B·F entries are
        candidates — then the decoder and the backward cost B·N·D, not B·F·D — else all of them.

        Candidates come from the exact product, or from a bf16 one (``ranking_above``) when
        ``select_precision`` is ``bfloat16``; their values are read exactly either way, so the
        caller's own test against the floor is exact. ``auto`` takes the exact product here: the
        bf16 candidates were measured equal in quality but no faster (benchmarks/sae_sparse_density.py:
        the bf16 product's saving goes to the exact re-read of the candidates and the margin's
        pass over W_enc). Which way the previous call went is remembered: after a dense batch the
        exact product is taken at once, rather than a bf16 one first that a dense batch would have
        to redo."""
        B, F = x_BD.shape[0], self.W_enc.shape[1]
        low = self.cfg.select_precision == "bfloat16" and self.W_enc.dtype != torch.bfloat16
        with torch.no_grad():
            if low and not self._last_dense:
                pre_BF = self.ranking_above(x_BD, floor_F)  # only ranks: ``pre_acts_at`` re-reads exactly
                candidate_BF = pre_BF > 0
            else:
                pre_BF = self.pre_acts(x_BD)
                candidate_BF = pre_BF > floor_F
        self._last_dense = bool(torch.count_nonzero(candidate_BF) > self.sparse_below * B * F)
        if self._last_dense:
            if pre_BF.dtype != self.W_enc.dtype:
                with torch.no_grad():
                    pre_BF = self.pre_acts(x_BD)
            return Entries(self.pre_acts_at(x_BD, pre_BF, None))
        rows_N, idx_N = candidate_BF.nonzero(as_tuple=True)  # row-major: ordered by token
        counts_B = torch.bincount(rows_N, minlength=B)
        offsets_B = torch.cumsum(counts_B, 0) - counts_B
        return Entries(self.pre_acts_at(x_BD, pre_BF, idx_N, offsets_B), idx_N, offsets_B)

    def pre_acts_at(
        self,
        x_BD: torch.Tensor,
        pre_BF: torch.Tensor,
        idx: torch.Tensor | None,
        offsets_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The entries ``idx`` of ``pre_BF`` (computed from x_BD under ``torch.no_grad``, e.g. by
        ``ranking_pre_acts``), shaped like idx, in full precision whatever pre_BF's dtype, with
        gradient to W_enc, b_enc and b_dec through the selected entries only.

        ``idx`` is [B, K] or flat [N] with ``offsets_B``, as for ``decode_sparse``. A variant that
        keeps a few latents per token picks them from a gradient-free pre_BF and reads their values
        here, so its backward pass skips the dense B×F×D product. ``idx`` None: every entry (pre_BF
        itself, which must then be exact), with the dense backward x̄ᵀ G."""
        args = (x_BD, self.W_enc, self.b_enc, self.encoder_b_dec())
        if idx is None:
            if pre_BF.dtype != self.W_enc.dtype:
                raise ValueError(f"pre_acts_at: every entry needs the exact pre-activations, got {pre_BF.dtype}")
            return _SparseEncode.apply(pre_BF, None, None, *args)
        rows_N = token_rows(idx, offsets_B, x_BD.shape[0])
        return _SparseEncode.apply(pre_BF, rows_N, idx.flatten(), *args).view(idx.shape)

    def encoder_b_dec(self) -> torch.Tensor:
        """b_dec as the sparse encoder reads it (``pre_acts_at``): b_dec itself, unless the
        dictionary is split across ranks, whose encoder gradients to b_dec must then be summed."""
        return self.b_dec

    @abstractmethod
    def activate(self, pre_BF: torch.Tensor) -> torch.Tensor:
        """The variant's sparsity rule σ at inference: pre_BF [B, F] → latents_BF [B, F]."""

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """x_BD [B, D] → latents_BF [B, F]."""
        return self.activate(self.pre_acts(x_BD))

    def decode(self, latents_BF: torch.Tensor) -> torch.Tensor:
        """latents_BF [B, F] → x̂_BD [B, D]."""
        return latents_BF @ self.W_dec + self.b_dec

    def decode_sparse(
        self, idx: torch.Tensor, vals: torch.Tensor, offsets_B: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Σ_f vals_f W_dec[f] per token, touching only the named rows (no b_dec).

        Either ``idx``/``vals`` are [B, K] (K latents per token), or they are flat [N] with
        ``offsets_B`` [B] marking where each token's entries start.
        """
        return _SparseDecode.apply(idx, vals, offsets_B, self.W_dec)

    def decode_entries(self, latents: Entries) -> torch.Tensor:
        """x̂_BD = latents W_dec + b_dec, over the listed entries only when they are a list."""
        if latents.idx is None:
            return self.decode(latents.values)
        return self.decode_sparse(latents.idx, latents.values, latents.offsets_B) + self.b_dec

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        """x_BD [B, D] → x̂_BD [B, D]."""
        return self.decode(self.encode(x_BD))

    @abstractmethod
    def training_output(self, x_BD: torch.Tensor, dead_F: torch.Tensor, sparsity_scale: float) -> StepOutput:
        """Loss on one batch. ``dead_F`` [F] bool marks features that have not fired for the
        dead window; ``sparsity_scale`` ∈ [0, 1] is the sparsity-penalty warm-up factor."""

    @torch.no_grad()
    def rescale_units(self, scale: float) -> None:
        """Turn an SAE trained on ``scale·x`` into the same SAE on ``x``: every quantity measured
        in input units (biases, thresholds) is divided by ``scale``; latents shrink by ``scale``,
        directions (and unit-norm decoder rows) are unchanged."""
        self.b_enc /= scale
        self.b_dec /= scale

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """The state SAELens expects for ``saelens_architecture`` (its names and layouts)."""
        return {name: getattr(self, name).detach() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}

    def saelens_fields(self) -> dict[str, object]:
        """Architecture-specific ``cfg.json`` fields."""
        return {}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of ``saelens_tensors`` (shapes already checked by the loader)."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, name).copy_(tensors[name])


def mse(recon_BD: torch.Tensor, x_BD: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element (the 2023 paper's reconstruction term)."""
    return (recon_BD - x_BD).pow(2).mean()


def check_activations(x_BD: torch.Tensor, d_in: int, what: str) -> None:
    """Raise a UserError unless ``x_BD`` is a finite [B, d_in] batch."""
    if x_BD.ndim != 2 or x_BD.shape[1] != d_in:
        raise UserError(f"{what}: expected activations of shape [batch, {d_in}], got {list(x_BD.shape)}")
    # a finite sum implies finite entries (one pass); only a non-finite one needs the element-wise test
    if not torch.isfinite(x_BD.sum()) and not torch.isfinite(x_BD).all():
        raise UserError(f"{what}: activations contain NaN or inf")
