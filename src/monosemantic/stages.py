"""The stages of ``monosemantic run``, each reading from and writing into the run directory.

corpus → lm → harvest → sae → universality, then analysis → splitting; toy stands apart. Each
``*_stage(cfg)`` returns a ``Stage`` whose ``run`` does the work and returns the figures that go into
``run.json``, whose ``summary`` puts them in one line, and whose ``needs`` names the stages it reads.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch

from monosemantic.activations import ActivationStore
from monosemantic.activations.harvest import harvest_activations
from monosemantic.activations.stream import ActivationStream
from monosemantic.analysis.analyze import analysis_headline, analyze_run
from monosemantic.analysis.feature_map import feature_map
from monosemantic.analysis.splitting import feature_families
from monosemantic.analysis.store import FILENAME as FEATURE_STORE_FILE
from monosemantic.analysis.universality import universality
from monosemantic.config import RunConfig
from monosemantic.corpus.shards import TokenShards, write_token_shards
from monosemantic.corpus.sources import DocumentSources, corpus_fingerprint, document_sources, iter_documents
from monosemantic.corpus.tokenizer import save_tokenizer, train_tokenizer
from monosemantic.device import resolve_device
from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.lm.baselines import baseline_losses
from monosemantic.lm.model import EXTERNAL_FILE, check_hook_name, load_external_lm, load_lm, save_external_ref, save_lm
from monosemantic.lm.train import evaluate_lm, train_lm
from monosemantic.pipeline import RunDir, Stage, config_hash
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.io import save_sae
from monosemantic.sae.metrics import density_summary, evaluate_sae, loss_recovered, plot_density_histogram
from monosemantic.sae.trainer import train_sae
from monosemantic.toy.sweep import run_toy_sweep


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

        if cfg.lm.trains_own_model:
            tokenizer, eos = train_tokenizer(counted(), c.vocab_size), None
        else:
            tokenizer, eos = _external_tokenizer(cfg)
        save_tokenizer(tokenizer, rd / "tokenizer.json")
        figures = write_token_shards(
            counted() if eos is not None else documents(), tokenizer, rd / "tokens", c.val_fraction, eos
        )
        figures["chars"] = chars["n"]
        figures["source"] = c.dataset or c.corpus or "bundled"
        return figures

    tokenizer_from = cfg.lm.pretrained or cfg.lm.hf_model_dir or "trained here"
    inputs = corpus_fingerprint(c.corpus, c.dataset)

    def summary(f: dict) -> str:
        return (
            f"{f['n_docs']:,} docs, {f['chars'] / 1e6:.1f}M chars, {f['train_tokens']:,} train + "
            f"{f['val_tokens']:,} val tokens, vocab {f['vocab_size']:,}"
        )

    return Stage(
        "corpus",
        {**c.model_dump(), "tokenizer": tokenizer_from, "inputs": inputs},
        run,
        ["tokenizer.json", "tokens/index.json"],
        summary,
    )


def _external_tokenizer(cfg: RunConfig):
    """The external model's own tokenizer (as a ``tokenizers.Tokenizer``) and its EOS id."""
    _, hf_tokenizer = load_external_lm(cfg.lm)
    if not getattr(hf_tokenizer, "is_fast", False) or hf_tokenizer.eos_token_id is None:
        raise UserError("the external model's tokenizer must be a fast tokenizer with an EOS token")
    return hf_tokenizer.backend_tokenizer, hf_tokenizer.eos_token_id


