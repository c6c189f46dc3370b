"""Typed configuration of a whole run, composed from the packages' own configs, with presets and
command-line overrides.

A run's config is one ``RunConfig``: a section per stage, each the config class of the package that
runs it. It is built from a preset (``configs/<name>.yaml`` inside the package), then an optional
user YAML file, then ``--set section.key=value`` overrides, deep-merged in that order and validated
by pydantic, so an unknown key or an impossible value (d_model not divisible by n_heads…) is caught
before any work starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from monosemantic.activations.config import HarvestConfig
from monosemantic.analysis.config import AnalysisConfig
from monosemantic.compare.config import FeatureMapConfig, SplittingConfig, UniversalityConfig
from monosemantic.corpus.config import CorpusConfig
from monosemantic.errors import UserError, invalid_config
from monosemantic.lm.config import LMConfig
from monosemantic.presets import preset_names, read_preset, read_yaml, yaml_problem
from monosemantic.sae.config import SAEConfig, SAESweepConfig
from monosemantic.toy.config import ToyConfig

__all__ = ["RunConfig", "load_config", "preset_names"]


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
    def _check_saes(self) -> RunConfig:
        # Build every sweep member's config now, so a bad λ or k fails before any training, and
        # each variant's own settings alone, so a preset's are checked before that variant is chosen.
        for size in self.sae.sizes:
            self.sae.sae_config(self.lm.d_mlp, size, self.device)
        for variant, params in self.sae.variant_params.items():
            try:
                SAEConfig(
                    variant=variant,
                    d_in=self.lm.d_mlp,
                    d_sae=max(self.sae.sizes),
                    **params.model_dump(exclude_unset=True),
                )
            except ValidationError as err:
                raise ValueError(
                    f"sae.variant_params.{variant}: {err.errors()[0]['msg'].removeprefix('Value error, ')}"
                ) from None
        return self


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
        raise UserError(f"--set {item}: the value is not valid YAML ({yaml_problem(err)})") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(preset: str = "demo", config_file: Path | None = None, overrides: list[str] = ()) -> RunConfig:
    data = read_preset(preset)
    if config_file is not None:
        if not Path(config_file).is_file():
            raise UserError(f"--config {config_file}: no such file")
        try:
            text = Path(config_file).read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(
                f"--config {config_file}: not a YAML text file (bad UTF-8 byte at offset {err.start})"
            ) from None
        data = _merge(data, read_yaml(text, f"--config {config_file}"))
    for item in overrides:
        data = _merge(data, _parse_override(item))
    data["preset"] = preset
    try:
        cfg = RunConfig(**data)
    except ValidationError as err:
        raise invalid_config(err, "config") from None
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
