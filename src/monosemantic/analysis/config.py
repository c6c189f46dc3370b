"""What the analysis stage measures (a leaf module, so the run config can import it without the
heavy analysis code)."""

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
