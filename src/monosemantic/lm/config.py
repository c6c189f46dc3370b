"""The LM's architecture and training recipe, or which existing model to load (the lm stage's config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LMConfig(BaseModel):
    """Architecture and training recipe of the LM (or where to load an existing one from)."""

    model_config = ConfigDict(extra="forbid")

    pretrained: str | None = None  # a TransformerLens model name, e.g. "gelu-1l" (needs network)
    hf_model_dir: str | None = None  # a local Hugging Face causal-LM directory (works offline)
    hook_name: str = "blocks.0.mlp.hook_post"

    n_layers: int = Field(1, ge=1)
    d_model: int = Field(128, ge=1)
    d_mlp: int = Field(512, ge=1)
    n_heads: int = Field(4, ge=1)
    n_ctx: int = Field(128, ge=2)
    act_fn: str = "relu"

    batch_size: int = Field(32, ge=1)
    # Each batch is backpropagated in this many equal parts whose gradients are summed in a fixed binary
    # tree, so torchrun over N ranks (N a power of 2 dividing it) trains bit for bit the one-process LM.
    grad_parts: int = Field(8, ge=1)
    n_steps: int = Field(2000, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_frac: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(250, ge=1)
    eval_windows: int = Field(64, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    # The training forward pass: auto = bfloat16 autocast on CUDA, float32 elsewhere.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> LMConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.batch_size % self.grad_parts:
            raise ValueError(f"grad_parts ({self.grad_parts}) must divide batch_size ({self.batch_size})")
        if self.pretrained and self.hf_model_dir:
            raise ValueError("give pretrained or hf_model_dir, not both")
        return self

    @property
    def trains_own_model(self) -> bool:
        return self.pretrained is None and self.hf_model_dir is None
