"""The paper's one-layer transformer as a TransformerLens ``HookedTransformer``.

Towards Monosemanticity studies a transformer with one attention block and one ReLU MLP block
(residual width 128, 512 MLP neurons). Building it in TransformerLens gives every hook point for
free — above all ``blocks.0.mlp.hook_post``, the 512 post-ReLU neuron activations the sparse
autoencoders are trained on. Weights are saved as safetensors next to a JSON config.
"""

from __future__ import annotations

import difflib
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from monosemantic.atomic import atomic_path
from monosemantic.errors import UserError
from monosemantic.lm.config import LMConfig


def build_lm(cfg: LMConfig, vocab_size: int) -> HookedTransformer:
    """A freshly initialised transformer of ``cfg``'s shape (seeded)."""
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        d_mlp=cfg.d_mlp,
        n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads,
        n_ctx=cfg.n_ctx,
        d_vocab=vocab_size,
        act_fn=cfg.act_fn,
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=cfg.seed,
        device="cpu",
    )
    return HookedTransformer(tl_cfg, move_to_device=False)


def check_hook_name(cfg: LMConfig, vocab_size: int, extra_hooks: list[str] = ()) -> None:
    """``UserError`` unless ``cfg.hook_name`` and each of ``extra_hooks`` (``harvest.extra_hooks``)
    is a hook point of the model ``cfg`` describes, each extra one carrying one vector per token;
    checked before training, not after it (building the model seeds the global RNGs, so they are
    restored)."""
    with torch.random.fork_rng(devices=[]):
        numpy_state, python_state = np.random.get_state(), random.getstate()
        model = build_lm(cfg, vocab_size)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    hooks = model.hook_dict
    if cfg.hook_name not in hooks:
        mlp = ", ".join(h for h in hooks if h.startswith("blocks.0.mlp."))
        raise UserError(f"lm.hook_name={cfg.hook_name}: not a hook point of this model (its MLP's are {mlp})")
    for hook in extra_hooks:
        if hook not in hooks:
            near = difflib.get_close_matches(hook, list(hooks), n=3, cutoff=0.5) or list(hooks)[:3]
            raise UserError(
                f"harvest.extra_hooks: {hook} is not a hook point of this model (did you mean: {', '.join(near)})"
            )
    if extra_hooks:  # an SAE reads one vector per token: not per head or per key position
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names_filter=list(extra_hooks))
        for hook in extra_hooks:
            if cache[hook].dim() != 3:
                shape = list(cache[hook].shape[2:])
                raise UserError(f"harvest.extra_hooks: {hook} carries {shape} per token, not one vector")


def save_lm(model: HookedTransformer, cfg: LMConfig, out_dir: Path) -> None:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` atomically."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        config = {"lm": cfg.model_dump(), "vocab_size": model.cfg.d_vocab}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))


EXTERNAL_FILE = "external.json"
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def load_lm(model_dir: Path, device: torch.device | str = "cpu") -> HookedTransformer:
    """Load the run's LM: one saved by ``save_lm``, or the external model ``save_external_ref``
    points to. A missing or corrupt file is a ``UserError``."""
    model_dir = Path(model_dir)
    if (model_dir / EXTERNAL_FILE).exists():
        cfg = LMConfig(**json.loads((model_dir / EXTERNAL_FILE).read_text()))
        return load_external_lm(cfg, device)[0]
    try:
        config = json.loads((model_dir / "config.json").read_text())
        if not isinstance(config, dict):
            raise ValueError("config.json does not hold a JSON object")
        cfg = LMConfig.model_validate(config["lm"])
        model = build_lm(cfg, config["vocab_size"])
        state = load_file(model_dir / "model.safetensors")
        model.load_state_dict(state, strict=True)
    except FileNotFoundError as err:
        raise UserError(f"LM checkpoint {model_dir}: missing {Path(err.filename).name}") from None
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:  # json, pydantic, state dict
        raise UserError(
            f"LM checkpoint {model_dir}: corrupt or foreign ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    return model.to(device, print_details=False).eval()


def save_external_ref(cfg: LMConfig, out_dir: Path) -> None:
    """Record (not copy) which external model the run uses, for ``load_lm``."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        ref = {
            "pretrained": cfg.pretrained,
            "hf_model_dir": cfg.hf_model_dir,
            "hook_name": cfg.hook_name,
            "n_ctx": cfg.n_ctx,
        }
        (tmp / EXTERNAL_FILE).write_text(json.dumps(ref, indent=2))


def load_external_lm(cfg: LMConfig, device: torch.device | str = "cpu"):
    """An existing model: a TransformerLens pretrained name or a local Hugging Face directory.

    Returns (model, tokenizer), the tokenizer being the model's own (a HF fast tokenizer).
    Loading by name needs the network. A local directory is converted offline: its config.json
    is mapped to a TransformerLens config and its weights onto the hook points, unprocessed
    (no LayerNorm folding), so activations are exactly the original model's.
    """
    if cfg.pretrained:
        try:
            model = HookedTransformer.from_pretrained(cfg.pretrained, device=str(device))
        except (OSError, ValueError) as err:  # hub/network errors are OSError; an unknown name, ValueError
            raise UserError(
                f"lm.pretrained={cfg.pretrained}: could not load it ({type(err).__name__}: {str(err)[:200]})"
            ) from None
        return model.eval(), model.tokenizer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(cfg.hf_model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"lm.hf_model_dir={path}: not a Hugging Face model directory (no config.json)")
    if not any((path / name).is_file() for name in HF_WEIGHT_FILES):
        raise UserError(f"lm.hf_model_dir={path}: no weights (none of {', '.join(HF_WEIGHT_FILES)})")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if len(tokenizer) > hf_model.config.vocab_size:  # fewer is fine: models pad their vocabulary
            raise UserError(
                f"lm.hf_model_dir={path}: the tokenizer has {len(tokenizer):,} tokens, the model's "
                f"vocabulary {hf_model.config.vocab_size:,}; they do not belong together"
            )
        tl_cfg = HookedTransformerConfig(**_converted_config(path))
        state = loading.get_pretrained_state_dict(str(path), tl_cfg, hf_model=hf_model)
        model = HookedTransformer(tl_cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_and_process_state_dict(
            state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # incl. NotImplementedError: unsupported model
        raise UserError(f"lm.hf_model_dir={path}: could not load it ({type(err).__name__}: {str(err)[:200]})") from None
    return model.to(device, print_details=False).eval(), tokenizer


def _converted_config(path: Path) -> dict:
    """TransformerLens's config for the local HF folder ``path``, decided by its config.json.

    TransformerLens picks Llama and Gemma configs by name ("llama" anywhere in the path) without
    reading the folder, and fails on a local one; a neutrally named link makes it read config.json."""
    from transformer_lens import loading_from_pretrained as loading

    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "model"
        link.symlink_to(path.resolve(), target_is_directory=True)
        return loading.convert_hf_model_config(str(link))
