"""What the analysis stages measure: feature analysis, splitting, the feature map and
universality (a leaf module, so the run config can import it without the heavy analysis code)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AnalysisConfig(BaseModel):
    """What the analysis stage measures, and how much of the held-out store it reads."""

    model_config = ConfigDict(extra="forbid")

    n_tokens: int = Field(100_000, ge=1, description="held-out tokens analysed (whole harvest windows)")
    top_k: int = Field(20, ge=2, description="top activating examples per unit")
    doc_cap: int = Field(3, ge=1, description="at most this many top examples from one document")
    n_quantile_intervals: int = Field(11, ge=1, description="equal activation intervals from 0 to max")
    per_interval: int = Field(5, ge=1, description="uniform samples per interval")
    n_random: int = Field(20, ge=1, description="random contexts shown for every unit")
    context_left: int = Field(12, ge=0)
    context_right: int = Field(4, ge=0)
    hist_bins: int = Field(32, ge=2)
    n_logits: int = Field(10, ge=1, description="promoted and suppressed tokens listed")
    n_neighbours: int = Field(10, ge=1)
    n_constituents: int = Field(10, ge=1)
    n_unit_tokens: int = Field(20, ge=1, description="tokens kept per unit, and units kept per token, for search")
    n_scored_units: int = Field(400, ge=1, description="neurons, and features, in the score comparison")
    source_field: str | None = Field(
        None,
        description="jsonl field naming each document's source (user corpora); "
        "None: the file's name (the bundled corpus knows its sources)",
    )
    explainer: Literal["offline", "openai", "anthropic"] = "offline"
    llm_model: str | None = None
    llm_base_url: str | None = Field(
        None,
        description="e.g. http://localhost:8000/v1 (vLLM), "
        "http://localhost:11434/v1 (Ollama); None: $MONOSEMANTIC_LLM_BASE_URL or hosted",
    )
    llm_max_requests: int | None = Field(5000, ge=1, description="requests sent per analysis, retries included")
    llm_max_tokens: int | None = Field(None, ge=1, description="tokens used per analysis, as the server reports them")
    llm_concurrency: int = Field(4, ge=1, description="units explained and scored at once")
    llm_timeout_s: float = Field(60.0, gt=0)
    llm_retries: int = Field(4, ge=0, description="retries of a failed request (timeouts, 429, 5xx)")
    llm_backoff_s: float = Field(1.0, ge=0, description="first retry's wait, doubled each retry (or Retry-After)")
    llm_max_prompt_chars: int = Field(12_000, ge=500)
    seed: int = 0


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

    sae: str | None = Field(None, description="run A's SAE under RUN/saes/ to reproduce on B; None: the largest")
    lm_seed_offset: int = Field(1, ge=1, description="model B's seed = model A's seed + this")
    lm_steps: int | None = Field(None, ge=1, description="model B's training steps; None: as many as A's")
    n_train_tokens: int | None = Field(None, ge=1, description="B's harvested training tokens; None: as many as A's")
    sae_n_samples: int | None = Field(None, ge=1, description="training samples of both new SAEs; None: A's recipe")
    same_model_check: bool = Field(True, description="also train a reseeded SAE on A's activations")
    sae_seed_offset: int = Field(1, ge=1, description="the reseeded SAE's seed = A's SAE seed + this")
    n_tokens: int | None = Field(
        None, ge=2, description="tokens compared, streamed through both LMs; None: the held-out store (activations/val)"
    )
    tokens_split: Literal["val", "train"] = Field("val", description="split those n_tokens come from")
    chunk_rows: int = Field(16_384, ge=1, description="tokens per streamed chunk")
    harvest_batch_size: int = Field(64, ge=1)
    device: str = "cpu"
