"""The named presets (``configs/<name>.yaml`` inside the package): one YAML mapping per preset, one
section per stage. The root config composes a run from them; the toy sweep reads its own section."""

from __future__ import annotations

from importlib import resources

import yaml

from monosemantic.errors import UserError

PRESETS_PACKAGE = "monosemantic.configs"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where, then what (PyYAML's own message spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def read_yaml(text: str, where: str) -> dict:
    """A YAML mapping of sections (``where`` names the source in the error line)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of sections at the top level")
    return data


def read_preset(name: str) -> dict:
    """The sections of preset ``name``."""
    if name not in preset_names():
        raise UserError(f"--preset {name}: unknown preset (choose from {', '.join(preset_names())})")
    return read_yaml(resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml").read_text(), f"preset {name}")
