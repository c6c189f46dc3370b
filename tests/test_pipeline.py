"""The pipeline on the tiny preset: `monosemantic universality` runs only the stages it needs, then
the whole `run`: every stage's checkable figures land in run.json, the SAEs load back, and a second
invocation skips everything."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from monosemantic import pipeline
from monosemantic.activations import ActivationStore
from monosemantic.analysis.store import FeatureStore
from monosemantic.cli import app
from monosemantic.config import load_config
from monosemantic.errors import UserError
from monosemantic.progress import set_quiet
from monosemantic.sae.io import load_sae
from monosemantic.stages import all_stages, second_run_config, universality_size


@pytest.fixture(scope="module")
def universality_first(tiny_run, tmp_path_factory):
    """`monosemantic universality` on a copy of the tiny run (corpus, lm and harvest done)."""
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(tiny_run, run)
    corpus = tiny_run.parent / "corpus.txt"
    result = CliRunner().invoke(
        app,
        [
            "-q",
            "universality",
            "--preset",
            "tiny",
            "--corpus",
            str(corpus),
            "--set",
            "corpus.val_fraction=0.2",
            "--out",
            str(run),
        ],
    )
    assert result.exit_code == 0, result.output
    return run, result.output, json.loads((run / "run.json").read_text())


@pytest.fixture(scope="module")
def full_run(universality_first, tiny_run):
    set_quiet(True)
    run = universality_first[0]
    cfg = load_config("tiny", overrides=["corpus.val_fraction=0.2", f"corpus.corpus={tiny_run.parent / 'corpus.txt'}"])
    result = pipeline.run(cfg, run)
    return run, cfg, result


def test_universality_runs_only_the_stages_it_needs(universality_first):
    _, output, manifest = universality_first
    assert list(manifest["stages"]) == ["corpus", "lm", "harvest", "sae", "universality"]
    table = output.split("Sparse autoencoders")[0]
    rows = [[cell.strip() for cell in line.split("│")[1:3]] for line in table.splitlines() if line.startswith("│")]
    assert [row for row in rows if row[0]] == [
        ["corpus", "current (skipped)"],
        ["lm", "current (skipped)"],
        ["harvest", "current (skipped)"],
        ["sae", "ran"],
        ["universality", "ran"],
    ]


def test_model_b_is_a_second_run_of_the_same_stages(universality_first):
    run, _, manifest = universality_first
    model_b = json.loads((run / "model_b" / "run.json").read_text())
    reseed = json.loads((run / "sae_reseed" / "run.json").read_text())
    assert list(model_b["stages"]) == ["corpus", "lm", "harvest", "sae"]
    assert model_b["stages"]["corpus"] == {**manifest["stages"]["corpus"], "borrowed_from": ".."}
    assert list(reseed["stages"]) == ["corpus", "lm", "harvest", "sae"]
    assert reseed["stages"]["harvest"]["borrowed_from"] == ".." and reseed["stages"]["lm"] == {
        **manifest["stages"]["lm"],
        "borrowed_from": "..",
    }
    assert model_b["config"]["lm"] == {**manifest["config"]["lm"], "seed": manifest["config"]["lm"]["seed"] + 1}
    # the compared SAE (the largest) trained by the same recipe, only the seed differs
    sae_a = next(e["config"] for e in manifest["sae"]["saes"] if e["d_sae"] == 128)
    for second in (model_b, reseed):
        (entry,) = second["sae"]["saes"]
        assert {**entry["config"], "seed": sae_a["seed"]} == sae_a and entry["config"]["seed"] == sae_a["seed"] + 1
    # model B measured as A is, under the same names: the loss over the whole val split, L0, FVU…
    assert set(model_b["lm"]) == set(manifest["lm"]) and set(model_b["sae"]["saes"][0]) == set(
        manifest["sae"]["saes"][0]
    )
    assert manifest["universality"]["lm_b_val_loss"] == model_b["lm"]["val_loss"] != manifest["lm"]["val_loss"]
    # B's stores hold exactly A's token windows
    for split in ("train", "val"):
        store_a, store_b = (
            ActivationStore(run / "activations" / split),
            ActivationStore(run / "model_b/activations" / split),
        )
        rows = np.arange(store_a.n_rows)
        assert store_b.n_rows == store_a.n_rows and all(
            np.array_equal(store_a.origin(rows)[c], store_b.origin(rows)[c]) for c in ("token", "doc", "pos")
        )


def test_second_run_configs_change_only_seeds_and_the_budgets_asked_for():
    cfg = load_config("tiny", overrides=["universality.lm_steps=7"])
    assert universality_size(cfg) == 128
    b = second_run_config(cfg, 128, model_b=True)
    assert b.lm == cfg.lm.model_copy(update={"seed": cfg.lm.seed + 1, "n_steps": 7}) and b.harvest == cfg.harvest
    assert b.sae == cfg.sae.model_copy(update={"sizes": [128], "seed": cfg.sae.seed + 1})
    reseed = second_run_config(cfg, 64, model_b=False)
    assert reseed.lm == cfg.lm and reseed.sae.sizes == [64]
    with pytest.raises(UserError, match="universality.sae=standard-999: not one of the sweep's SAEs"):
        universality_size(load_config("tiny", overrides=["universality.sae=standard-999"]))


def test_prerequisites_follow_the_declared_needs():
    stages = all_stages(load_config("tiny"))
    assert [s.name for s in pipeline.prerequisites(stages, "splitting")] == [
        "corpus",
        "lm",
        "harvest",
        "sae",
        "splitting",
    ]
    assert [s.name for s in pipeline.prerequisites(stages, "toy")] == ["toy"]
    assert len(pipeline.prerequisites(stages, None)) == len(stages)
    with pytest.raises(UserError, match="unknown stage nope"):
        pipeline.prerequisites(stages, "nope")


def test_universality_summary_quotes_the_paper_numbers_it_recorded():
    stage = {s.name: s for s in all_stages(load_config("tiny"))}["universality"]
    figures = {
        "median_feature_corr": 0.5,
        "median_neuron_corr": 0.4,
        "paper_median_feature_corr": 0.11,
        "paper_median_neuron_corr": 0.22,
    }
    assert stage.summary(figures).endswith("features 0.50 vs neurons 0.40 (paper 0.11 vs 0.22)")


def test_manifest_has_every_stage_and_the_checkable_fields(full_run):
    run, cfg, result = full_run
    manifest = json.loads((run / "run.json").read_text())
    assert list(manifest["timings"]) == [
        "corpus",
        "lm",
        "harvest",
        "sae",
        "universality",
        "analysis",
        "splitting",
        "toy",
    ]
    assert [(s.name, s.skipped) for s in result.stages] == [
        ("corpus", True),
        ("lm", True),
        ("harvest", True),
        ("sae", True),
        ("universality", True),
        ("analysis", False),
        ("splitting", False),
        ("toy", False),
    ]
    assert all(s.summary for s in result.stages)
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
    run, cfg, _ = full_run
    before = (run / "run.json").read_text()
    assert all(s.skipped for s in pipeline.run(cfg, run).stages)
    after = json.loads((run / "run.json").read_text())
    assert after["stages"] == json.loads(before)["stages"]  # no stage re-ran (same finish times)


def test_analysis_stage_writes_the_feature_store(full_run):
    run, cfg, _ = full_run
    analysis = json.loads((run / "run.json").read_text())["analysis"]
    assert (run / analysis["store"]).stat().st_size > 10_000
    assert analysis["feature_dictionary"] == f"{cfg.sae.variant}-{max(cfg.sae.sizes)}"
    assert FeatureStore(run / analysis["store"]).dictionary(None)["name"] == analysis["feature_dictionary"]


def test_splitting_and_universality_figures(full_run):
    run, cfg, _ = full_run
    manifest = json.loads((run / "run.json").read_text())
    families = json.loads((run / "splitting" / "families.json").read_text())
    children = [Counter(p for p in link["parent"] if p >= 0) for link in families["links"]]
    split = sum(n >= 2 for counts in children for n in counts.values())
    assert manifest["splitting"]["split_families"] == split > 0
    assert (run / "feature_map" / "map.json").exists()
    uni = manifest["universality"]
    written = json.loads((run / "universality" / "universality.json").read_text())
    for key, unit in (
        ("median_feature_corr", "features_a_vs_b"),
        ("median_neuron_corr", "neurons_a_vs_b"),
        ("median_feature_corr_same_model", "features_same_model"),
    ):
        assert uni[key] == pytest.approx(np.nanmedian(written[unit]["best_corr"]), abs=1e-4)  # 4 decimals kept
    # another SAE on the same model's activations shares more features than one on another model
    assert uni["median_feature_corr_same_model"] > uni["median_feature_corr"]
