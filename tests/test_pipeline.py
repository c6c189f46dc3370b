"""The whole `run` on the tiny preset: every stage's checkable figures land in run.json, the SAEs
load back, and a second invocation skips everything."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from monosemantic.cli import _config, _run_stages
from monosemantic.analysis.store import FeatureStore
from monosemantic.progress import set_quiet
from monosemantic.sae.io import load_sae


@pytest.fixture(scope="module")
def full_run(tiny_run, tmp_path_factory):
    set_quiet(True)
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(tiny_run, run)
    corpus = tiny_run.parent / "corpus.txt"
    cfg = _config("tiny", None, ["corpus.val_fraction=0.2"], str(corpus), None, None, None)
    _run_stages(cfg, run, None, force=False)
    return run, cfg


def test_manifest_has_every_stage_and_the_checkable_fields(full_run):
    run, cfg = full_run
    manifest = json.loads((run / "run.json").read_text())
    assert list(manifest["timings"]) == ["corpus", "lm", "harvest", "sae", "analysis", "splitting",
                                         "toy", "universality"]
    saes = manifest["sae"]["saes"]
    assert [e["d_sae"] for e in saes] == cfg.sae.sizes
    for entry in saes:
        for key in ("l0", "fvu", "loss_recovered", "dead_frac", "dense_frac", "train_seconds"):
            assert isinstance(entry[key], float), key
        n_dead = entry["dead_frac"] * entry["d_sae"]
        assert n_dead == pytest.approx(round(n_dead)) and n_dead < entry["d_sae"] / 2  # a count; most alive
        assert 0 < entry["l0"] < entry["d_sae"] and entry["fvu"] < 1  # sparse, and beats the mean
        assert load_sae(run / entry["path"]).W_dec.shape == (entry["d_sae"], 64)
        assert (run / entry["density_plot"]).stat().st_size > 1000
    points = manifest["toy"]["points"]
    assert len(points) == cfg.toy.n_sparsities
    for point in points:
        assert {"sparsity", "dims_per_feature", "structures"} <= set(point)
    assert (run / "toy" / "toy.json").exists()


def test_second_run_skips_every_stage(full_run):
    run, cfg = full_run
    before = (run / "run.json").read_text()
    _run_stages(cfg, run, None, force=False)
    after = json.loads((run / "run.json").read_text())
    assert after["stages"] == json.loads(before)["stages"]  # no stage re-ran (same finish times)


def test_analysis_stage_writes_the_feature_store(full_run):
    run, cfg = full_run
    analysis = json.loads((run / "run.json").read_text())["analysis"]
    assert (run / analysis["store"]).stat().st_size > 10_000
    assert analysis["feature_dictionary"] == f"{cfg.sae.variant}-{max(cfg.sae.sizes)}"
    assert FeatureStore(run / analysis["store"]).dictionary(None)["name"] == analysis["feature_dictionary"]


def test_splitting_and_universality_figures(full_run):
    run, cfg = full_run
    manifest = json.loads((run / "run.json").read_text())
    families = json.loads((run / "splitting" / "families.json").read_text())
    children = [Counter(p for p in link["parent"] if p >= 0) for link in families["links"]]
    split = sum(n >= 2 for counts in children for n in counts.values())
    assert manifest["splitting"]["split_families"] == split > 0
    assert (run / "feature_map" / "map.json").exists()
    uni = manifest["universality"]
    written = json.loads((run / "universality" / "universality.json").read_text())
    for key, unit in (("median_feature_corr", "features_a_vs_b"), ("median_neuron_corr", "neurons_a_vs_b"),
                      ("median_feature_corr_same_model", "features_same_model")):
        assert uni[key] == pytest.approx(np.nanmedian(written[unit]["best_corr"]), abs=1e-4)  # 4 decimals kept
    # another SAE on the same model's activations shares more features than one on another model
    assert uni["median_feature_corr_same_model"] > uni["median_feature_corr"]
