"""Activations made on the fly (ActivationStream): the same rows a harvest stores, shuffled
batches that are deterministic and resumable, and a whole run that trains its SAEs from the stream."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from monosemantic import pipeline
from monosemantic.activations.harvest import activations_at
from monosemantic.activations.store import ActivationStore
from monosemantic.activations.stream import ActivationStream
from monosemantic.config import load_config
from monosemantic.corpus.shards import TokenShards
from monosemantic.errors import UserError
from monosemantic.lm.model import load_lm
from monosemantic.progress import set_quiet

HOOK = "blocks.0.mlp.hook_post"
CTX = 32  # the tiny preset's n_ctx


@pytest.fixture(scope="module")
def stream(tiny_run):
    return ActivationStream(load_lm(tiny_run / "lm"), TokenShards(tiny_run / "tokens", "train"), HOOK, CTX)


def test_token_chunks_are_the_rows_a_harvest_stores(tiny_run, stream):
    store = ActivationStore(tiny_run / "activations/train")
    streamed = torch.cat(list(stream.token_chunks(store.n_rows, windows_per_chunk=5)))
    torch.testing.assert_close(streamed, torch.from_numpy(store.read_range(0, store.n_rows)), rtol=1e-4, atol=1e-5)
    parts = [list(stream.token_chunks(store.n_rows, 5, part=(r, 3))) for r in range(3)]  # 128 windows: 42, 43, 43
    assert [sum(len(c) for c in part) for part in parts] == [42 * CTX, 43 * CTX, 43 * CTX]
    torch.testing.assert_close(torch.cat([c for part in parts for c in part]), streamed, rtol=1e-5, atol=1e-6)


def test_a_group_is_a_permutation_of_its_random_windows_activations(stream):
    windows_BT = stream.shards.random_windows(8, CTX, np.random.default_rng(3))
    expected_ND = activations_at(stream.model, torch.from_numpy(windows_BT), HOOK).flatten(0, 1)
    batches = list(stream.shuffled_batches(2 * CTX, seed=3, buffer_rows=8 * CTX, n_batches=4))
    batch_ND = torch.cat(batches)
    assert not torch.equal(batch_ND, expected_ND)  # shuffled ...
    distance_NN = torch.cdist(batch_ND, expected_ND, compute_mode="donot_use_mm_for_euclid_dist")  # ... same rows
    assert distance_NN.min(dim=1).values.max() < 1e-4 and distance_NN.min(dim=0).values.max() < 1e-4
    assert torch.allclose(batch_ND.sum(0), expected_ND.sum(0), atol=1e-3)
    nearest = distance_NN.argmin(dim=1).view(4, 2 * CTX) // CTX  # the window each row came from
    assert all(len(window.unique()) >= 6 for window in nearest)  # a batch draws on most of the group's 8 windows
    assert all(bool((window.diff() >= 0).all()) for window in nearest)  # in the order of their windows


def test_each_rank_runs_the_lm_on_about_its_share_of_the_windows_for_its_part(stream, monkeypatch):
    """``part=(r, N)``: rank r's rows of each batch of the one-process stream, made by running the LM
    on fewer windows than one process runs."""

    def batches(part):
        return list(stream.shuffled_batches(256, seed=2, buffer_rows=32 * CTX, n_batches=9, start_batch=1, part=part))

    run = []
    original = stream._activations
    monkeypatch.setattr(stream, "_activations", lambda windows: run.append(len(windows)) or original(windows))
    whole = batches((0, 1))
    windows_by_one, run[:] = sum(run), []
    parts = []
    for rank in range(2):
        parts.append(batches((rank, 2)))
        assert windows_by_one / 2 <= sum(run) < 0.8 * windows_by_one  # 256 rows from 32 windows of 32 tokens
        run[:] = []
    assert [b.shape for b in parts[0]] == [b.shape for b in parts[1]] == [(128, 64)] * 8
    for b, batch_BD in enumerate(whole):
        torch.testing.assert_close(torch.cat([parts[0][b], parts[1][b]]), batch_BD, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="divisible into 3 parts"):
        next(stream.shuffled_batches(256, seed=2, buffer_rows=32 * CTX, n_batches=1, part=(0, 3)))


def test_batches_are_deterministic_resumable_and_span_groups(stream):
    def batches(seed, start=0):
        return list(stream.shuffled_batches(100, seed=seed, buffer_rows=4 * CTX, n_batches=9, start_batch=start))

    full = batches(0)
    assert len(full) == 9 and all(b.shape == (100, 64) and b.dtype == torch.float32 for b in full)
    assert all(torch.equal(a, b) for a, b in zip(full, batches(0)))
    assert not torch.equal(full[0], batches(1)[0])
    resumed = batches(0, start=4)  # 400 rows in: the middle of the fourth 128-row group
    assert len(resumed) == 5 and all(torch.equal(a, b) for a, b in zip(full[4:], resumed))
    with pytest.raises(UserError):
        next(stream.shuffled_batches(0, seed=0, buffer_rows=128, n_batches=1))


def test_a_streamed_run_trains_saes_without_a_train_store_and_measures_long_densities(tiny_run, tmp_path):
    set_quiet(True)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "activations")
    cfg = load_config(
        "tiny",
        overrides=[
            "corpus.val_fraction=0.2",
            f"corpus.corpus={tiny_run.parent / 'corpus.txt'}",
            "harvest.stream_train=true",
            "sae.density_tokens=3000",
            "universality.n_tokens=2000",
            "universality.tokens_split=train",
        ],
    )
    pipeline.run(cfg, run, "universality")
    manifest = json.loads((run / "run.json").read_text())
    assert not (run / "activations/train").exists() and not (run / "model_b/activations/train").exists()
    assert list(manifest["timings"]) == ["corpus", "lm", "harvest", "sae", "universality"]
    for entry in manifest["sae"]["saes"]:
        assert entry["samples"] == cfg.sae.n_samples
        assert entry["density"]["n_tokens"] == 3008  # whole 32-token windows
        assert entry["density"]["ultralow_frac"] is None  # 3,008 tokens cannot resolve 1e-6
        assert 0 < entry["fvu"] < 1
    uni = manifest["universality"]
    assert uni["n_tokens"] == 2016 and "train split" in uni["tokens"]
    assert -1 <= uni["median_feature_corr_dense"] <= 1 and uni["n_features_dense"] > 0
    reseed = json.loads((run / "sae_reseed/saes/standard-128/cfg.json").read_text())
    sae_a = json.loads((run / "saes/standard-128/cfg.json").read_text())
    assert reseed["d_sae"] == sae_a["d_sae"]
    # forced again, the comparison re-runs but model B's and the reseeded SAE's stages are current
    second_runs = {name: (run / name / "run.json").read_text() for name in ("model_b", "sae_reseed")}
    result = pipeline.run(cfg, run, "universality", force=True)
    assert [(s.name, s.skipped) for s in result.stages][-1] == ("universality", False)
    assert {name: (run / name / "run.json").read_text() for name in second_runs} == second_runs
