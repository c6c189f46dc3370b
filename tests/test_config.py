"""The run config: composed from the packages' own configs, presets from the YAML files only, and
every validation error one line that names the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monosemantic.config import load_config
from monosemantic.errors import UserError
from monosemantic.presets import read_preset
from monosemantic.sae.config import SAEParams, Variant
from monosemantic.toy import config as toy_config
from monosemantic.toy.config import ToyConfig

VARIANTS = Variant.__args__


def test_lm_training_does_not_import_the_plotting_stack():
    code = "import sys, monosemantic.lm.train; print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_toy_presets_are_the_yaml_presets(monkeypatch):
    assert ToyConfig.preset("tiny") == ToyConfig(**read_preset("tiny")["toy"]) == load_config("tiny").toy
    assert ToyConfig.preset("paper") == load_config("paper").toy and ToyConfig.preset("demo") == ToyConfig()
    monkeypatch.setattr(toy_config, "read_preset", lambda name: {"toy": {"n_features": 7}})
    assert ToyConfig.preset("tiny").n_features == 7


def test_sweep_params_are_typed_and_only_what_was_set_is_recorded():
    sweep = load_config("demo").sae
    assert isinstance(sweep.variant_params["standard"], SAEParams) and sweep.variant_params["standard"].lr == 0.003
    # only the trained variant's settings, as `params`: the sae stage's config hash is unchanged
    assert sweep.resolved()["params"] == {"lr": 0.003} and "variant_params" not in sweep.resolved()
    assert sweep.model_dump()["params"] == {} and sweep.model_dump()["variant_params"]["topk"] == {"lr": 0.001}
    assert load_config("demo").model_validate(load_config("demo").model_dump()).sae == sweep  # manifests round-trip
    sae = sweep.sae_config(512, 1024, "cpu")
    assert sae.variant == "standard" and sae.lr == 0.003 and sae.l1_coeff == 0.01 and sae.k is None


def test_each_variant_takes_its_own_preset_settings_and_params_override_them():
    lr = {v: load_config("demo", overrides=[f"sae.variant={v}"]).sae.sae_config(512, 1024, "cpu").lr for v in VARIANTS}
    assert lr == {"standard": 0.003, "standard2024": 0.001, "topk": 0.001, "batchtopk": 0.001, "jumprelu": 0.001}
    jumprelu = load_config("demo", overrides=["sae.variant=jumprelu"]).sae.sae_config(512, 1024, "cpu")
    assert (jumprelu.jumprelu_sparsity, jumprelu.jumprelu_ste_to_input, jumprelu.l0_coeff) == ("tanh", True, 0.001)
    topk = load_config("demo", overrides=["sae.variant=topk", "sae.params.lr=0.002"]).sae
    assert topk.sae_config(512, 1024, "cpu").lr == 0.002 and topk.resolved()["params"] == {"lr": 0.002}
    assert topk.one_sae(1024, variant="standard").sae_config(512, 1024, "cpu").lr == 0.002
    sweep = load_config("demo").sae
    assert sweep.one_sae(1024, variant="topk").sae_config(512, 1024, "cpu").lr == 0.001
    assert sweep.one_sae(1024, variant="topk", lr=0.005).model_dump()["params"] == {"lr": 0.005}
    assert "variant_params" not in sweep.one_sae(1024).model_dump()  # folded into params
    # the paper preset's λ is the L1 variants' only, so TopK needs nothing unset
    paper = load_config("paper", overrides=["sae.variant=topk"]).sae.sae_config(512, 4096, "cpu")
    assert paper.l1_coeff is None and paper.lr == 0.0002
    other = load_config("demo", overrides=["sae.variant_params.topk.lr=0.01"]).sae
    assert other.resolved() == load_config("demo").sae.resolved()  # another variant's settings: same hash


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["sae.params={lr: -1}"], "config sae.params.lr: Input should be greater than 0 (got -1)"),
        (["sae.params={nope: 1}"], "config sae.params.nope: Extra inputs are not permitted"),
        (["sae.params={d_sae: 8}"], "config sae.params.d_sae: Extra inputs are not permitted"),  # the sweep sets it
        (["lm.n_heads=3"], "config lm: d_model (128) must be divisible by n_heads (3)"),
        (["toy.sparsity_max=1.5"], "config toy: sparsity_max must lie in [0, 1)"),
        (["sae.variant_params.topk.l1_coeff=0.1"], "config: sae.variant_params.topk: l1_coeff applies to variant"),
    ],
)
def test_validation_errors_are_one_line_naming_the_key(overrides, line):
    with pytest.raises(UserError) as err:
        load_config("demo", overrides=overrides)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)
