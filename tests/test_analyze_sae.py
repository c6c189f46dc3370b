"""``analyze-sae``: SAEs trained elsewhere (SAELens and sparsify folders with random weights) on a
tiny local Hugging Face model, at three hook points, analysed into a run the browser reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_corpus_text
from fastapi.testclient import TestClient
from test_browser import browser  # noqa: F401 — the Chromium fixture (skips where none is installed)

from monosemantic.activations import ActivationStore
from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.config import load_config
from monosemantic.errors import UserError
from monosemantic.lm.config import LMConfig
from monosemantic.lm.model import load_external_lm
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.formats import open_dictionary
from monosemantic.sae.sparsify import save_sparsify

sae_lens = pytest.importorskip("sae_lens")
RESID0, MLP1, RESID1 = "blocks.0.hook_resid_post", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"
SRC = str(Path(__file__).parent.parent / "src")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from monosemantic.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tok = train_tokenizer(iter(make_corpus_text().split("\n\n\n")), 300)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    cfg = GPT2Config(
        vocab_size=len(hf_tok), n_positions=64, n_ctx=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def _sae_lens_sae(folder: Path, architecture: str, d_in: int, d_sae: int, hook: str, seed: int) -> Path:
    from sae_lens import saes

    cls, cfg_cls, kw = {
        "standard": (saes.StandardSAE, saes.StandardSAEConfig, {}),
        "gated": (saes.GatedSAE, saes.GatedSAEConfig, {}),
    }[architecture]
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, **kw)
    cfg.metadata.hook_name = hook
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    sae.save_model(folder)
    return folder


@pytest.fixture(scope="module")
def sae_folders(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("saes")
    topk = build_sae(SAEConfig(variant="topk", d_in=32, d_sae=24, k=4, seed=5))  # smallest: sorts first by size
    return [
        _sae_lens_sae(root / "resid0-standard", "standard", 32, 40, RESID0, 1),
        _sae_lens_sae(root / "mlp1-gated", "gated", 128, 64, MLP1, 2),
        save_sparsify(topk, root / "sparsify" / "layers.1"),  # sparsify: the hook point is the folder's name
    ]


def _config(model: Path, corpus: Path, *more: str):
    overrides = [f"lm.hf_model_dir={model}", f"corpus.corpus={corpus}", "corpus.val_fraction=0.2", *more]
    return load_config("tiny", overrides=[*overrides, "analysis.n_scored_units=8"])


@pytest.fixture(scope="module")
def foreign_run(tiny_gpt2, sae_folders, tmp_path_factory) -> Path:
    from monosemantic.foreign import analyze_saes

    set_quiet(True)
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text(make_corpus_text())
    out = tmp_path_factory.mktemp("runs") / "foreign"
    analyze_saes(_config(tiny_gpt2, corpus), sae_folders, out)
    return out


def test_every_dictionary_is_analysed_at_its_own_hook(foreign_run, sae_folders, tiny_gpt2):
    store = FeatureStore(foreign_run / FILENAME)
    dicts = {d["name"]: d for d in store.dictionaries()}
    assert {n: (d["n_units"], d["d_in"]) for n, d in dicts.items()} == {
        "neurons": (32, 32),  # the first SAE's hook point: the residual stream after block 0
        "resid0-standard": (40, 32),
        "mlp1-gated": (64, 128),
        "layers.1": (24, 32),
    }
    manifest = json.loads((foreign_run / "run.json").read_text())
    entries = {e["name"]: e for e in manifest["sae"]["saes"]}
    assert entries["mlp1-gated"]["foreign"]["source"] == "SAELens gated"
    assert entries["layers.1"]["hook_name"] == RESID1 and entries["layers.1"]["foreign"]["source"] == "sparsify topk"

    model, _ = load_external_lm(LMConfig(hf_model_dir=str(tiny_gpt2)))
    for folder, name, hook in zip(sae_folders, ["resid0-standard", "mlp1-gated", "layers.1"], [RESID0, MLP1, RESID1]):
        acts = ActivationStore(foreign_run / "activations" / ("val" if hook == RESID0 else f"val@{hook}"))
        assert acts.hook_name == hook
        first = acts.read_range(0, 32)
        tokens = torch.from_numpy(acts.origin(np.arange(32))["token"].astype(np.int64))[None]
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        np.testing.assert_allclose(first, cache[hook][0].numpy(), atol=1e-5)  # the same tokens at every hook
        n = store.meta()["n_tokens"]
        latents_NF = open_dictionary(folder).sae.encode(torch.from_numpy(acts.read_range(0, len(acts))))
        max_F = latents_NF[:n].max(dim=0).values.clamp_min(0)
        stored = [store.unit(name, f)["max_act"] for f in range(latents_NF.shape[1])]
        np.testing.assert_allclose(stored, max_F.detach().numpy(), rtol=1e-4, atol=1e-5)
        assert entries[name]["l0"] == pytest.approx(float((latents_NF > 0).sum(1).float().mean()), rel=1e-4)


def test_browser_lists_and_labels_foreign_dictionaries(foreign_run):
    from monosemantic.browser.app import create_app

    client = TestClient(create_app(foreign_run), base_url="http://127.0.0.1")
    overview = client.get("/api/overview").json()
    by_name = {d["name"]: d for d in overview["dictionaries"]}
    assert by_name["mlp1-gated"]["foreign"]["source"] == "SAELens gated" and by_name["mlp1-gated"]["hook_name"] == MLP1
    assert "foreign" not in by_name["neurons"]
    assert {k: overview["lm"]["shape"][k] for k in ("n_layers", "d_model", "d_mlp")} == {
        "n_layers": 2,
        "d_model": 32,
        "d_mlp": 128,
    }  # the model's own shape, not the preset's
    page = client.get("/api/saes/mlp1-gated/features/3").json()
    assert page["dictionary"]["foreign"]["layout"] == "saelens" and page["logits"]["top"]
    live = client.post("/api/live", json={"text": "the king", "dictionary": "mlp1-gated"})
    assert live.status_code == 200  # run at blocks.1.mlp.hook_post, where the SAE reads


def test_bad_inputs_are_one_line_each(tiny_gpt2, sae_folders, tmp_path, corpus_file):
    from monosemantic.foreign import analyze_saes

    cfg = _config(tiny_gpt2, corpus_file)
    with pytest.raises(UserError, match=r"d_in 32 does not match blocks.1.mlp.hook_post's width 128"):
        analyze_saes(cfg, [sae_folders[0]], tmp_path / "a", hook=MLP1)
    with pytest.raises(UserError, match=r"'blocks.0.hook_resid_postt' is not in the model \(did you mean: "):
        analyze_saes(cfg, [sae_folders[0]], tmp_path / "b", hook="blocks.0.hook_resid_postt")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_gpt2 / "config.json").read_text())
    with pytest.raises(UserError, match="no weights"):
        analyze_saes(_config(no_weights, corpus_file), [sae_folders[0]], tmp_path / "c")
    from transformers import GPT2Config, GPT2LMHeadModel

    small = tmp_path / "small-vocab"  # a 100-token model beside the 300-token tokenizer of another
    GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(small)
    for f in tiny_gpt2.glob("tokenizer*"):
        (small / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="the tokenizer has 300 tokens, the model's vocabulary 100"):
        analyze_saes(_config(small, corpus_file), [sae_folders[0]], tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")  # checked before anything is written

    cfg_json = json.loads((sae_folders[0] / "cfg.json").read_text())
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "sae_weights.safetensors").write_bytes((sae_folders[0] / "sae_weights.safetensors").read_bytes())
    (odd / "cfg.json").write_text(json.dumps({**cfg_json, "architecture": "temporal"}))
    cli = subprocess.run(
        [sys.executable, "-m", "monosemantic", "analyze-sae", str(odd), "--model", str(tiny_gpt2), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert cli.stderr.count("\n") == 1 and "'temporal' is not supported (SAELens's standard, topk" in cli.stderr


@pytest.fixture(scope="module")
def foreign_server(foreign_run):
    import socket
    import threading
    import time

    import uvicorn

    from monosemantic.browser.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(foreign_run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


def test_ui_foreign_feature_page_renders(browser, foreign_server, foreign_run):  # noqa: F811 — the fixture
    from test_browser import wait_for

    browser.get(foreign_server + "/")
    wait_for(browser, "main table", "mlp1-gated")
    badges = [b.text for b in browser.find_elements("css selector", "main table .badge.foreign")]
    assert badges == [  # grouped by hook point
        "foreign: SAELens standard at blocks.0.hook_resid_post",
        "foreign: sparsify topk at blocks.1.hook_resid_post",
        "foreign: SAELens gated at blocks.1.mlp.hook_post",
    ]
    store = FeatureStore(foreign_run / FILENAME)
    unit = max(range(64), key=lambda u: store.unit("mlp1-gated", u)["fire_count"])
    browser.get(f"{foreign_server}/#/feature/mlp1-gated/{unit}")
    wait_for(browser, "#top-examples .ctx")
    assert browser.find_element("css selector", "h1 .badge.foreign").text == (
        "foreign: SAELens gated at blocks.1.mlp.hook_post"
    )
    centre = browser.find_element("css selector", "#top-examples .ctx .tok.center")
    assert float(centre.get_attribute("data-act")) == pytest.approx(store.unit("mlp1-gated", unit)["max_act"], abs=1e-3)


def test_a_runs_own_lm_is_reused_not_retrained(tiny_run, tmp_path):
    from monosemantic.foreign import analyze_saes, run_lm_config

    before = (tiny_run / "run.json").read_bytes()
    folders = [
        _sae_lens_sae(tmp_path / "mlp", "standard", 64, 80, "blocks.0.mlp.hook_post", 3),
        _sae_lens_sae(tmp_path / "resid", "gated", 32, 40, "blocks.0.hook_resid_post", 4),
    ]
    cfg = run_lm_config(tiny_run, ["analysis.n_scored_units=8"])
    result = analyze_saes(cfg, folders, tmp_path / "out", lm_run=tiny_run)
    ran = {s.name: s.skipped for s in result.stages}
    assert ran["corpus"] and ran["lm"] and not ran["harvest"]  # the run's corpus and LM, current: nothing retrained
    assert (tiny_run / "run.json").read_bytes() == before  # the source run is left alone
    store = FeatureStore(tmp_path / "out" / FILENAME)
    assert {d["name"]: d["n_units"] for d in store.dictionaries()} == {"neurons": 64, "mlp": 80, "resid": 40}
    assert store.constituents("mlp", 0) and not store.constituents("resid", 0)  # neurons live at the MLP


def test_extra_hook_points_come_from_the_same_forward_passes(foreign_run, tiny_gpt2, tmp_path, monkeypatch):
    from transformer_lens import HookedTransformer

    from monosemantic.activations.harvest import harvest_activations
    from monosemantic.corpus.shards import TokenShards

    model, _ = load_external_lm(LMConfig(hf_model_dir=str(tiny_gpt2)))
    stops = []
    real = HookedTransformer.run_with_hooks

    def counted(self, *args, **kwargs):
        stops.append(kwargs.get("stop_at_layer"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HookedTransformer, "run_with_hooks", counted)
    extra = {MLP1: tmp_path / "mlp1", RESID1: tmp_path / "resid1"}
    figures = harvest_activations(
        model, TokenShards(foreign_run / "tokens", "val"), RESID0, 1024, 32, 16, tmp_path / "resid0", extra_hooks=extra
    )
    assert stops == [2, 2]  # 1,024 tokens = 2 batches of 16 windows: one pass each, stopped after block 1
    assert figures["extra_hooks"] == {MLP1: 128, RESID1: 32}
    for hook, folder in [(RESID0, tmp_path / "resid0"), *extra.items()]:
        ours = ActivationStore(folder)
        run_store = ActivationStore(foreign_run / "activations" / ("val" if hook == RESID0 else f"val@{hook}"))
        np.testing.assert_array_equal(ours.read_range(0, len(ours)), run_store.read_range(0, len(run_store)))


def test_steering_acts_where_the_foreign_sae_reads(foreign_run, tiny_gpt2):
    """layers.1 reads blocks.1.hook_resid_post, as wide as the run's main hook point: only its
    saved hook point tells them apart."""
    from rich.console import Console

    from monosemantic.corpus.tokenizer import eos_id, load_tokenizer
    from monosemantic.interventions.cli import steer
    from monosemantic.interventions.steer import next_token_change, steering_hook
    from monosemantic.sae.io import load_sae

    result = steer(foreign_run, "layers.1", 2, "the king", value=25.0, n_tokens=0, console=Console(quiet=True))
    model, _ = load_external_lm(LMConfig(hf_model_dir=str(tiny_gpt2)))
    tokenizer = load_tokenizer(foreign_run / "tokenizer.json")
    tokens_T = torch.tensor([eos_id(tokenizer), *tokenizer.encode("the king").ids])
    hook = steering_hook(load_sae(foreign_run / "saes" / "layers.1"), 2, "clamp", 25.0)
    at_its_hook = next_token_change(model, RESID1, tokens_T, hook, 10)
    at_main_hook = next_token_change(model, RESID0, tokens_T, hook, 10)
    assert result["next_token"]["after"] == at_its_hook["after"] != at_main_hook["after"]
