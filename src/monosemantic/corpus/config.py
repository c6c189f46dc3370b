"""What text a run reads, and how it is tokenized and split (the corpus stage's config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CorpusConfig(BaseModel):
    """Which text, and how it is tokenized and split."""

    model_config = ConfigDict(extra="forbid")

    corpus: str | None = None  # local .txt/.jsonl file or directory; None = the bundled corpus
    dataset: str | None = None  # a Hugging Face dataset name (streamed; needs the network)
    dataset_split: str = "train"
    text_field: str = "text"
    max_docs: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.02, gt=0, lt=0.5)
    vocab_size: int = Field(4096, ge=300, le=1 << 20)
