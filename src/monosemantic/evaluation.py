"""``monosemantic eval``: SAEBench's core metrics for every SAE of a run, as SAEBench writes them.

A stage like the others (``eval``, after ``sae``): for each SAE it reads the held-out activations
at the SAE's hook point and the held-out token windows, and writes
``RUN/eval/core/<run>_<sae>_eval_results.json`` in the structure of SAEBench's ``CoreEvalOutput``
(``sae/saebench.py`` has the formulas); ``run.json`` keeps the headline numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from monosemantic.activations import ActivationStore
from monosemantic.activations.store import hook_store_dir
from monosemantic.atomic import write_json
from monosemantic.config import RunConfig
from monosemantic.corpus.shards import TokenShards
from monosemantic.errors import UserError, invalid_config
from monosemantic.lm.model import load_lm
from monosemantic.pipeline import RunDir, Stage, StageRun
from monosemantic.progress import progress
from monosemantic.sae.io import load_sae
from monosemantic.sae.saebench import CoreEvalConfig, core_eval

HEADLINE = {
    "sparsity": ("l0",),
    "reconstruction_quality": ("explained_variance", "mse", "cossim"),
    "model_performance_preservation": ("ce_loss_score",),
    "model_behavior_preservation": ("kl_div_score",),
    "misc_metrics": ("frac_alive",),
}


def _store_batches(store: ActivationStore, ctx: int, prompts: int, n_batches: int):
    """The store's first ``n_batches`` batches of ``prompts`` windows, each [prompts, ctx, D]."""
    rows = prompts * ctx
    for b in range(n_batches):
        yield torch.from_numpy(store.read_range(b * rows, (b + 1) * rows)).view(prompts, ctx, -1)


def eval_stage(
    cfg: RunConfig, saes: list[dict], run_name: str, batch_size_prompts: int = 16, reconstruction_batches: int = 10
) -> Stage:
    """SAEBench core metrics of ``saes`` (the sae stage's entries: name, and hook_name when foreign),
    written as SAEBench names its files, with the run's name as the release."""

    def run(rd: RunDir) -> dict:
        model = load_lm(rd / "lm")
        ctx = cfg.lm.n_ctx
        val_tokens = TokenShards(rd / "tokens", "val")
        n_windows = min(batch_size_prompts * reconstruction_batches, val_tokens.n_windows(ctx))
        tokens_BT = torch.from_numpy(np.stack([w for _, _, w in val_tokens.sequential_windows(ctx, n_windows)]))
        figures = {}
        with progress("eval: SAEBench core", len(saes), unit="SAE") as advance:
            for entry in saes:
                name, hook = entry["name"], entry.get("hook_name", cfg.lm.hook_name)
                store = ActivationStore(hook_store_dir(rd.path, "val", hook, cfg.lm.hook_name))
                n_batches = len(store) // (batch_size_prompts * store.meta["ctx"])
                if n_batches == 0:
                    raise UserError(
                        f"eval: {len(store):,} held-out activations at {hook}, fewer than one batch of "
                        f"{batch_size_prompts} windows; harvest more (harvest.n_val_tokens)"
                    )
                eval_cfg = CoreEvalConfig(
                    model_name=str(cfg.lm.hf_model_dir or cfg.lm.pretrained or rd / "lm"),
                    dataset=str(cfg.corpus.dataset or cfg.corpus.corpus or "bundled"),
                    context_size=ctx,
                    batch_size_prompts=batch_size_prompts,
                    n_eval_reconstruction_batches=-(-len(tokens_BT) // batch_size_prompts),
                    n_eval_sparsity_variance_batches=n_batches,
                )
                folder = rd / "saes" / name
                sae = load_sae(folder)
                batches = _store_batches(store, store.meta["ctx"], batch_size_prompts, n_batches)
                sae_cfg = {**sae.cfg.model_dump(mode="json"), "hook_name": hook}
                result = core_eval(sae, model, hook, batches, tokens_BT, eval_cfg, sae_cfg, name, run_name)
                write_json(rd / _result_file(run_name, name), result)
                metrics = result["eval_result_metrics"]
                figures[name] = {k: metrics[group][k] for group, keys in HEADLINE.items() for k in keys}
                advance(1)
        return {"saes": figures}

    def summary(f: dict) -> str:
        return "; ".join(
            f"{n}: L0 {m['l0']:.1f}, EV {m['explained_variance']:.3f}, CE score {m['ce_loss_score']:.3f}"
            for n, m in f["saes"].items()
        )

    names = [e["name"] for e in saes]
    config = {"saes": names, "batch_size_prompts": batch_size_prompts, "reconstruction_batches": reconstruction_batches}
    return Stage("eval", config, run, [_result_file(run_name, n) for n in names], summary, needs=["sae"])


def _result_file(run_name: str, sae_name: str) -> str:
    return f"eval/core/{run_name}_{sae_name}_eval_results.json"  # SAEBench's <release>_<sae id>_eval_results.json


def evaluate_run(run_dir: str | Path, batch_size_prompts: int = 16, reconstruction_batches: int = 10) -> StageRun:
    """Run the eval stage on run directory ``run_dir`` (its sae stage must be done)."""
    rd = RunDir(Path(run_dir))
    if "sae" not in rd.manifest.get("stages", {}):
        raise UserError(f"run directory {run_dir}: no SAEs yet (run `monosemantic run --out {run_dir}` first)")
    try:
        cfg = RunConfig.model_validate(rd.manifest["config"])
    except ValidationError as err:
        raise invalid_config(err, f"{rd.manifest_path} config") from None
    stage = eval_stage(cfg, rd.manifest["sae"]["saes"], rd.path.name, batch_size_prompts, reconstruction_batches)
    figures, skipped = rd.run_stage(stage)
    return StageRun(stage.name, skipped, figures, stage.summary(figures))
