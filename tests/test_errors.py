"""Bad input becomes one UserError line; a bug in our code (a TypeError, an AttributeError) keeps its
type and traceback. Each loader below is given both: a bad file or name, and an injected bug."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from monosemantic.corpus import sources, tokenizer
from monosemantic.errors import UserError
from monosemantic.lm import model as lm_model
from monosemantic.lm.config import LMConfig
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae
from monosemantic.sae.standard import StandardSAE

set_quiet(True)


def _raises(error: BaseException):
    def fail(*_, **__):
        raise error

    return fail


def test_tokenizer_file(tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="not a tokenizers JSON file"):
        tokenizer.load_tokenizer(path)
    monkeypatch.setattr(tokenizer, "Tokenizer", types.SimpleNamespace(from_file=_raises(TypeError("bug"))))
    with pytest.raises(TypeError, match="bug"):
        tokenizer.load_tokenizer(path)


@pytest.mark.parametrize(
    "error, expected",
    [
        (FileNotFoundError("no such dataset"), UserError),
        (ValueError("Bad split: nope"), UserError),
        (TypeError("bug"), TypeError),
    ],
)
def test_hf_dataset(monkeypatch, error, expected):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=_raises(error)))
    with pytest.raises(expected):
        next(sources._iter_hf_dataset("someone/texts", "train", "text", None))


def test_saved_lm(tiny_run, tmp_path, monkeypatch):
    import shutil

    lm_dir = tmp_path / "lm"
    shutil.copytree(tiny_run / "lm", lm_dir)
    (lm_dir / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(UserError, match="corrupt or foreign"):
        lm_model.load_lm(lm_dir)
    (lm_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="corrupt or foreign"):
        lm_model.load_lm(lm_dir)
    shutil.copy(tiny_run / "lm" / "config.json", lm_dir / "config.json")
    monkeypatch.setattr(lm_model, "build_lm", _raises(AttributeError("bug")))
    with pytest.raises(AttributeError, match="bug"):
        lm_model.load_lm(lm_dir)


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError("network unreachable"), UserError),
        (ValueError("gelu-9l not found"), UserError),
        (TypeError("bug"), TypeError),
    ],
)
def test_pretrained_lm(monkeypatch, error, expected):
    monkeypatch.setattr(lm_model.HookedTransformer, "from_pretrained", _raises(error))
    with pytest.raises(expected):
        lm_model.load_external_lm(LMConfig(pretrained="gelu-9l"))


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError("no weights file"), UserError),
        (NotImplementedError("architecture not supported"), UserError),
        (TypeError("bug"), TypeError),
    ],
)
def test_hf_model_dir(tmp_path, monkeypatch, error, expected):
    import transformers

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")  # present: loading it is what fails
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _raises(error))
    with pytest.raises(expected):
        lm_model.load_external_lm(LMConfig(hf_model_dir=str(tmp_path)))


def test_sae_checkpoint(tmp_path, monkeypatch):
    cfg = SAEConfig(d_in=8, d_sae=16, n_samples=64, batch_size=32, checkpoint_every=32)
    x_ND = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    train_sae(cfg, iter(x_ND.split(32)), x_ND, checkpoint_dir=tmp_path)
    monkeypatch.setattr(StandardSAE, "load_state_dict", _raises(AttributeError("bug")))
    with pytest.raises(AttributeError, match="bug"):
        train_sae(cfg, iter(x_ND.split(32)), x_ND, checkpoint_dir=tmp_path)
    monkeypatch.setattr(StandardSAE, "load_state_dict", _raises(RuntimeError("size mismatch for W_dec")))
    with pytest.raises(UserError, match="corrupt or not ours"):
        train_sae(cfg, iter(x_ND.split(32)), x_ND, checkpoint_dir=tmp_path)
