"""SAEs in EleutherAI sparsify's on-disk layout: one folder per hook point, ``cfg.json`` + ``sae.safetensors``.

sparsify's ``SparseCoder`` with ``activation="topk"`` computes, for x̄ = x − b_dec,

    latents = TopK_k(ReLU(x̄ Eᵀ + b_E)),      x̂ = latents W_dec + b_dec

from ``encoder.weight`` E [F, D], ``encoder.bias`` b_E [F], ``W_dec`` [F, D] and ``b_dec`` [D];
``cfg.json`` holds its ``SparseCoderConfig`` fields plus ``d_in``. ReLU and TopK commute on the
values they keep, so this is our TopK SAE with W_enc = Eᵀ, and the conversion is a copy both ways.
What our SAEs cannot express is refused with one line: the ``groupmax`` activation, transcoders,
skip connections, n-gram lookups.

sparsify names a folder after the module it hooked in the Hugging Face model (``layers.3``,
``layers.3.mlp``, ``gpt_neox.layers.3``, ``transformer.h.3``); ``transformer_lens_hook`` maps such
a path to the TransformerLens hook point that carries the same activations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from monosemantic.atomic import atomic_path
from monosemantic.errors import UserError
from monosemantic.sae.base import SparseAutoencoder
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.topk import TopKSAE

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae.safetensors"
_UNSUPPORTED_FLAGS = ("transcode", "skip_connection", "embed_skip", "gram_lookup")

# A module path's tail → the TransformerLens hook point with the same activations.
_HOOK_PATTERNS = (
    (re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)$"), "blocks.{}.hook_resid_post"),  # a block's output
    (re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.mlp$"), "blocks.{}.hook_mlp_out"),
    (re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.(?:self_attn|attn|attention)$"), "blocks.{}.hook_attn_out"),
)


def transformer_lens_hook(module_path: str) -> str | None:
    """``layers.3`` → ``blocks.3.hook_resid_post`` (``.mlp`` → ``hook_mlp_out``, ``.self_attn``/
    ``.attn``/``.attention`` → ``hook_attn_out``); None for a path we cannot place."""
    for pattern, hook in _HOOK_PATTERNS:
        match = pattern.search(module_path)
        if match:
            return hook.format(match.group(1))
    return None


def is_sparsify_folder(folder: Path) -> bool:
    return (Path(folder) / WEIGHTS_FILENAME).is_file()


def load_sparsify(folder: str | Path, device: str = "cpu") -> TopKSAE:
    """The TopK SAE in sparsify folder ``folder`` (eval mode); anything unreadable is a ``UserError``."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    try:
        raw = json.loads(cfg_path.read_text())
        d_in, k = int(raw["d_in"]), int(raw.get("k", 32))
        d_sae = int(raw.get("num_latents") or d_in * int(raw.get("expansion_factor", 32)))
    except FileNotFoundError:
        raise UserError(f"sparsify folder {folder}: missing {CFG_FILENAME}") from None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{cfg_path}: not a valid sparsify config ({type(err).__name__}: {err})") from None
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise UserError(f"{cfg_path}: sparsify activation {activation!r} is not supported (topk is)")
    flags = [flag for flag in _UNSUPPORTED_FLAGS if raw.get(flag)]
    if flags:
        raise UserError(f"{cfg_path}: sparsify option {flags[0]}=true is not supported (a plain TopK SAE is)")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{weights_path}: unreadable safetensors file ({err})") from None
    expected = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(f"{weights_path}: missing tensor {name!r} (sparsify has {', '.join(expected)})")
        if tuple(tensors[name].shape) != shape:
            raise UserError(
                f"{weights_path}: tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(shape)}"
            )
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise UserError(f"{weights_path}: weights contain NaN or inf")
    sae = TopKSAE(SAEConfig(variant="topk", d_in=d_in, d_sae=d_sae, k=min(k, d_sae)))
    sae.load_saelens_tensors(
        {
            "W_enc": tensors["encoder.weight"].float().T,
            "b_enc": tensors["encoder.bias"].float(),
            "W_dec": tensors["W_dec"].float(),
            "b_dec": tensors["b_dec"].float(),
        }
    )
    return sae.to(device).eval()


def save_sparsify(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write a TopK ``sae`` as sparsify's ``SparseCoder.load_from_disk`` reads it (atomically)."""
    if not isinstance(sae, TopKSAE) or sae.variant != "topk":
        raise UserError(f"sparsify's layout holds TopK SAEs; this one is {sae.variant} (export it as SAELens's)")
    folder = Path(folder)
    cfg: SAEConfig = sae.cfg
    sparsify_cfg = {
        "activation": "topk",
        "expansion_factor": max(cfg.d_sae // cfg.d_in, 1),
        "normalize_decoder": True,
        "num_latents": cfg.d_sae,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": cfg.d_in,
    }
    tensors = {
        "encoder.weight": sae.W_enc.detach().T,
        "encoder.bias": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file({k: v.to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILENAME))
        (tmp / CFG_FILENAME).write_text(json.dumps(sparsify_cfg, indent=2) + "\n")
    return folder
