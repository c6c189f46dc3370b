"""SAEs on disk in SAELens's layout: ``cfg.json`` + ``sae_weights.safetensors``.

What we write is what ``sae_lens.SAE.load_from_disk`` reads (SAELens ≥ 6 config layout):
architecture ``standard`` / ``topk`` / ``jumprelu`` with tensors ``W_enc`` [D, F], ``b_enc`` [F],
``W_dec`` [F, D], ``b_dec`` [D] (+ ``threshold`` [F] for JumpReLU; BatchTopK is stored as JumpReLU
with its global threshold in every entry, as SAELens does). Our own config rides along in
``metadata.monosemantic`` so that ``load_sae`` gets the exact variant back; folders written by
SAELens load too: ``standard``, ``topk``, ``jumprelu`` (also what SAELens saves a trained BatchTopK
or Matryoshka BatchTopK as) and ``gated``, which is exactly a JumpReLU SAE (``_fold_gated``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from monosemantic import __version__
from monosemantic.atomic import atomic_path
from monosemantic.errors import UserError, invalid_config
from monosemantic.sae.base import SparseAutoencoder
from monosemantic.sae.build import build_sae
from monosemantic.sae.config import SAEConfig

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SAELENS_LAYOUT_VERSION = "6.0.0"  # the SAELens release whose cfg.json layout we write
_FOREIGN_VARIANT = {"standard": "standard", "topk": "topk", "jumprelu": "jumprelu", "gated": "jumprelu"}
READABLE_ARCHITECTURES = tuple(_FOREIGN_VARIANT)


def save_sae(sae: SparseAutoencoder, cfg: SAEConfig, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` into ``folder`` (replaced atomically; nothing half-written survives).

    ``extra`` (e.g. ``hook_name``, ``model_name``, metrics) is merged into the config's
    ``metadata``, where SAELens keeps such facts. Returns ``folder``.
    """
    folder = Path(folder)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in sae.saelens_tensors().items()}
    saelens_cfg = {
        "architecture": sae.saelens_architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **sae.saelens_fields(),
        "metadata": {
            "sae_lens_version": SAELENS_LAYOUT_VERSION,
            **(extra or {}),
            "monosemantic": {"version": __version__, "config": cfg.model_dump(mode="json")},
        },
    }
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS_FILENAME))
        (tmp / CFG_FILENAME).write_text(json.dumps(saelens_cfg, indent=2) + "\n")
    return folder


