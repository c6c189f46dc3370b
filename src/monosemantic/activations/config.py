"""How many activations the harvest stage records (its config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HarvestConfig(BaseModel):
    """How many MLP activations to record, for SAE training (train) and evaluation (val)."""

    model_config = ConfigDict(extra="forbid")

    n_train_tokens: int = Field(1_000_000, ge=1)
    n_val_tokens: int = Field(100_000, ge=1)
    batch_size: int = Field(64, ge=1)
    dtype: str = Field("float32", pattern="^(float32|float16)$")
    # The paper's 8B activations would be 8 TB on disk: streaming runs the LM during SAE training instead.
    stream_train: bool = Field(False, description="SAEs train on activations made on the fly (no train store)")
    extra_hooks: list[str] = Field(
        default_factory=list,
        description="more hook points recorded in the same forward passes, into activations/<split>@<hook>; "
        "the SAE sweep trains at each too",
    )
