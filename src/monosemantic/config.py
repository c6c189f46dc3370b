"""Typed configuration of a whole run, with presets and command-line overrides.

A run's config is one ``RunConfig``: a section per stage. It is built from a preset
(``configs/<name>.yaml`` inside the package), then an optional user YAML file, then
``--set section.key=value`` overrides, deep-merged in that order and validated by pydantic, so
an unknown key or an impossible value (d_model not divisible by n_heads…) is caught before any
work starts.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monosemantic.errors import UserError
from monosemantic.lm.model import LMConfig


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


class HarvestConfig(BaseModel):
    """How many MLP activations to record, for SAE training (train) and evaluation (val)."""

    model_config = ConfigDict(extra="forbid")

    n_train_tokens: int = Field(1_000_000, ge=1)
    n_val_tokens: int = Field(100_000, ge=1)
    batch_size: int = Field(64, ge=1)
    dtype: str = Field("float32", pattern="^(float32|float16)$")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = "demo"
    device: str = "cpu"
    corpus: CorpusConfig = CorpusConfig()
    lm: LMConfig = LMConfig()
    harvest: HarvestConfig = HarvestConfig()


PRESETS_PACKAGE = "monosemantic.configs"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of sections at the top level")
    return data


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_override(item: str) -> dict:
    """``lm.n_steps=500`` → ``{"lm": {"n_steps": 500}}`` (the value is read as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set {item}: expected section.key=value")
    value: Any = yaml.safe_load(raw) if raw else None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(preset: str = "demo", config_file: Path | None = None,
                overrides: list[str] = ()) -> RunConfig:
    if preset not in preset_names():
        raise UserError(f"--preset {preset}: unknown preset (choose from {', '.join(preset_names())})")
    data = _read_yaml(resources.files(PRESETS_PACKAGE).joinpath(f"{preset}.yaml").read_text(),
                      f"preset {preset}")
    if config_file is not None:
        if not Path(config_file).is_file():
            raise UserError(f"--config {config_file}: no such file")
        data = _merge(data, _read_yaml(Path(config_file).read_text(), f"--config {config_file}"))
    for item in overrides:
        data = _merge(data, _parse_override(item))
    data["preset"] = preset
    try:
        return RunConfig(**data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise UserError(f"config {where}: {first['msg']}") from None