def load_sae(folder: str | Path, device: str = "cpu") -> SparseAutoencoder:
    """Load an SAE saved by ``save_sae`` or by SAELens (standard, topk, jumprelu, gated), in eval mode.

    A missing, corrupt or unsupported folder raises ``UserError``.
    """
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise UserError(f"SAE folder {folder}: missing {path.name}")
    try:
        raw = json.loads(cfg_path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{cfg_path}: not a valid SAE config ({err})") from None
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{weights_path}: unreadable safetensors file ({err})") from None

    cfg = _config_from(raw, cfg_path)
    tensors = _to_our_convention(raw, tensors, weights_path)
    sae = build_sae(cfg)
    expected = {name: t.shape for name, t in sae.saelens_tensors().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(f"{weights_path}: missing tensor {name!r} for a {cfg.variant} SAE")
        if tensors[name].shape != shape:
            raise UserError(
                f"{weights_path}: tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(shape)}"
            )
    sae.load_saelens_tensors({name: tensors[name].float() for name in expected})
    return sae.to(device).eval()


def saved_hook_name(folder: str | Path) -> str | None:
    """The hook point a saved SAE's config names (SAELens ≥ 6: ``metadata.hook_name``; older
    releases: ``hook_name``), or None."""
    try:
        raw = json.loads((Path(folder) / CFG_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    return (raw.get("metadata") or {}).get("hook_name") or raw.get("hook_name")


def _config_from(raw: dict[str, Any], cfg_path: Path) -> SAEConfig:
    ours = (raw.get("metadata") or {}).get("monosemantic")
    try:
        if ours is not None:
            return SAEConfig.model_validate(ours["config"])
        architecture = raw.get("architecture", "standard")
        if architecture not in _FOREIGN_VARIANT:
            raise UserError(
                f"{cfg_path}: SAE architecture {architecture!r} is not supported "
                f"(SAELens's {', '.join(READABLE_ARCHITECTURES)} are, and sparsify's topk)"
            )
        if raw.get("normalize_activations", "none") not in ("none", None, False):
            raise UserError(
                f"{cfg_path}: normalize_activations={raw['normalize_activations']!r} is not supported "
                "(fold it into the weights first)"
            )
        if raw.get("reshape_activations", "none") != "none":
            raise UserError(f"{cfg_path}: reshape_activations={raw['reshape_activations']!r} is not supported")
        fields: dict[str, Any] = {"variant": _FOREIGN_VARIANT[architecture], "d_in": raw["d_in"], "d_sae": raw["d_sae"]}
        if architecture == "topk":
            fields["k"] = raw.get("k", 100)
        return SAEConfig(**fields)
    except ValidationError as err:
        raise invalid_config(err, f"{cfg_path}: not a valid SAE config:") from None
    except (KeyError, TypeError) as err:
        raise UserError(f"{cfg_path}: not a valid SAE config ({type(err).__name__}: {err})") from None


def _to_our_convention(
    raw: dict[str, Any], tensors: dict[str, torch.Tensor], weights_path: Path
) -> dict[str, torch.Tensor]:
    """Fold SAELens options we do not model into the weights, exactly (same latents/outputs)."""
    try:
        tensors = {name: t.double() for name, t in tensors.items()}
        if raw.get("architecture") == "gated" and (raw.get("metadata") or {}).get("monosemantic") is None:
            tensors = _fold_gated(tensors)
        if not raw.get("apply_b_dec_to_input", True):
            # pre = x W_enc + b_enc  ==  (x − b_dec) W_enc + (b_enc + b_dec W_enc)
            tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
        if raw.get("architecture") == "topk" and raw.get("rescale_acts_by_decoder_norm", False):
            # TopK of pre·‖W_dec,f‖ and decoding with W_dec,f/‖W_dec,f‖: fold the norms in.
            norms_F = tensors["W_dec"].norm(dim=1).clamp_min(1e-8)
            tensors["W_enc"] = tensors["W_enc"] * norms_F
            tensors["b_enc"] = tensors["b_enc"] * norms_F
            tensors["W_dec"] = tensors["W_dec"] / norms_F[:, None]
    except (KeyError, RuntimeError) as err:
        raise UserError(f"{weights_path}: tensors do not fit the config ({type(err).__name__}: {err})") from None
    if not all(torch.isfinite(t).all() or name == "threshold" for name, t in tensors.items()):
        raise UserError(f"{weights_path}: weights contain NaN or inf")
    return tensors


def _fold_gated(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A gated SAE (Rajamanoharan et al. 2024, SAELens's ``gated``) as the JumpReLU SAE with the
    same latents. SAELens computes, with p = x̄ W_enc (x̄ = x − b_dec):

        latents = 1[p + b_gate > 0] · ReLU(p ⊙ e^r_mag + b_mag)

    With W_enc' = W_enc ⊙ e^r_mag, b_enc' = b_mag and pre = x̄ W_enc' + b_enc' the gate reads
    pre > θ for θ = b_mag − e^r_mag ⊙ b_gate (e^r_mag > 0 keeps the inequality's direction), so
    latents = ReLU(pre) · 1[pre > θ]: SAELens's JumpReLU, which ``JumpReLUSAE`` loads exactly
    (θ ≤ 0 becomes 0 there, where both are a plain ReLU)."""
    scale_F = tensors["r_mag"].exp()
    return {
        "W_enc": tensors["W_enc"] * scale_F,
        "b_enc": tensors["b_mag"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
        "threshold": tensors["b_mag"] - scale_F * tensors["b_gate"],
    }
