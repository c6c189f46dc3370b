"""Typed configuration of a whole run, with presets and command-line overrides.

A run's config is one ``RunConfig``: a section per stage. It is built from a preset
(``configs/<name>.yaml`` inside the package), then an optional user YAML file, then
``--set section.key=value`` overrides, deep-merged in that order and validated by pydantic, so
an unknown key or an impossible value (d_model not divisible by n_heads…) is caught before any
work starts.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monosemantic.analysis.config import (AnalysisConfig, FeatureMapConfig, SplittingConfig,
                                           UniversalityConfig)
from monosemantic.errors import UserError
from monosemantic.sae.config import SAEConfig, Variant
from monosemantic.toy.sweep import ToyConfig


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
    n_steps: int = Field(2000, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_frac: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(250, ge=1)
    eval_windows: int = Field(64, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "LMConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.pretrained and self.hf_model_dir:
            raise ValueError("give pretrained or hf_model_dir, not both")
        return self

    @property
    def trains_own_model(self) -> bool:
        return self.pretrained is None and self.hf_model_dir is None


class HarvestConfig(BaseModel):
    """How many MLP activations to record, for SAE training (train) and evaluation (val)."""

    model_config = ConfigDict(extra="forbid")

    n_train_tokens: int = Field(1_000_000, ge=1)
    n_val_tokens: int = Field(100_000, ge=1)
    batch_size: int = Field(64, ge=1)
    dtype: str = Field("float32", pattern="^(float32|float16)$")


class SAESweepConfig(BaseModel):
    """A family of SAEs of growing size trained on the same activations (the paper's A/0…A/5)."""

    model_config = ConfigDict(extra="forbid")

    variant: Variant = "standard"
    sizes: list[int] = Field(default_factory=lambda: [512, 1024, 2048, 4096], min_length=1)
    n_samples: int = Field(1_000_000, ge=1)
    batch_size: int = Field(4096, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)  # further SAEConfig fields: l1_coeff, k, lr…
    seed: int = 0
    buffer_rows: int = Field(262_144, ge=1)
    init_rows: int = Field(16_384, ge=1)  # activations that set b_dec and the input scale
    loss_windows: int = Field(64, ge=1)  # val windows scored for loss recovered

    def sae_config(self, d_in: int, size: int, device: str) -> SAEConfig:
        """The full ``SAEConfig`` of the sweep member with ``size`` features."""
        return SAEConfig(variant=self.variant, d_in=d_in, d_sae=size, n_samples=self.n_samples,
                         batch_size=self.batch_size, seed=self.seed, device=device, **self.params)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = "demo"
    device: str = "cpu"
    corpus: CorpusConfig = CorpusConfig()
    lm: LMConfig = LMConfig()
    harvest: HarvestConfig = HarvestConfig()
    sae: SAESweepConfig = SAESweepConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    splitting: SplittingConfig = SplittingConfig()
    feature_map: FeatureMapConfig = FeatureMapConfig()
    toy: ToyConfig = ToyConfig()
    universality: UniversalityConfig = UniversalityConfig()

    @model_validator(mode="after")
    def _check_saes(self) -> "RunConfig":
        # Build every sweep member's config now, so a bad λ or k fails before any training.
        for size in self.sae.sizes:
            self.sae.sae_config(self.lm.d_mlp, size, self.device)
        return self


PRESETS_PACKAGE = "monosemantic.configs"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where, then what (PyYAML's own message spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def _read_yaml(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not valid YAML ({_yaml_problem(err)})") from None
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
    try:
        value: Any = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:
        raise UserError(f"--set {item}: the value is not valid YAML ({_yaml_problem(err)})") from None
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
        try:
            text = Path(config_file).read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"--config {config_file}: not a YAML text file (bad UTF-8 byte at offset "
                            f"{err.start})") from None
        data = _merge(data, _read_yaml(text, f"--config {config_file}"))
    for item in overrides:
        data = _merge(data, _parse_override(item))
    data["preset"] = preset
    try:
        cfg = RunConfig(**data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"config{' ' + where if where else ''}: {message}") from None
    for where, value in _leaves(cfg.model_dump()):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"config {where}: {value} is not a finite number")
    return cfg


def _leaves(tree: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of nested dicts and lists."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{where}[{i}]")
    else:
        yield where, tree
