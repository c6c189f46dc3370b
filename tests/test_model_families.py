"""Models beyond GPT-2: tiny randomly initialised GPT-NeoX (Pythia) and Llama folders, built offline,
load with the logits of ``transformers`` and run through the pipeline to the feature store."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_corpus_text

from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.lm.config import LMConfig
from monosemantic.lm.model import load_external_lm


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        rotary_pct=0.25,  # Pythia's partial rotary embedding
    )
    return GPTNeoXForCausalLM(cfg)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg)


# "llama" in the folder's name: TransformerLens picks configs by name, our loader must not let it
FAMILIES = {"pythia-tiny": _neox, "tiny-llama": _llama}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def hf_folder(request, tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    from monosemantic.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("hf") / request.param
    tok = train_tokenizer(iter(make_corpus_text().split("\n\n\n")), 300)
    torch.manual_seed(0)
    FAMILIES[request.param]().save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    return out


def test_logits_equal_transformers(hf_folder):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_external_lm(LMConfig(hf_model_dir=str(hf_folder)))
    ids = torch.tensor([tokenizer("God blesses the king. The cat sat on the mat.")["input_ids"]])
    expected = AutoModelForCausalLM.from_pretrained(hf_folder)(ids).logits
    assert expected.abs().max() > 0.1  # random weights, but not a degenerate model
    torch.testing.assert_close(model(ids), expected, rtol=0, atol=1e-4)
    assert {"blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"} <= set(model.hook_dict)


def test_pipeline_runs_through_analysis(hf_folder, tmp_path, corpus_file):
    from monosemantic import pipeline
    from monosemantic.config import load_config

    cfg = load_config(
        "tiny",
        overrides=[
            f"lm.hf_model_dir={hf_folder}",
            "lm.hook_name=blocks.1.mlp.hook_post",
            f"corpus.corpus={corpus_file}",
            "corpus.val_fraction=0.2",
            "sae.sizes=[96]",
            "analysis.n_scored_units=8",
        ],
    )
    pipeline.run(cfg, tmp_path / "run", "analysis")
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["harvest"]["val"]["d_in"] == 64 and manifest["lm"]["external"] == str(hf_folder)
    assert 0 < manifest["sae"]["saes"][0]["fvu"] < 1
    store = FeatureStore(tmp_path / "run" / FILENAME)
    assert {d["name"]: d["n_units"] for d in store.dictionaries()} == {"neurons": 64, cfg.sae.variant + "-96": 96}
    fired = max(range(96), key=lambda f: store.unit(cfg.sae.variant + "-96", f)["fire_count"])
    assert store.unit(cfg.sae.variant + "-96", fired)["fire_count"] > 0
    assert store.logits(cfg.sae.variant + "-96", fired)["top"]
