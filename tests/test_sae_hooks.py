"""A sweep over several hook points from one harvest (``harvest.extra_hooks``): SAEs trained at each,
analysed over their own hook point's activations, splitting per hook point, the browser grouping them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_browser import browser, wait_for  # noqa: F401 — the Chromium fixture (skips where none is installed)

from monosemantic import pipeline
from monosemantic.activations import ActivationStore
from monosemantic.activations.stream import ActivationStream
from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.browser.export import export_site
from monosemantic.browser.run_view import RunView
from monosemantic.config import load_config
from monosemantic.distributed import World, run_local_world
from monosemantic.errors import UserError
from monosemantic.lm.model import load_lm
from monosemantic.pipeline import RunDir
from monosemantic.progress import set_quiet
from monosemantic.sae.io import load_sae, saved_hook_name
from monosemantic.sae.metrics import evaluate_sae
from monosemantic.stages import sae_stage, second_run_config, splitting_stage, train_activations

MLP, RESID = "blocks.0.mlp.hook_post", "blocks.0.hook_resid_post"  # widths 64 and 32 in the tiny preset
NAMES = ["standard-64", "standard-128", f"standard-64@{RESID}", f"standard-128@{RESID}"]


def _config(corpus, *more: str):
    return load_config(
        "tiny",
        overrides=[
            "corpus.val_fraction=0.2",
            f"corpus.corpus={corpus}",
            f"harvest.extra_hooks=[{RESID}]",
            "sae.n_samples=8192",
            "feature_map.method=pca",  # umap-learn takes seconds to start
            *more,
        ],
    )


@pytest.fixture(scope="module")
def hooks_run(tiny_run, tmp_path_factory):
    """The tiny run with one more hook point, carried through analysis and splitting."""
    run = tmp_path_factory.mktemp("hooks") / "run"
    shutil.copytree(tiny_run, run)
    cfg = _config(tiny_run.parent / "corpus.txt")
    pipeline.run(cfg, run, "analysis")
    pipeline.run(cfg, run, "splitting")
    return run, cfg


def test_the_sweep_trains_each_size_at_each_hook_point(hooks_run):
    run, cfg = hooks_run
    entries = {e["name"]: e for e in RunDir(run).manifest["sae"]["saes"]}
    assert list(entries) == NAMES
    val = {MLP: ActivationStore(run / "activations/val"), RESID: ActivationStore(run / f"activations/val@{RESID}")}
    for name, entry in entries.items():
        hook = RESID if "@" in name else MLP
        sae = load_sae(run / "saes" / name)
        assert entry["hook_name"] == saved_hook_name(run / "saes" / name) == hook
        assert sae.cfg.d_in == entry["config"]["d_in"] == {MLP: 64, RESID: 32}[hook]
        # its figures were measured on its own hook point's held-out activations
        measured = evaluate_sae(sae, (chunk for _, chunk in val[hook].iter_chunks(65_536)))
        assert measured["fvu"] == pytest.approx(entry["fvu"], rel=1e-5)
        assert measured["l0"] == pytest.approx(entry["l0"], rel=1e-5)
    summary = pipeline.run(cfg, run, "sae").stages[-1]
    assert summary.skipped and summary.summary == f"4 standard SAEs: 64, 128 at {MLP}; 64, 128 at {RESID}"


def _sweep_by_sizes(here: World, run, corpus) -> dict:
    set_quiet(True)
    pipeline.run(_config(corpus, "sae.shard=sizes"), run, "sae", force=True)
    return RunDir(run).manifest["sae"] if here.is_main else {}


def test_a_sweep_spread_over_two_ranks_trains_the_same_saes_at_each_hook_point(hooks_run, tmp_path):
    run, cfg = hooks_run
    shutil.copytree(run, tmp_path / "run")
    figures, _ = run_local_world(_sweep_by_sizes, (tmp_path / "run", cfg.corpus.corpus), 2, timeout_s=300)
    one = RunDir(run).manifest["sae"]["saes"]
    assert [(e["name"], e["hook_name"]) for e in figures["saes"]] == [(e["name"], e["hook_name"]) for e in one]
    for mine, theirs in zip(figures["saes"], one):  # rank 0 trained the 64s, rank 1 the 128s
        for key in ("fvu", "l0", "loss_recovered"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), (mine["name"], key)


def test_without_extra_hooks_names_and_config_hash_are_as_before(tmp_path):
    cfg = load_config("tiny")
    stage = sae_stage(cfg)
    # the config the stage had before it knew hook points: unchanged hash for existing runs
    assert stage.config == {**cfg.sae.model_dump(exclude={"shard"}), "hook_name": MLP, "stream_train": False}
    assert stage.artifacts == ["saes/standard-64/cfg.json", "saes/standard-128/cfg.json"]
    assert splitting_stage(cfg).artifacts == ["splitting/families.json", "feature_map/map.json"]
    with_extra = _config(tmp_path / "corpus.txt")
    assert sae_stage(with_extra).config["extra_hooks"] == [RESID]
    # universality compares the main hook point: its second runs train no SAE at the extra ones
    assert second_run_config(with_extra, 128, model_b=True).harvest.extra_hooks == []
    assert second_run_config(with_extra, 64, model_b=False).harvest.extra_hooks == []


def test_an_unknown_extra_hook_point_stops_before_any_work(tmp_path):
    cfg = load_config("tiny", overrides=["harvest.extra_hooks=[blocks.0.hook_resid_postt]"])
    with pytest.raises(
        UserError, match=r"harvest.extra_hooks: blocks.0.hook_resid_postt is not a hook point of this mo"
    ):
        pipeline.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = load_config("tiny", overrides=["harvest.extra_hooks=[blocks.0.attn.hook_z]"])
    with pytest.raises(
        UserError, match=r"harvest.extra_hooks: blocks.0.attn.hook_z carries \[2, 16\] per token, not one"
    ):
        pipeline.run(cfg, tmp_path / "run")


def test_each_sae_is_analysed_over_its_own_hook_point(hooks_run):
    run, _ = hooks_run
    store = FeatureStore(run / FILENAME)
    assert {d["name"]: (d["n_units"], d["d_in"]) for d in store.dictionaries()} == {
        "neurons": (64, 64),
        "standard-64": (64, 64),
        "standard-128": (128, 64),
        f"standard-64@{RESID}": (64, 32),
        f"standard-128@{RESID}": (128, 32),
    }
    analysis = RunDir(run).manifest["analysis"]
    assert analysis["feature_dictionary"] == "standard-128"  # the main hook point's largest, listed first
    name, n = f"standard-64@{RESID}", analysis["n_tokens"]
    acts_NF = load_sae(run / "saes" / name).encode(
        torch.from_numpy(ActivationStore(run / f"activations/val@{RESID}").read_range(0, n)).float()
    )
    for unit in range(0, 64, 9):
        assert store.unit(name, unit)["max_act"] == pytest.approx(acts_NF[:, unit].max().item(), rel=1e-4)


def test_splitting_and_the_feature_map_stay_within_a_hook_point(hooks_run):
    run, _ = hooks_run
    splitting = RunDir(run).manifest["splitting"]
    main = json.loads((run / "splitting/families.json").read_text())
    other = json.loads((run / f"splitting/families@{RESID}.json").read_text())
    assert (main["hook_name"], main["saes"]) == (MLP, NAMES[:2])
    assert (other["hook_name"], other["saes"]) == (RESID, NAMES[2:])
    assert [(k["from"], k["to"]) for k in other["links"]] == [(NAMES[2], NAMES[3])]
    found = splitting["by_hook"][RESID]
    assert found["split_families"] == sum(
        np.bincount([p for p in other["links"][0]["parent"] if p >= 0], minlength=64) >= 2
    )
    assert all(p.startswith(f"splitting/family@{RESID}_") for p in found["artifacts"]["pictures"])
    assert not any("@" in p for p in splitting["artifacts"]["pictures"])
    points = json.loads((run / f"feature_map/map@{RESID}.json").read_text())["points"]
    assert len(points) == 64 + 128 and {p["sae"] for p in points} == set(NAMES[2:])
    assert {p["sae"] for p in json.loads((run / "feature_map/map.json").read_text())["points"]} == set(NAMES[:2])


def test_the_browser_groups_dictionaries_by_hook_point(hooks_run):
    run, _ = hooks_run
    view = RunView(run)
    hooks = {d["name"]: d.get("hook_name") for d in view.overview()["dictionaries"]}
    assert hooks == {"neurons": None, **{n: RESID if "@" in n else MLP for n in NAMES}}
    family = view.family(NAMES[2], 0)
    assert family["descendants"][0]["sae"] == NAMES[3]  # a family of the extra hook point's sizes
    assert [row.get("hook_name") for row in view.overview()["splitting"]] == [None, RESID]


def test_streamed_training_reads_each_hook_point(tiny_run):
    cfg = _config(tiny_run.parent / "corpus.txt", "harvest.stream_train=true")
    model = load_lm(tiny_run / "lm")
    stream = train_activations(RunDir(tiny_run), cfg, model, RESID)
    assert isinstance(stream, ActivationStream) and (stream.hook_name, stream.d_in) == (RESID, 32)
    assert train_activations(RunDir(tiny_run), cfg, model).hook_name == MLP


def test_ui_overview_lists_each_hook_points_dictionaries(browser, hooks_run, tmp_path):  # noqa: F811 — the fixture
    import socket
    import threading
    import time

    import uvicorn

    from monosemantic.browser.app import create_app

    run, _ = hooks_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait_for(browser, "#dictionaries", NAMES[3])
        rows = [r.text.split(" ")[0] for r in browser.find_elements("css selector", "#dictionaries tbody tr")]
        assert rows == ["at", "neurons", *NAMES[:2], "at", *NAMES[2:]]  # each group under its hook point's row
        groups = [g.text for g in browser.find_elements("css selector", "#dictionaries tr.hook-group")]
        assert groups == [f"at {MLP}", f"at {RESID}"]
        browser.get(f"http://127.0.0.1:{port}/#/feature/{NAMES[3].replace('@', '%40')}/0")
        wait_for(browser, "h1", NAMES[3])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    export_site(run, tmp_path / "site", max_units=2)  # from disk, "@" reaches the data file URL-encoded
    browser.get((tmp_path / "site" / "index.html").as_uri() + f"#/feature/{NAMES[3].replace('@', '%40')}/1")
    wait_for(browser, "h1", NAMES[3])
