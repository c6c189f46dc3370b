"""What the comparison stages measure: splitting, the feature map and universality (a leaf module,
so the run config can import it without the heavy comparison code)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SplittingConfig(BaseModel):
    """How features are matched across sizes and which families are drawn."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.4, ge=0, le=1, description="masked cosine needed for a parent link (paper ≈ 0.4)")
    min_fires: int = Field(10, ge=1, description="tokens a feature must fire on for its side of the masked cosine")
    max_tokens: int | None = Field(None, ge=1, description="held-out tokens used; None: all of RUN/activations/val")
    chunk_rows: int = Field(8192, ge=1)
    top_k: int = Field(12, ge=1, description="top activations per feature that make its label")
    n_pictures: int = Field(6, ge=0, description="largest families drawn, besides the highlighted ones")
    highlight: list[str] = Field(["the", "God"], description="tokens whose families are drawn and summarised")
    max_children_drawn: int = Field(6, ge=1)
    device: str = "cpu"


class FeatureMapConfig(BaseModel):
    """Projection method and its parameters."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["auto", "umap", "pca"] = "auto"
    n_neighbors: int = Field(15, ge=2, description="UMAP neighbourhood (paper: 15)")
    min_dist: float = Field(0.1, ge=0)
    seed: int = 0


class UniversalityConfig(BaseModel):
    """What to compare and how much the second model and its dictionary may cost."""

    model_config = ConfigDict(extra="forbid")

    sae: str | None = Field(None, description="the sweep's SAE (e.g. standard-4096) reproduced on B; None: the largest")
    lm_seed_offset: int = Field(1, ge=1, description="model B's seed = model A's seed + this")
    lm_steps: int | None = Field(None, ge=1, description="model B's training steps; None: as many as A's")
    n_train_tokens: int | None = Field(None, ge=1, description="B's harvested training tokens; None: as many as A's")
    sae_n_samples: int | None = Field(None, ge=1, description="training samples of both new SAEs; None: A's recipe")
    same_model_check: bool = Field(True, description="also train a reseeded SAE on A's activations")
    sae_seed_offset: int = Field(1, ge=1, description="both new SAEs' seed = A's SAE seed + this")
    n_tokens: int | None = Field(
        None, ge=2, description="tokens compared, streamed through both LMs; None: the held-out store (activations/val)"
    )
    tokens_split: Literal["val", "train"] = Field("val", description="split those n_tokens come from")
    chunk_rows: int = Field(16_384, ge=1, description="tokens per streamed chunk")