def lm_stage(cfg: RunConfig) -> Stage:
    device = resolve_device(cfg.device)

    def run(rd: RunDir) -> dict:
        checkpoint = rd / "lm_checkpoint.pt"
        val_tokens = TokenShards(rd / "tokens", "val")
        if val_tokens.n_windows(cfg.lm.n_ctx) == 0:
            raise UserError(
                f"corpus: the val split has {val_tokens.n_tokens:,} tokens, less than one "
                f"lm.n_ctx={cfg.lm.n_ctx} window; use a larger corpus, a larger "
                f"corpus.val_fraction or a smaller lm.n_ctx"
            )
        if cfg.lm.trains_own_model:
            model, figures = train_lm(cfg.lm, rd / "tokens", checkpoint, device, rd.world)
            if not rd.world.is_main:  # rank 0 measures and saves the model it shares with the others
                return {}
        elif not rd.world.is_main:
            return {}
        else:
            model, _ = load_external_lm(cfg.lm, device)
            if cfg.lm.n_ctx > model.cfg.n_ctx:
                raise UserError(f"lm.n_ctx={cfg.lm.n_ctx} exceeds the model's context {model.cfg.n_ctx}")
            figures = {"external": cfg.lm.pretrained or cfg.lm.hf_model_dir}
        train, val = TokenShards(rd / "tokens", "train"), TokenShards(rd / "tokens", "val")
        figures["val_loss"] = evaluate_lm(model, val, cfg.lm.n_ctx, None, device=device)
        figures.update(baseline_losses(train, val, cfg.lm.n_ctx))
        figures["n_params"] = sum(p.numel() for p in model.parameters())
        if cfg.lm.trains_own_model:
            save_lm(model, cfg.lm, rd / "lm")
            checkpoint.unlink(missing_ok=True)
        else:
            save_external_ref(cfg.lm, rd / "lm")
        return figures

    def summary(f: dict) -> str:
        trained = (
            f"external {f['external']}" if "external" in f else f"{f['steps']:,} steps, {f['train_tokens']:,} tokens"
        )
        return (
            f"{trained}, val loss {f['val_loss']:.3f} (unigram {f['unigram_loss']:.3f}, bigram {f['bigram_loss']:.3f})"
        )

    artifact = "lm/model.safetensors" if cfg.lm.trains_own_model else f"lm/{EXTERNAL_FILE}"
    return Stage("lm", cfg.lm.model_dump(), run, [artifact], summary, needs=["corpus"], distributed=True)


def harvest_stage(cfg: RunConfig) -> Stage:
    device = resolve_device(cfg.device)
    h = cfg.harvest
    if cfg.lm.trains_own_model:
        check_hook_name(cfg.lm, cfg.corpus.vocab_size)

    def run(rd: RunDir) -> dict:
        model = load_lm(rd / "lm", device)
        figures = {}
        splits = {"train": h.n_train_tokens, "val": h.n_val_tokens}
        if h.stream_train:
            del splits["train"]
        for split, n_tokens in splits.items():
            shards = TokenShards(rd / "tokens", split)
            figures[split] = harvest_activations(
                model,
                shards,
                cfg.lm.hook_name,
                n_tokens,
                cfg.lm.n_ctx,
                h.batch_size,
                rd / f"activations/{split}",
                h.dtype,
                device,
                rd.world,
            )
        return figures

    def summary(f: dict) -> str:
        train = f"{f['train']['rows']:,} train" if "train" in f else "train streamed"
        return f"{train} + {f['val']['rows']:,} val rows at {f['val']['hook_name']}"

    stores = ["activations/val/store.json"] + ([] if h.stream_train else ["activations/train/store.json"])
    config = {**h.model_dump(), "hook_name": cfg.lm.hook_name}
    return Stage("harvest", config, run, stores, summary, needs=["lm"], distributed=True)


def sae_stage(cfg: RunConfig) -> Stage:
    """Train the sweep's SAEs one by one; a finished SAE whose config is unchanged is kept."""
    sweep = cfg.sae
    device = resolve_device(cfg.device)

    def run(rd: RunDir) -> dict:
        val = ActivationStore(rd / "activations/val")
        model = load_lm(rd / "lm", device)
        train = train_activations(rd, cfg, model)
        init_ND = train.sample_rows(sweep.init_rows, sweep.seed)
        mean_D = (val if cfg.harvest.stream_train else train).mean()
        val_tokens = TokenShards(rd / "tokens", "val")
        tokens_BT = torch.from_numpy(
            np.stack([w for _, _, w in val_tokens.sequential_windows(cfg.lm.n_ctx, sweep.loss_windows)])
        ).to(device)
        by_size = sweep.shard == "sizes"  # each rank trains its share of the sizes, alone
        world = SINGLE if by_size else rd.world
        entries = []
        for size in sweep.sizes[rd.world.rank :: rd.world.size] if by_size else sweep.sizes:
            sae_cfg = sweep.sae_config(val.d_in, size, str(device))
            entries.append(
                _train_one_sae(
                    rd, world, sae_cfg, sweep, train, val, init_ND, mean_D, model, tokens_BT, cfg.lm.hook_name
                )
            )
            world.barrier()  # while rank 0 measures and saves it
        if by_size:
            done = {entry["d_sae"]: entry for part in rd.world.gather_objects(entries) for entry in part}
            entries = [done[size] for size in sweep.sizes]
        return {
            "variant": sweep.variant,
            "saes": entries,
            "train_source": "streamed from the LM" if cfg.harvest.stream_train else "activations/train",
        }

    def summary(f: dict) -> str:
        return f"{len(f['saes'])} {f['variant']} SAEs: " + ", ".join(str(e["d_sae"]) for e in f["saes"])

    config = {
        **sweep.model_dump(exclude={"shard"}),
        "hook_name": cfg.lm.hook_name,
        "stream_train": cfg.harvest.stream_train,
    }
    return Stage(
        "sae",
        config,
        run,
        [f"saes/{sweep.variant}-{size}/cfg.json" for size in sweep.sizes],
        summary,
        needs=["harvest"],
        distributed=True,
    )


