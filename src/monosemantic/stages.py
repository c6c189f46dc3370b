"""The stages of ``monosemantic run``, each reading from and writing into the run directory.

corpus → lm → harvest → (sae, analysis, …); toy stands apart. Each ``*_stage(cfg)`` returns a
``Stage`` whose ``run`` does the work and returns the figures that go into ``run.json``.
"""

from __future__ import annotations

import torch

from monosemantic.activations.harvest import harvest_activations
from monosemantic.config import RunConfig
from monosemantic.corpus.shards import TokenShards, write_token_shards
from monosemantic.corpus.sources import iter_documents
from monosemantic.corpus.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from monosemantic.device import resolve_device
from monosemantic.lm.baselines import baseline_losses
from monosemantic.lm.model import load_lm, save_lm
from monosemantic.lm.train import evaluate_lm, train_lm
from monosemantic.pipeline import RunDir, Stage


def corpus_stage(cfg: RunConfig) -> Stage:
    c = cfg.corpus

    def documents():
        return iter_documents(c.corpus, c.dataset, c.dataset_split, c.text_field, c.max_docs)

    def run(rd: RunDir) -> dict:
        chars = {"n": 0}

        def counted():
            for doc in documents():
                chars["n"] += len(doc)
                yield doc

        tokenizer = train_tokenizer(counted(), c.vocab_size)
        save_tokenizer(tokenizer, rd / "tokenizer.json")
        figures = write_token_shards(documents(), tokenizer, rd / "tokens", c.val_fraction)
        figures["chars"] = chars["n"]
        figures["source"] = c.dataset or c.corpus or "bundled"
        return figures

    return Stage("corpus", c.model_dump(), run, ["tokenizer.json", "tokens/index.json"])


def lm_stage(cfg: RunConfig) -> Stage:
    device = resolve_device(cfg.device)

    def run(rd: RunDir) -> dict:
        checkpoint = rd / "lm_checkpoint.pt"
        model, figures = train_lm(cfg.lm, rd / "tokens", checkpoint, device)
        train, val = TokenShards(rd / "tokens", "train"), TokenShards(rd / "tokens", "val")
        figures["val_loss"] = evaluate_lm(model, val, cfg.lm.n_ctx, None, device=device)
        figures.update(baseline_losses(train, val, cfg.lm.n_ctx))
        figures["n_params"] = sum(p.numel() for p in model.parameters())
        save_lm(model.cpu(), cfg.lm, rd / "lm")
        checkpoint.unlink(missing_ok=True)
        return figures

    return Stage("lm", cfg.lm.model_dump(), run, ["lm/model.safetensors"], needs=["corpus"])


def harvest_stage(cfg: RunConfig) -> Stage:
    device = resolve_device(cfg.device)
    h = cfg.harvest

    def run(rd: RunDir) -> dict:
        model = load_lm(rd / "lm", device)
        figures = {}
        for split, n_tokens in (("train", h.n_train_tokens), ("val", h.n_val_tokens)):
            shards = TokenShards(rd / "tokens", split)
            figures[split] = harvest_activations(model, shards, cfg.lm.hook_name, n_tokens,
                                                 cfg.lm.n_ctx, h.batch_size,
                                                 rd / f"activations/{split}", h.dtype, device)
        return figures

    return Stage("harvest", {**h.model_dump(), "hook_name": cfg.lm.hook_name}, run,
                 ["activations/train/store.json", "activations/val/store.json"], needs=["lm"])


def load_run_lm(rd: RunDir, device: torch.device | str = "cpu"):
    """The run's trained LM and tokenizer."""
    return load_lm(rd / "lm", device), load_tokenizer(rd / "tokenizer.json")


def all_stages(cfg: RunConfig) -> list[Stage]:
    """Every stage of ``monosemantic run``, in order."""
    return [corpus_stage(cfg), lm_stage(cfg), harvest_stage(cfg)]
