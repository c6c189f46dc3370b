"""Foreign dictionaries: every architecture SAELens writes, and sparsify's layout, load with the same latents."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from monosemantic.errors import UserError
from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.formats import open_dictionary
from monosemantic.sae.io import save_sae
from monosemantic.sae.sparsify import load_sparsify, save_sparsify, transformer_lens_hook

sae_lens = pytest.importorskip("sae_lens")
D, F = 12, 40


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _sae_lens_folder(architecture: str, path):
    """A SAELens SAE with random weights, saved by SAELens itself, and SAELens's own reload of it."""
    from sae_lens import saes

    if architecture == "batchtopk":  # trained as BatchTopK, saved for inference as JumpReLU
        sae = saes.BatchTopKTrainingSAE(saes.BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=4))
        _randomise(sae)
        sae.topk_threshold = torch.tensor(0.4, dtype=torch.double)
        sae.save_inference_model(path)
    else:
        cls, cfg_cls, kw = {
            "standard": (saes.StandardSAE, saes.StandardSAEConfig, {}),
            "topk": (saes.TopKSAE, saes.TopKSAEConfig, {"k": 5}),
            "jumprelu": (saes.JumpReLUSAE, saes.JumpReLUSAEConfig, {}),
            "gated": (saes.GatedSAE, saes.GatedSAEConfig, {}),
        }[architecture]
        cfg = cfg_cls(d_in=D, d_sae=F, **kw)
        cfg.metadata.hook_name = "blocks.1.hook_resid_post"
        sae = cls(cfg)
        _randomise(sae)
        if architecture == "jumprelu":
            with torch.no_grad():
                sae.threshold.abs_()
        sae.save_model(path)
    return sae_lens.SAE.load_from_disk(path)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated", "batchtopk"])
def test_every_sae_lens_architecture_loads_with_identical_latents(architecture, tmp_path):
    theirs = _sae_lens_folder(architecture, tmp_path / "sae")
    d = open_dictionary(tmp_path / "sae")
    assert d.layout == "saelens" and d.foreign
    assert d.architecture == ("jumprelu" if architecture == "batchtopk" else architecture)
    if architecture != "batchtopk":
        assert d.hook_name == "blocks.1.hook_resid_post"
    x = torch.randn(256, D)
    with torch.no_grad():
        their_latents = theirs.encode(x)
        assert 0 < (their_latents != 0).float().mean() < 1  # the test can tell a sparsity rule apart
        torch.testing.assert_close(d.sae.encode(x), their_latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(d.sae(x), theirs(x), rtol=1e-5, atol=1e-5)


def _sparsify_reference(folder, x_BD):
    """sparsify's SparseCoder forward, written out: TopK(ReLU((x − b_dec) Eᵀ + b_E)) W_dec + b_dec."""
    from safetensors.torch import load_file

    t = {name: v.float() for name, v in load_file(str(folder / "sae.safetensors")).items()}
    k = json.loads((folder / "cfg.json").read_text())["k"]
    pre_BF = torch.relu((x_BD - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    vals, idx = pre_BF.topk(k, dim=1)
    latents_BF = torch.zeros_like(pre_BF).scatter_(1, idx, vals)
    return latents_BF, latents_BF @ t["W_dec"] + t["b_dec"]


def test_sparsify_export_round_trips_and_matches_sparsify_math(tmp_path):
    ours = build_sae(SAEConfig(variant="topk", d_in=D, d_sae=F, k=5, seed=2))
    _randomise(ours, 3)
    folder = save_sparsify(ours, tmp_path / "layers.2.mlp")
    x = torch.randn(128, D)
    latents, recon = _sparsify_reference(folder, x)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), recon, rtol=1e-5, atol=1e-5)
        back = load_sparsify(folder)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(back, name), getattr(ours, name), rtol=0, atol=0)
    d = open_dictionary(folder)
    assert (d.layout, d.architecture, d.hook_name) == ("sparsify", "topk", "blocks.2.hook_mlp_out")


def test_sparsify_folder_written_by_hand_loads(tmp_path):
    """A folder as sparsify's ``save_to_disk`` writes it (its config fields, bf16 weights)."""
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "gpt_neox.layers.3"
    folder.mkdir()
    tensors = {
        "encoder.weight": torch.randn(F, D, generator=g),
        "encoder.bias": torch.randn(F, generator=g) * 0.1,
        "W_dec": torch.randn(F, D, generator=g),
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }
    save_file({k: v.bfloat16() for k, v in tensors.items()}, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": F, "k": 6}
    (folder / "cfg.json").write_text(json.dumps({**cfg, "multi_topk": False, "skip_connection": False, "d_in": D}))
    d = open_dictionary(folder)
    assert d.hook_name == "blocks.3.hook_resid_post" and d.sae.cfg.k == 6
    x = torch.randn(64, D)
    latents, recon = _sparsify_reference(folder, x)
    with torch.no_grad():
        torch.testing.assert_close(d.sae.encode(x), latents, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(d.sae(x), recon, rtol=1e-4, atol=1e-4)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax", "d_in": D}))
    with pytest.raises(UserError, match="'groupmax' is not supported"):
        open_dictionary(folder)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "transcode": True, "d_in": D}))
    with pytest.raises(UserError, match="transcode=true is not supported"):
        open_dictionary(folder)


def test_hook_names_of_module_paths():
    assert transformer_lens_hook("layers.0") == "blocks.0.hook_resid_post"
    assert transformer_lens_hook("transformer.h.11") == "blocks.11.hook_resid_post"
    assert transformer_lens_hook("model.layers.4.self_attn") == "blocks.4.hook_attn_out"
    assert transformer_lens_hook("gpt_neox.layers.5.mlp") == "blocks.5.hook_mlp_out"
    assert transformer_lens_hook("embed_tokens") is None


def test_unreadable_dictionaries_say_what_we_read(tmp_path):
    ours = build_sae(SAEConfig(variant="standard", d_in=D, d_sae=F))
    folder = save_sae(ours, ours.cfg, tmp_path / "sae")
    assert open_dictionary(folder).layout == "monosemantic"
    raw = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**raw, "metadata": {}, "architecture": "matching_pursuit"}))
    with pytest.raises(UserError, match="'matching_pursuit' is not supported.*standard, topk, jumprelu, gated"):
        open_dictionary(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither SAELens's layout"):
        open_dictionary(tmp_path / "empty")
    with pytest.raises(UserError, match="holds TopK SAEs"):
        save_sparsify(ours, tmp_path / "out")
