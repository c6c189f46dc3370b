"""SAELens on-disk layout: our folders load in SAELens with the same latents, and back."""

from __future__ import annotations

import json

import pytest
import torch

from monosemantic.errors import UserError
from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.io import load_sae, save_sae

sae_lens = pytest.importorskip("sae_lens")
D, F = 12, 40


def _trained_looking(variant: str):
    kw = {"k": 5} if "topk" in variant else {}
    cfg = SAEConfig(variant=variant, d_in=D, d_sae=F, seed=3, **kw)
    sae = build_sae(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        if variant == "batchtopk":
            sae.threshold.fill_(0.3)
        if variant == "jumprelu":
            sae.log_threshold.copy_(torch.rand(F, generator=g).log())
    return cfg, sae.eval()


@pytest.mark.parametrize("variant", ["standard", "standard2024", "topk", "batchtopk", "jumprelu"])
def test_sae_lens_loads_our_folder_with_identical_latents(variant, tmp_path):
    cfg, ours = _trained_looking(variant)
    save_sae(ours, cfg, tmp_path / "sae", extra={"hook_name": "blocks.0.mlp.hook_post"})
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    assert theirs.cfg.architecture() == {"batchtopk": "jumprelu", "standard2024": "standard"}.get(variant, variant)
    assert theirs.cfg.metadata.hook_name == "blocks.0.mlp.hook_post"
    x = torch.randn(64, D) * 2
    with torch.no_grad():
        ours_latents, their_latents = ours.encode(x), theirs.encode(x)
        assert (ours_latents != 0).any() and (ours_latents == 0).any()
        torch.testing.assert_close(their_latents, ours_latents, rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["standard", "standard2024", "topk", "batchtopk", "jumprelu"])
def test_our_folder_round_trips_exactly(variant, tmp_path):
    cfg, ours = _trained_looking(variant)
    save_sae(ours, cfg, tmp_path / "sae")
    back = load_sae(tmp_path / "sae")
    assert type(back) is type(ours) and back.cfg == cfg
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_we_load_sae_lens_folders(architecture, tmp_path):
    from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    cls, cfg_cls = {
        "standard": (StandardSAE, StandardSAEConfig),
        "topk": (TopKSAE, TopKSAEConfig),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
    }[architecture]
    kw = {"k": 6, "rescale_acts_by_decoder_norm": True} if architecture == "topk" else {}
    theirs = cls(cfg_cls(d_in=D, d_sae=F, apply_b_dec_to_input=architecture != "standard", **kw))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if architecture == "jumprelu":
            theirs.threshold.abs_()
    theirs.save_model(tmp_path / "theirs")
    ours = load_sae(tmp_path / "theirs")
    x = torch.randn(64, D)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        if architecture != "topk":  # rescaled TopK latents are defined up to the folded norms
            torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)


def test_corrupt_or_foreign_folders_give_user_errors(tmp_path):
    cfg, ours = _trained_looking("topk")
    folder = save_sae(ours, cfg, tmp_path / "sae")
    with pytest.raises(UserError, match="missing cfg.json"):
        load_sae(tmp_path / "nowhere")
    weights = folder / "sae_weights.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="unreadable safetensors"):
        load_sae(folder)
    weights.write_bytes(blob)
    cfg_json = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid SAE config"):
        load_sae(folder)
    foreign = {k: v for k, v in cfg_json.items() if k != "metadata"} | {"architecture": "matching_pursuit"}
    (folder / "cfg.json").write_text(json.dumps(foreign))
    with pytest.raises(UserError, match="'matching_pursuit' is not supported"):
        load_sae(folder)
    wrong_width = {k: v for k, v in cfg_json.items() if k != "metadata"} | {"d_in": D + 1}
    (folder / "cfg.json").write_text(json.dumps(wrong_width))
    with pytest.raises(UserError, match="has shape"):
        load_sae(folder)


def test_failed_save_leaves_previous_folder_intact(tmp_path):
    cfg, ours = _trained_looking("standard")
    folder = save_sae(ours, cfg, tmp_path / "sae")
    before = (folder / "sae_weights.safetensors").read_bytes()
    with pytest.raises(TypeError):
        save_sae(ours, cfg, folder, extra={"bad": object()})  # not JSON-serialisable
    assert (folder / "sae_weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
