"""The whole `run` on the tiny preset: every stage's checkable figures land in run.json, the SAEs
load back, and a second invocation skips everything."""

import json
import shutil

import pytest

from monosemantic.cli import _config, _run_stages
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
    assert list(manifest["timings"]) == ["corpus", "lm", "harvest", "sae", "universality", "analysis",
                                         "splitting", "toy"]
    saes = manifest["sae"]["saes"]
    assert [e["d_sae"] for e in saes] == cfg.sae.sizes
    for entry in saes:
        for key in ("l0", "fvu", "loss_recovered", "dead_frac", "dense_frac", "train_seconds"):
            assert isinstance(entry[key], float), key
        assert 0 <= entry["dead_frac"] <= 1 and entry["l0"] > 0 and entry["fvu"] < 1.5
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
    assert -1 <= analysis["feature_score_mean"] <= 1 and -1 <= analysis["neuron_score_mean"] <= 1


def test_splitting_and_universality_figures(full_run):
    run, cfg = full_run
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["splitting"]["split_families"] >= 0
    assert (run / "splitting" / "families.json").exists() and (run / "feature_map" / "map.json").exists()
    uni = manifest["universality"]
    for key in ("median_feature_corr", "median_neuron_corr", "median_feature_corr_same_model"):
        assert -1 <= uni[key] <= 1