def train_activations(rd: RunDir, cfg: RunConfig, model) -> ActivationStore | ActivationStream:
    """The sweep's training activations: the harvested store, or ``model`` run on the fly."""
    if cfg.harvest.stream_train:
        return ActivationStream(model, TokenShards(rd / "tokens", "train"), cfg.lm.hook_name, cfg.lm.n_ctx)
    return ActivationStore(rd / "activations/train")


def _density_chunks(source: ActivationStore | ActivationStream, n_tokens: int):
    """The first ``n_tokens`` training activations in token order, in chunks."""
    if isinstance(source, ActivationStream):
        yield from source.token_chunks(n_tokens)
        return
    for start, chunk_ND in source.iter_chunks(65_536):
        if start >= n_tokens:
            return
        yield chunk_ND[: n_tokens - start]


def _train_one_sae(
    rd: RunDir,
    world: World,
    sae_cfg: SAEConfig,
    sweep,
    train: ActivationStore | ActivationStream,
    val: ActivationStore,
    init_ND: torch.Tensor,
    mean_D: torch.Tensor,
    model,
    tokens_BT: torch.Tensor,
    hook_name: str,
) -> dict | None:
    """Train one SAE (data- or dictionary-parallel over ``world``), then, on its rank 0, measure and
    save it and return its figures (None on the other ranks)."""
    name = f"{sae_cfg.variant}-{sae_cfg.d_sae}"
    folder = rd / "saes" / name
    # the activations it was trained on count too: a re-harvest must not reuse an SAE of the old ones
    digest = config_hash(
        {**sae_cfg.model_dump(mode="json"), "density_tokens": sweep.density_tokens}, [rd.fingerprint("harvest")]
    )
    cfg_file = folder / "cfg.json"
    if cfg_file.exists():
        meta = json.loads(cfg_file.read_text()).get("metadata", {})
        if meta.get("config_hash") == digest and "figures" in meta:
            return meta["figures"]
    n_batches = -(-sae_cfg.n_samples // sae_cfg.batch_size)

    def batches(start_batch: int):
        return train.shuffled_batches(
            sae_cfg.batch_size,
            sae_cfg.seed,
            sweep.buffer_rows,
            n_batches,
            device=sae_cfg.device,
            start_batch=start_batch,
        )

    checkpoint_dir = rd / "saes" / f".checkpoint-{name}"
    shard = "latents" if sweep.shard == "latents" else "batch"
    result = train_sae(sae_cfg, batches, init_ND, checkpoint_dir=checkpoint_dir, world=world, shard=shard)
    if not world.is_main:
        return None
    metrics = evaluate_sae(result.sae, (chunk for _, chunk in val.iter_chunks(65_536)))
    density_F, density_tokens = metrics.pop("density"), metrics["n_tokens"]
    if sweep.density_tokens is not None:
        measured = evaluate_sae(result.sae, _density_chunks(train, sweep.density_tokens))
        density_F, density_tokens = measured["density"], measured["n_tokens"]
    density = density_summary(density_F, density_tokens)
    plot = plot_density_histogram(
        density_F,
        rd / "plots" / f"density-{name}.png",
        title=f"Feature density, {name} ({density['n_tokens']:,} tokens)",
    )
    losses = loss_recovered(model, result.sae, tokens_BT, hook_name, mean_D)
    figures = {
        "name": name,
        "variant": sae_cfg.variant,
        "d_sae": sae_cfg.d_sae,
        **metrics,
        **losses,
        "train_seconds": round(result.train_seconds, 2),
        "samples": result.samples_seen,
        "path": f"saes/{name}",
        "density_plot": str(plot.relative_to(rd.path)),
        "density_log10_hist": density.pop("log10_hist"),
        "density": density,
    }
    save_sae(
        result.sae,
        sae_cfg,
        folder,
        extra={"hook_name": hook_name, "model_name": str(rd / "lm"), "config_hash": digest, "figures": figures},
    )
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return figures


def _document_sources(cfg: RunConfig, rd: RunDir) -> DocumentSources:
    """Each corpus document's source, for the context statistics of analysis and splitting."""
    c = cfg.corpus
    if c.dataset is not None and cfg.analysis.source_field is None:  # one source: no need to stream it again
        return DocumentSources.single(c.dataset, json.loads((rd / "tokens/index.json").read_text())["n_docs"])
    return document_sources(c.corpus, c.dataset, c.dataset_split, c.text_field, c.max_docs, cfg.analysis.source_field)


def analysis_stage(cfg: RunConfig) -> Stage:
    """Feature (and neuron) dashboards, logit effects, autointerp scores → RUN/features.sqlite."""
    names = [f"{cfg.sae.variant}-{size}" for size in cfg.sae.sizes]

    def run(rd: RunDir) -> dict:
        return analyze_run(rd.path, names, cfg.analysis, str(resolve_device(cfg.device)), _document_sources(cfg, rd))

    return Stage(
        "analysis",
        {**cfg.analysis.model_dump(), "saes": names},
        run,
        [FEATURE_STORE_FILE],
        analysis_headline,
        needs=["sae"],
    )


def splitting_stage(cfg: RunConfig) -> Stage:
    """Feature splitting across the sweep's sizes, then the 2D map of every decoder direction."""
    names = [f"{cfg.sae.variant}-{size}" for size in sorted(cfg.sae.sizes)]
    split_cfg = cfg.splitting.model_copy(update={"device": cfg.device})

    def run(rd: RunDir) -> dict:
        figures = feature_families(rd.path, names, split_cfg, _document_sources(cfg, rd))
        figures["feature_map"] = feature_map(rd.path, names, cfg.feature_map)
        return figures

    config = {
        "splitting": cfg.splitting.model_dump(),
        "map": cfg.feature_map.model_dump(),
        "saes": names,
        "source_field": cfg.analysis.source_field,
    }

    def summary(f: dict) -> str:
        family = f.get("context_family")
        context = (
            f"; context family {family['sae']}/{family['feature']} (JS {family['js_divergence_bits']:.2f} bits)"
            if family
            else ""
        )
        return (
            f"{f['split_families']:,} features split into ≥ 2 children at the next size; "
            f"map by {f['feature_map']['method']}{context}"
        )

    return Stage("splitting", config, run, ["splitting/families.json", "feature_map/map.json"], summary, needs=["sae"])


def universality_stage(cfg: RunConfig) -> Stage:
    """A second LM (another seed) and its SAE: how many features recur (the paper's A/1 vs B/1)."""
    uni_cfg = cfg.universality.model_copy(update={"device": cfg.device})

    def run(rd: RunDir) -> dict:
        return universality(rd.path, uni_cfg, cfg.sae, cfg.harvest.stream_train)

    def summary(f: dict) -> str:
        return (
            f"median max-correlation A→B: features {f['median_feature_corr']:.2f} vs neurons "
            f"{f['median_neuron_corr']:.2f} (paper {f['paper_median_feature_corr']} vs "
            f"{f['paper_median_neuron_corr']})"
        )

    config = {
        **cfg.universality.model_dump(),
        "sweep": {"buffer_rows": cfg.sae.buffer_rows, "init_rows": cfg.sae.init_rows},
        "stream_train": cfg.harvest.stream_train,
    }
    return Stage("universality", config, run, ["universality/universality.json"], summary, needs=["sae"])


def toy_stage(cfg: RunConfig) -> Stage:
    """Toy models of superposition: stands apart from the LM pipeline (needs nothing)."""
    toy_cfg = cfg.toy.model_copy(update={"device": cfg.device})

    def run(rd: RunDir) -> dict:
        return run_toy_sweep(toy_cfg, rd / "toy")

    def summary(f: dict) -> str:
        dims = [p["dims_per_feature"] for p in f["points"]]
        return f"{len(f['points'])} sparsities, D* from {dims[0]:.2f} to {dims[-1]:.2f}; plots in toy/"

    return Stage("toy", cfg.toy.model_dump(), run, ["toy/toy.json"], summary)


def all_stages(cfg: RunConfig) -> list[Stage]:
    """Every stage of ``monosemantic run``, in order."""
    return [
        corpus_stage(cfg),
        lm_stage(cfg),
        harvest_stage(cfg),
        sae_stage(cfg),
        universality_stage(cfg),
        analysis_stage(cfg),
        splitting_stage(cfg),
        toy_stage(cfg),
    ]
