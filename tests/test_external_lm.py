"""Bringing your own model: a local Hugging Face directory, loaded offline onto hook points."""

import json

import pytest
import torch
from conftest import make_corpus_text

from monosemantic.corpus.tokenizer import train_tokenizer
from monosemantic.errors import UserError
from monosemantic.lm.config import LMConfig
from monosemantic.lm.model import load_external_lm


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tok = train_tokenizer(iter(make_corpus_text().split("\n\n\n")), 300)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    cfg = GPT2Config(
        vocab_size=len(hf_tok), n_positions=64, n_ctx=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def test_local_hf_model_matches_transformers(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_external_lm(LMConfig(hf_model_dir=str(tiny_gpt2_dir)))
    ids = torch.tensor([tokenizer("God blesses the king.")["input_ids"]])
    expected = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)(ids).logits
    assert torch.allclose(model(ids), expected, atol=1e-4)
    assert "blocks.0.mlp.hook_post" in model.hook_dict and model.cfg.d_mlp == 128


def test_pipeline_with_local_hf_model(tiny_gpt2_dir, tmp_path, corpus_file):
    from monosemantic import pipeline
    from monosemantic.config import load_config

    cfg = load_config(
        "tiny",
        overrides=[f"lm.hf_model_dir={tiny_gpt2_dir}", "corpus.val_fraction=0.2", f"corpus.corpus={corpus_file}"],
    )
    pipeline.run(cfg, tmp_path / "run", "harvest")
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["lm"]["external"] == str(tiny_gpt2_dir)
    assert manifest["corpus"]["vocab_size"] == 300  # the model's own tokenizer, not a new one
    assert manifest["harvest"]["train"]["d_in"] == 128


def test_missing_hf_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_external_lm(LMConfig(hf_model_dir=str(tmp_path)))
