"""The one typed config for training a sparse autoencoder of any variant.

Fields left at ``None`` are filled with the variant's default when the config is validated, so a
validated config always names every number the run used (and is what gets saved and hashed).
Defaults and their sources:

- ``lr`` 1e-4 for ``standard`` and ``standard2024`` (Bricken et al. 2023 — the value named in the
  brief; the paper's text leaves it unconfirmed); 2e-4 for ``topk``/``batchtopk`` (Gao et al.
  2024 use 2e-4 at 2^14 latents, scaled as 1/sqrt(F/2^14) for larger ones — our F ≤ 2^14, so the
  unscaled value); 7e-5 for ``jumprelu`` (Gemma Scope's Adam learning rate, as we read Lieberum et al. 2024).
- ``aux_coeff`` 1/32 and ``aux_k`` = d_in/2 (Gao et al. 2024: α = 1/32, k_aux "a power of two close
  to d_model/2").
- ``resample_at`` (0.1, 0.2, 0.3, 0.4) of the run for ``standard``: Bricken et al. resample at
  25k/50k/75k/100k of 1M steps, i.e. four evenly spaced early resamplings; we stretch them ×4 so a
  short run still gives each one room to settle. ``dead_window`` 0.05 of the run = half the spacing
  between resamplings, as their 12,500-step window is half of their 25k spacing.
- ``threshold_ema`` 0.1 (BatchTopK): θ should describe the final weights; at rate 0.01 a 200-step
  run still carries 13 % of its first batches' threshold (measured: held-out L0 3.4 for k = 8;
  at 0.1 it is 8.3).
- ``resample_inputs`` 65,536: the paper scores 819,200 inputs (100 batches of 8,192); we score
  fewer so resampling stays cheap next to a short run.
- ``jumprelu_bandwidth`` 0.1 and ``jumprelu_init_threshold`` 1.0 — not the paper's. Rajamanoharan
  et al. 2024 use ε = θ₀ = 0.001 on activations normalised to unit mean squared norm (0.001·√d_in
  in our units) and train ~100k+ steps; log θ moves at most ~lr per Adam step, so a run of a few
  hundred steps never lifts θ from there (measured, D=64/F=512/300 steps: L0 stays at 100). With
  pre-activations of RMS ≈ 1 under our normalisation, θ₀ = 1 and ε = 0.1 reach L0 ≈ 6 (true 5)
  and MMCS 0.967 in the same run — but θ still only moves 1.0 → 1.1 there, so in short runs θ₀
  sets the sparsity more than ``l0_coeff`` does. Pass the paper's values explicitly for long runs.
- ``jumprelu_sparsity`` "step" (the paper's L0 penalty, which reaches only θ) and
  ``jumprelu_ste_to_input`` False (the estimator's gradient reaches θ only): Rajamanoharan et al.
  2024. "tanh" (λ Σ_f tanh(c · latent_f), c = ``jumprelu_tanh_scale`` 4) and True are Anthropic's
  2025 JumpReLU setup, with the values SAELens (≥ 6.11) uses for it; its third part, the dead
  features' pre-activation loss (``jumprelu_pre_act_coeff``), is 0 (off) unless set. On the demo's
  LM (4,096 features, 1M samples, lr 1e-3), tanh + estimator at λ 1e-3 agreed more across models
  than the L0 penalty (0.38 against 0.28) with no dead features; at λ 3e-3 a third died, and the
  pre-activation loss made them rare rather than live (README, "JumpReLU at the demo's budget").
- ``sparsity_warmup`` 0.1 of the run for ``jumprelu`` (the JumpReLU/Gemma Scope recipe warms λ up
  from 0 over the first 10k steps), 0.05 for ``standard2024`` (Anthropic's April 2024 update), 0.3
  for ``standard`` and 0 otherwise. The 2023 paper has no warm-up; ours overlaps the resamplings
  (10–40 % of the run), so resampled features settle before λ is whole. Measured on the demo's
  LM activations (F = 4,096, 1M samples, encoder at 0.1 · W_decᵀ): warm-up 0 / 0.05 / 0.1 / 0.3 /
  0.5 gave FVU 0.291 / 0.265 / 0.249 / 0.226 / 0.223, loss recovered 66.9 / 67.9 / 68.9 / 76.1 /
  76.3 %, dead 19 / 32 / 27 / 5.9 / 1.6 %; 0.3 again with seed 1: 0.226, 74.5 %, 5.7 % dead.
  ``grad_clip`` 1 for ``standard2024`` (the update's), none otherwise.
- ``decay_frac`` 0.2: linear learning-rate decay to 0 over the last 20 % of training (Anthropic's
  April 2024 update). The 2023 paper used a constant rate; set 0 to reproduce that.
- ``select_precision`` auto: TopK and BatchTopK rank latents by a bf16 product where the hardware
  has bf16 units (``sae/base.py``), then read the kept values exactly. Measured by
  benchmarks/sae_speed.py on our LM's activations (d = 1,536, F = 6,144, 8k samples): FVU within
  0.2 % of the fp32 ranking at the same L0, 0.5–0.9 % of kept latents differ; training 1.1–1.4×
  faster at d ≥ 1,536, no faster at d = 512. The ReLU family (standard, standard2024, jumprelu) keeps
  the exact product under ``auto``: its bf16 candidates (``SparseAutoencoder.ranking_above``, taken
  with ``bfloat16``) trained to the same FVU and L0 but no faster (benchmarks/sae_sparse_density.py).
- ``l1_coeff`` 0.01, chosen for d_in = 512 on synthetic data (benchmarks/sae_synthetic.py: 8192
  true features, 16 active, F = 2048, 300 steps: λ = 0.005/0.0125/0.025 give L0 149/24/14); the
  right λ scales roughly as 1/d_in (0.1 suits d_in = 64). The paper's λ = 0.004 was for
  unnormalised activations. ``k`` 32 and ``l0_coeff`` 3e-3 are starting points, not tuned values.
- ``encoder_init_scale`` 0.1 for ``standard`` and ``standard2024``: W_enc starts as 0.1 · W_decᵀ
  (``sae/standard.py``). Measured on the demo's LM activations (F = 4,096, 1M samples, λ 0.01,
  lr 1e-3): for ``standard``, scale 1 left nearly every feature faint (FVU 0.54, loss recovered
  14 %), 0.5 most (0.43, 39 %), 0.1 gave 0.29 and 67–69 % over two seeds (0.25: 0.32, 62 %;
  0.03: 0.29, 69 %, with 76 % and 48 % dead against 19–22 % at 0.1); for ``standard2024``, 1 gave
  FVU 0.46 and 30 %, 0.1 gave 0.24 and 70 % (README, "The 2023 recipe at the demo's budget").
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

Variant = Literal["standard", "standard2024", "topk", "batchtopk", "jumprelu"]
SelectPrecision = Literal["auto", "float32", "bfloat16"]

_VARIANT_FIELDS: dict[str, tuple[str, ...]] = {
    "standard": ("l1_coeff", "encoder_init_scale"),
    "standard2024": ("l1_coeff", "encoder_init_scale"),
    "topk": ("k", "aux_k", "aux_coeff"),
    "batchtopk": ("k", "aux_k", "aux_coeff", "threshold_ema"),
    "jumprelu": (
        "l0_coeff",
        "jumprelu_bandwidth",
        "jumprelu_init_threshold",
        "jumprelu_sparsity",
        "jumprelu_tanh_scale",
        "jumprelu_ste_to_input",
        "jumprelu_pre_act_coeff",
    ),
}
_DEFAULT_LR = {"standard": 1e-4, "standard2024": 1e-4, "topk": 2e-4, "batchtopk": 2e-4, "jumprelu": 7e-5}
_DEFAULT_SPARSITY_WARMUP = {"jumprelu": 0.1, "standard2024": 0.05, "standard": 0.3}


class SAEParams(BaseModel):
    """The fields of ``SAEConfig`` that a sweep leaves to the user (``sae.params`` in a run config):
    everything but the variant, the sizes, the sample budget, the seed and the device."""

    model_config = ConfigDict(extra="forbid")

    lr: float | None = Field(None, gt=0)
    warmup_frac: float = Field(0.01, ge=0, lt=1, description="linear LR warm-up, fraction of run")
    decay_frac: float = Field(0.2, ge=0, le=1, description="linear LR decay to 0, fraction of run")
    sparsity_warmup: float | None = Field(None, ge=0, le=1, description="λ warm-up, fraction of run")
    # standard (Bricken et al. 2023)
    l1_coeff: float | None = Field(None, description="λ on Σ_f latents_f (MSE is a mean over D)")
    encoder_init_scale: float | None = Field(None, gt=0, description="W_enc starts as this × W_decᵀ")
    # topk / batchtopk (Gao et al. 2024; Bussmann et al. 2024)
    k: int | None = Field(None, gt=0, description="active latents per token (batchtopk: on average)")
    aux_k: int | None = Field(None, gt=0, description="dead latents used by the AuxK loss")
    aux_coeff: float | None = Field(None, ge=0, description="weight α of the AuxK loss")
    threshold_ema: float | None = Field(None, gt=0, le=1, description="batchtopk threshold EMA rate")
    # topk / batchtopk: any variant may take it, so that switching variant needs no reset
    select_precision: SelectPrecision = Field("auto", description="dtype of the product that ranks latents")
    # jumprelu (Rajamanoharan et al. 2024)
    l0_coeff: float | None = Field(None, description="λ on the L0 of the latents")
    jumprelu_bandwidth: float | None = Field(None, gt=0, description="STE kernel width ε")
    jumprelu_init_threshold: float | None = Field(None, gt=0)
    jumprelu_sparsity: Literal["step", "tanh"] | None = Field(None, description="penalty: L0, or Σ tanh(c·latent)")
    jumprelu_tanh_scale: float | None = Field(None, gt=0, description="c of the tanh penalty")
    jumprelu_ste_to_input: bool | None = Field(None, description="estimator's gradient to the pre-activations too")
    jumprelu_pre_act_coeff: float | None = Field(None, ge=0, description="μ on dead features' ReLU(θ − pre)")
    # dead features: resampling (standard) and AuxK (topk, batchtopk) both use dead_window
    dead_window: float = Field(0.05, gt=0, le=1, description="dead = not fired for this fraction of run")
    resample_at: tuple[float, ...] | None = Field(None, description="fractions of the run")
    resample_inputs: int = Field(65_536, gt=0, description="inputs scored at each resampling")
    grad_clip: float | None = Field(None, gt=0, description="gradient-norm clip (standard2024: 1)")
    checkpoint_every: int | None = Field(None, gt=0, description="samples between checkpoints")


class SAEConfig(SAEParams):
    """How to build and train one sparse autoencoder. Sample counts are activation vectors."""

    variant: Variant = "standard"
    d_in: int = Field(gt=0, description="activation width D")
    d_sae: int = Field(gt=0, description="dictionary size F")
    n_samples: int = Field(4_194_304, gt=0, description="training activations in total")
    batch_size: int = Field(4096, gt=0)
    seed: int = 0
    device: str = "cpu"

    @model_validator(mode="after")
    def _fill_variant_defaults(self) -> SAEConfig:
        own = set(_VARIANT_FIELDS[self.variant])
        for variant, names in _VARIANT_FIELDS.items():
            for name in set(names) - own:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to variant {variant}, not {self.variant}")
        if self.l1_coeff is not None and self.l1_coeff < 0:
            raise ValueError(f"l1_coeff must be ≥ 0, got {self.l1_coeff}")
        if self.l0_coeff is not None and self.l0_coeff < 0:
            raise ValueError(f"l0_coeff must be ≥ 0, got {self.l0_coeff}")
        if self.k is not None and self.k >= self.d_sae:
            raise ValueError(f"k={self.k} must be smaller than the dictionary size d_sae={self.d_sae}")
        if self.resample_at is not None and any(not 0 < f < 1 for f in self.resample_at):
            raise ValueError(f"resample_at fractions must lie in (0, 1), got {self.resample_at}")
        if self.warmup_frac + self.decay_frac > 1:
            raise ValueError("warmup_frac + decay_frac must not exceed 1")

        self.lr = self.lr if self.lr is not None else _DEFAULT_LR[self.variant]
        default_warmup = _DEFAULT_SPARSITY_WARMUP.get(self.variant, 0.0)
        self.sparsity_warmup = self.sparsity_warmup if self.sparsity_warmup is not None else default_warmup
        if self.grad_clip is None and self.variant == "standard2024":
            self.grad_clip = 1.0
        default_resample = (0.1, 0.2, 0.3, 0.4) if self.variant == "standard" else ()
        self.resample_at = tuple(self.resample_at) if self.resample_at is not None else default_resample
        self.checkpoint_every = self.checkpoint_every or max(self.n_samples // 10, self.batch_size)
        if self.variant in ("standard", "standard2024"):
            self.l1_coeff = self.l1_coeff if self.l1_coeff is not None else 0.01
            self.encoder_init_scale = self.encoder_init_scale or 0.1
        if self.variant in ("topk", "batchtopk"):
            self.k = self.k or min(32, self.d_sae // 2)
            self.aux_k = min(self.aux_k or self.d_in // 2, self.d_sae - self.k)
            self.aux_coeff = self.aux_coeff if self.aux_coeff is not None else 1 / 32
        if self.variant == "batchtopk":
            self.threshold_ema = self.threshold_ema or 0.1
        if self.variant == "jumprelu":
            self.l0_coeff = self.l0_coeff if self.l0_coeff is not None else 3e-3
            self.jumprelu_bandwidth = self.jumprelu_bandwidth or 0.1
            self.jumprelu_init_threshold = self.jumprelu_init_threshold or 1.0
            self.jumprelu_sparsity = self.jumprelu_sparsity or "step"
            self.jumprelu_tanh_scale = self.jumprelu_tanh_scale or 4.0
            self.jumprelu_ste_to_input = bool(self.jumprelu_ste_to_input)
            self.jumprelu_pre_act_coeff = self.jumprelu_pre_act_coeff or 0.0
        return self


class SAESweepConfig(BaseModel):
    """A family of SAEs of growing size trained on the same activations (the paper's A/0…A/5)."""

    model_config = ConfigDict(extra="forbid")

    variant: Variant = "standard"
    sizes: list[int] = Field(default_factory=lambda: [512, 1024, 2048, 4096], min_length=1)
    n_samples: int = Field(1_000_000, ge=1)
    batch_size: int = Field(4096, ge=1)
    # `params` apply to whichever variant is trained; `variant_params` to one variant only (a
    # preset's per-variant defaults: the demo's lr suits the 2023 recipe but costs TopK 12 % of its
    # dictionary), and `params` override them.
    params: SAEParams = SAEParams()
    variant_params: dict[Variant, SAEParams] = Field(default_factory=dict)
    seed: int = 0
    buffer_rows: int = Field(262_144, ge=1)
    init_rows: int = Field(16_384, ge=1)  # activations that set b_dec and the input scale
    loss_windows: int = Field(64, ge=1)  # val windows scored for loss recovered
    # Train tokens over which feature density (dead, ultralow) is measured; None: the held-out store.
    # The paper's ultralow cluster (< 1e-6) needs millions of tokens to be seen at all.
    density_tokens: int | None = Field(None, ge=1)
    # Under torchrun: split each batch over the ranks ("batch"), each dictionary's latents ("latents",
    # topk only, for dictionaries too wide for one device), or the sizes, one rank training each SAE
    # alone ("sizes"). The same SAEs every way: not hashed.
    shard: Literal["batch", "latents", "sizes"] = "batch"

    @model_serializer(mode="wrap")
    def _given_params(self, handler: Any) -> dict[str, Any]:
        # only what was set: the rest is each variant's default, filled in by SAEConfig
        data = handler(self)
        data["params"] = self.params.model_dump(exclude_unset=True)
        if self.variant_params:
            data["variant_params"] = {v: p.model_dump(exclude_unset=True) for v, p in self.variant_params.items()}
        else:  # a sweep without them dumps (and hashes) as before they existed
            data.pop("variant_params", None)
        return data

    def resolved(self) -> dict[str, Any]:
        """The sweep as its SAEs see it, for the sae stage's config hash: the trained variant's
        settings as ``params``, and no other variant's (changing those retrains nothing)."""
        return {**self.model_copy(update={"variant_params": {}}).model_dump(), "params": self.given_params()}

    def given_params(self, variant: Variant | None = None) -> dict[str, Any]:
        """The ``SAEParams`` fields set for ``variant`` (default: the sweep's): its
        ``variant_params``, overridden by ``params``."""
        own = self.variant_params.get(variant or self.variant, SAEParams())
        return {**own.model_dump(exclude_unset=True), **self.params.model_dump(exclude_unset=True)}

    def one_sae(self, size: int, **fields: Any) -> SAESweepConfig:
        """The sweep of just its ``size`` member, with ``SAEConfig`` ``fields`` changed (``d_sae``
        replaces the size; ``variant`` picks that variant's ``variant_params``; the rest go to the
        sweep's own fields or its ``params``)."""
        own = {k: fields.pop(k) for k in ("variant", "n_samples", "batch_size", "seed") if k in fields}
        sizes = [fields.pop("d_sae", size)]
        params = SAEParams(**{**self.given_params(own.get("variant")), **fields})
        return self.model_copy(update={**own, "sizes": sizes, "params": params, "variant_params": {}})

    def sae_config(self, d_in: int, size: int, device: str) -> SAEConfig:
        """The full ``SAEConfig`` of the sweep member with ``size`` features."""
        return SAEConfig(
            variant=self.variant,
            d_in=d_in,
            d_sae=size,
            n_samples=self.n_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            device=device,
            **self.given_params(),
        )
