"""Exports: an SAE between layouts (SAELens ↔ sparsify) and feature dashboards in sae-dashboard's
Neuronpedia shape, each read back and compared with what it came from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.browser.neuronpedia import export_dashboards
from monosemantic.errors import UserError
from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.formats import open_dictionary
from monosemantic.sae.io import save_sae

SRC = str(Path(__file__).parent.parent / "src")
# The keys of sae-dashboard's NeuronpediaDashboardFeature.to_dict() and NeuronpediaDashboardActivation.to_dict()
FEATURE_KEYS = {
    "feature_index",
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_l1",
    "correlated_neurons_pearson",
    "correlated_features_indices",
    "correlated_features_l1",
    "correlated_features_pearson",
    "neg_str",
    "neg_values",
    "pos_str",
    "pos_values",
    "frac_nonzero",
    "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "n_prompts_total",
    "n_tokens_in_prompt",
    "dataset",
    "decoder_weights_dist",
    "activations",
}
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monosemantic", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        timeout=120,
    )


def test_sae_round_trips_through_sparsify_and_back(tmp_path):
    sae = build_sae(SAEConfig(variant="topk", d_in=16, d_sae=40, k=3, seed=4))
    with torch.no_grad():
        sae.b_enc.add_(0.1), sae.b_dec.add_(0.2)
    save_sae(sae, sae.cfg, tmp_path / "ours", extra={"hook_name": "blocks.0.hook_resid_post"})
    to_sparsify = _cli("export-sae", str(tmp_path / "ours"), str(tmp_path / "layers.0"), "--to", "sparsify")
    assert to_sparsify.returncode == 0, to_sparsify.stderr
    back = _cli("export-sae", str(tmp_path / "layers.0"), str(tmp_path / "back"))
    assert back.returncode == 0, back.stderr
    d = open_dictionary(tmp_path / "back")
    assert d.hook_name == "blocks.0.hook_resid_post"  # sparsify's folder name carried the hook point
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(d.sae, name), getattr(sae, name), rtol=0, atol=0)
    refused = _cli("export-sae", str(tmp_path / "back"), str(tmp_path / "x"), "--to", "onnx")
    assert refused.returncode == 2 and refused.stderr.strip() == "error: --to onnx: expected saelens or sparsify"


def test_dashboard_json_carries_the_stores_numbers(analysed_run, tmp_path):
    run, cfg = analysed_run
    name = f"{cfg.sae.variant}-{cfg.sae.sizes[-1]}"
    store = FeatureStore(run / FILENAME)
    fired = [u for u in range(cfg.sae.sizes[-1]) if store.unit(name, u)["fire_count"] > 0][:3]
    vocab_size = store.db.execute("SELECT COUNT(*) FROM vocab").fetchone()[0]
    out = export_dashboards(run, name, fired, tmp_path / "np")
    batch = json.loads((out / "batch-0.json").read_text())
    assert set(batch) == {"model_id", "layer", "sae_set", "features"} and batch["sae_set"] == name
    assert [f["feature_index"] for f in batch["features"]] == fired
    for feature in batch["features"]:
        u = feature["feature_index"]
        assert set(feature) == FEATURE_KEYS and feature["n_tokens_in_prompt"] == cfg.lm.n_ctx
        unit = store.unit(name, u)
        assert feature["frac_nonzero"] == pytest.approx(unit["density"])
        assert feature["freq_hist_data_bar_heights"] == unit["hist"]
        logits = store.logits(name, u)
        assert feature["pos_str"] == [t for t, _ in logits["top"]]
        assert feature["neg_values"] == pytest.approx([v for _, v in logits["bottom"]], abs=1e-3)
        assert sum(feature["logits_hist_data_bar_heights"]) == vocab_size  # every token's logit effect
        top = [a for a in feature["activations"] if a["bin_min"] == -1]
        examples = store.examples(name, u, "top")
        assert len(top) == len(examples) and all(set(a) == ACTIVATION_KEYS for a in feature["activations"])
        assert top[0]["tokens"] == examples[0]["texts"]
        assert top[0]["values"] == pytest.approx(examples[0]["acts"], abs=1e-3)
        assert max(top[0]["values"]) == pytest.approx(unit["max_act"], abs=1e-3)
        intervals = [a for a in feature["activations"] if a["bin_min"] >= 0]
        stored = sorted(store.examples(name, u, "interval"), key=lambda e: (-e["bucket"], e["rank"]))
        assert [a["tokens"] for a in intervals] == [e["texts"] for e in stored]
        assert all(a["bin_min"] <= e["activation"] < a["bin_max"] + 1e-6 for a, e in zip(intervals, stored))
        assert (
            all(0 <= a["bin_contains"] <= 1 for a in intervals)
            and sum({a["bin_min"]: a["bin_contains"] for a in intervals}.values()) <= 1 + 1e-9
        )
        weights = [w for _, w in store.constituents(name, u)]
        assert feature["neuron_alignment_values"] == pytest.approx(weights, abs=1e-3)
    explanations = json.loads((out / "explanations.json").read_text())
    first = store.explanations(name, fired[0])[0]
    mine = [e for e in explanations if e["index"] == str(fired[0]) and e["explanationModelName"] == first["backend"]]
    assert mine[0]["description"] == first["explanation"]
    with pytest.raises(UserError, match="has features 0…"):
        export_dashboards(run, name, [10**6], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert np.isfinite(batch["features"][0]["logits_hist_data_bar_values"]).all()
