"""The stages of ``monosemantic run``, each reading from and writing into the run directory.

corpus → lm → harvest → sae → universality, then analysis → splitting; toy stands apart. With
``harvest.extra_hooks`` the harvest records several hook points from one forward pass, and sae,
analysis and splitting work at each (``sweep_saes``); universality stays at the main one. Each
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
from monosemantic.activations.store import hook_store_dir, hook_tag
from monosemantic.activations.stream import ActivationStream
from monosemantic.analysis.analyze import analysis_headline, analyze_run
from monosemantic.analysis.store import FILENAME as FEATURE_STORE_FILE
from monosemantic.compare.feature_map import feature_map
from monosemantic.compare.splitting import feature_families
from monosemantic.compare.universality import universality
from monosemantic.config import RunConfig
from monosemantic.corpus.shards import TokenShards, write_token_shards
from monosemantic.corpus.sources import DocumentSources, corpus_fingerprint, iter_documents, iter_labelled_documents
from monosemantic.corpus.tokenizer import save_tokenizer, train_tokenizer
from monosemantic.device import resolve_device
from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.lm.baselines import baseline_losses
from monosemantic.lm.model import EXTERNAL_FILE, check_hook_name, load_external_lm, load_lm, save_external_ref, save_lm
from monosemantic.lm.train import evaluate_lm, train_lm
from monosemantic.pipeline import RunDir, RunResult, Stage, config_hash
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
            shape = {k: getattr(model.cfg, k) for k in ("n_layers", "d_model", "d_mlp", "n_heads")}
            figures = {"external": cfg.lm.pretrained or cfg.lm.hf_model_dir, "shape": shape}
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
        check_hook_name(cfg.lm, cfg.corpus.vocab_size, h.extra_hooks)

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
                {hook: hook_store_dir(rd.path, split, hook, cfg.lm.hook_name) for hook in h.extra_hooks},
                rd.world,
            )
        return figures

    def summary(f: dict) -> str:
        train = f"{f['train']['rows']:,} train" if "train" in f else "train streamed"
        extra = f" and {len(h.extra_hooks)} more hook point(s)" if h.extra_hooks else ""
        return f"{train} + {f['val']['rows']:,} val rows at {f['val']['hook_name']}{extra}"

    splits = ["val"] + ([] if h.stream_train else ["train"])
    stores = [
        f"{hook_store_dir('.', split, hook, cfg.lm.hook_name)}/store.json"
        for split in splits
        for hook in [cfg.lm.hook_name, *h.extra_hooks]
    ]
    # a run without extra hook points keeps the config hash it had before they existed
    config = {**h.model_dump(exclude=set() if h.extra_hooks else {"extra_hooks"}), "hook_name": cfg.lm.hook_name}
    return Stage("harvest", config, run, stores, summary, needs=["lm"], distributed=True)


def sae_name(variant: str, size: int, hook_name: str, main_hook: str) -> str:
    """A sweep member's name: ``topk-4096`` at the run's main hook point (``lm.hook_name``),
    ``topk-4096@blocks.0.hook_resid_post`` at another one (as ``hook_store_dir`` names its store)."""
    return f"{variant}-{size}{hook_tag(hook_name, main_hook)}"


def sweep_saes(cfg: RunConfig) -> dict[str, list[tuple[str, int]]]:
    """The sweep's SAEs by hook point, the main one first, then ``harvest.extra_hooks`` in order:
    ``{hook: [(name, size), …]}``, each hook's in ``sae.sizes`` order."""
    main = cfg.lm.hook_name
    return {
        hook: [(sae_name(cfg.sae.variant, size, hook, main), size) for size in cfg.sae.sizes]
        for hook in dict.fromkeys([main, *cfg.harvest.extra_hooks])
    }


def sae_stage(cfg: RunConfig) -> Stage:
    """Train the sweep's SAEs one by one, its sizes at each hook point the harvest recorded (the
    main one and ``harvest.extra_hooks``); a finished SAE whose config is unchanged is kept."""
    sweep = cfg.sae
    device = resolve_device(cfg.device)
    by_hook = sweep_saes(cfg)
    main = cfg.lm.hook_name

    def run(rd: RunDir) -> dict:
        model = load_lm(rd / "lm", device)
        val_tokens = TokenShards(rd / "tokens", "val")
        tokens_BT = torch.from_numpy(
            np.stack([w for _, _, w in val_tokens.sequential_windows(cfg.lm.n_ctx, sweep.loss_windows)])
        ).to(device)
        by_size = sweep.shard == "sizes"  # each rank trains its share of the SAEs, alone
        world = SINGLE if by_size else rd.world
        members = [(hook, name, size) for hook, saes in by_hook.items() for name, size in saes]
        mine = members[rd.world.rank :: rd.world.size] if by_size else members
        entries = []
        for hook in by_hook:
            todo = [(name, size) for h, name, size in mine if h == hook]
            if not todo:
                continue
            val = ActivationStore(rd / str(hook_store_dir(".", "val", hook, main)))
            train = train_activations(rd, cfg, model, hook)
            init_ND = train.sample_rows(sweep.init_rows, sweep.seed)
            mean_D = (val if cfg.harvest.stream_train else train).mean()
            for name, size in todo:
                sae_cfg = sweep.sae_config(val.d_in, size, str(device))
                figures = _train_one_sae(
                    rd, world, name, sae_cfg, sweep, train, val, init_ND, mean_D, model, tokens_BT, hook
                )
                if figures is not None:  # None on the ranks other than 0, which neither measure nor save
                    entries.append({**figures, "hook_name": hook, "config": sae_cfg.model_dump(mode="json")})
                world.barrier()  # while rank 0 measures and saves it
        if by_size:
            done = {entry["name"]: entry for part in rd.world.gather_objects(entries) for entry in part}
            entries = [done[name] for _, name, _ in members]
        return {
            "variant": sweep.variant,
            "saes": entries,
            "train_source": "streamed from the LM" if cfg.harvest.stream_train else "activations/train",
        }

    def summary(f: dict) -> str:
        sizes = {
            hook: ", ".join(str(e["d_sae"]) for e in f["saes"] if e.get("hook_name", main) == hook) for hook in by_hook
        }
        at = "; ".join(f"{s} at {hook}" for hook, s in sizes.items()) if len(by_hook) > 1 else sizes[main]
        return f"{len(f['saes'])} {f['variant']} SAEs: {at}"

    config = {
        **{k: v for k, v in sweep.resolved().items() if k != "shard"},
        "hook_name": main,
        "stream_train": cfg.harvest.stream_train,
    }
    if cfg.harvest.extra_hooks:  # a run without extra hook points keeps the config hash it had before them
        config["extra_hooks"] = list(by_hook)[1:]
    return Stage(
        "sae",
        config,
        run,
        [f"saes/{name}/cfg.json" for saes in by_hook.values() for name, _ in saes],
        summary,
        needs=["harvest"],
        distributed=True,
    )


def train_activations(
    rd: RunDir, cfg: RunConfig, model, hook_name: str | None = None
) -> ActivationStore | ActivationStream:
    """The sweep's training activations at ``hook_name`` (default: the main hook point): the
    harvested store, or ``model`` run on the fly (each streamed SAE runs the LM for itself, so
    several hook points stream as one does)."""
    hook = hook_name or cfg.lm.hook_name
    if cfg.harvest.stream_train:
        return ActivationStream(model, TokenShards(rd / "tokens", "train"), hook, cfg.lm.n_ctx)
    return ActivationStore(rd / str(hook_store_dir(".", "train", hook, cfg.lm.hook_name)))


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
    name: str,
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
    """Train SAE ``name`` on ``hook_name``'s activations (data- or dictionary-parallel over
    ``world``), then, on its rank 0, measure and save it and return its figures (None on the
    other ranks)."""
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
    shard = "latents" if sweep.shard == "latents" else "batch"
    part = (world.rank, world.size) if shard == "batch" else (0, 1)  # data-parallel: each rank reads its rows

    def batches(start_batch: int):
        return train.shuffled_batches(
            sae_cfg.batch_size,
            sae_cfg.seed,
            sweep.buffer_rows,
            n_batches,
            device=sae_cfg.device,
            start_batch=start_batch,
            part=part,
        )

    checkpoint_dir = rd / "saes" / f".checkpoint-{name}"
    result = train_sae(
        sae_cfg, batches, init_ND, checkpoint_dir=checkpoint_dir, world=world, shard=shard, rank_rows=part[1] > 1
    )
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
    docs = iter_labelled_documents(
        c.corpus, c.dataset, c.dataset_split, c.text_field, c.max_docs, cfg.analysis.source_field
    )
    return DocumentSources.from_documents(docs)


def analysis_stage(cfg: RunConfig) -> Stage:
    """Feature (and neuron) dashboards, logit effects, autointerp scores → RUN/features.sqlite; each
    SAE over its own hook point's held-out activations (``analyze_run`` reads its saved hook)."""
    names = [name for saes in sweep_saes(cfg).values() for name, _ in saes]

    def run(rd: RunDir) -> dict:
        device = str(resolve_device(cfg.device))
        return analyze_run(rd.path, names, cfg.analysis, device, _document_sources(cfg, rd), world=rd.world)

    return Stage(
        "analysis",
        {**cfg.analysis.model_dump(), "saes": names},
        run,
        [FEATURE_STORE_FILE],
        analysis_headline,
        needs=["sae"],
        distributed=True,
    )


def splitting_stage(cfg: RunConfig) -> Stage:
    """Feature splitting across the sweep's sizes, then the 2D map of every decoder direction; at
    each hook point on its own (families link sizes of one hook point). The main hook point's
    figures are the stage's; another's go under ``by_hook``."""
    by_hook = {
        hook: [name for name, _ in sorted(saes, key=lambda member: member[1])] for hook, saes in sweep_saes(cfg).items()
    }
    main = cfg.lm.hook_name
    split_cfg = cfg.splitting.model_copy(update={"device": cfg.device})

    def run(rd: RunDir) -> dict:
        sources = _document_sources(cfg, rd)
        figures = {}
        for hook, names in by_hook.items():
            found = feature_families(rd.path, names, split_cfg, sources)
            found["feature_map"] = feature_map(rd.path, names, cfg.feature_map)
            if hook == main:
                figures.update(found)
            else:
                figures.setdefault("by_hook", {})[hook] = found
        return figures

    config = {
        "splitting": cfg.splitting.model_dump(),
        "map": cfg.feature_map.model_dump(),
        "saes": [name for names in by_hook.values() for name in names],
        "source_field": cfg.analysis.source_field,
    }

    def summary(f: dict) -> str:
        family = f.get("context_family")
        context = (
            f"; context family {family['sae']}/{family['feature']} (JS {family['js_divergence_bits']:.2f} bits)"
            if family
            else ""
        )
        more = "".join(f"; {g['split_families']:,} at {hook}" for hook, g in f.get("by_hook", {}).items())
        return (
            f"{f['split_families']:,} features split into ≥ 2 children at the next size{more}; "
            f"map by {f['feature_map']['method']}{context}"
        )

    artifacts = [
        f"{folder}/{stem}{hook_tag(hook, main)}.json"
        for hook in by_hook
        for folder, stem in (("splitting", "families"), ("feature_map", "map"))
    ]
    return Stage("splitting", config, run, artifacts, summary, needs=["sae"])


def universality_stage(cfg: RunConfig) -> Stage:
    """Universality, the paper's A/1 against B/1. Model B is a second run of the lm, harvest and
    sae stages in ``RUN/model_b/``, on A's tokens with A's recipe and other seeds (one SAE: the
    compared size); with ``same_model_check`` the sae stage runs once more on A's activations with
    another seed (``RUN/sae_reseed/``). Each second run has its own manifest and is skipped or
    resumed as a run is; then ``compare/universality.py`` matches A's units to theirs. Under
    torchrun every rank runs it: the second runs in the same world (their lm, harvest and sae stages
    split as A's are), the comparison split over the tokens."""
    u = cfg.universality

    def run(rd: RunDir) -> dict:
        if not cfg.lm.trains_own_model:
            raise UserError(
                "universality trains a second LM like the first: it needs an LM trained here, not lm.pretrained"
            )
        size = universality_size(cfg)
        cfg_b = second_run_config(cfg, size, model_b=True)
        model_b = rd.second_run(MODEL_B, ["corpus"]).run_stages(
            cfg_b, [lm_stage(cfg_b), harvest_stage(cfg_b), sae_stage(cfg_b)]
        )
        runs = [(MODEL_B, model_b)]
        if u.same_model_check:
            cfg_r = second_run_config(cfg, size, model_b=False)
            runs.append((SAE_RESEED, sae_second_run(rd, SAE_RESEED, cfg_r)))
        figures = universality(
            rd.path,
            f"{cfg.sae.variant}-{size}",
            u,
            resolve_device(cfg.device),
            model_b=model_b.run_dir.path,
            reseed=rd.path / SAE_RESEED if u.same_model_check else None,
            world=rd.world,
        )
        if not rd.world.is_main:  # rank 0 records the figures
            return {}
        figures["lm_b_val_loss"] = model_b.run_dir.manifest["lm"]["val_loss"]
        figures["lm_b_train_loss"] = model_b.run_dir.manifest["lm"]["train_loss"]
        figures["seconds_by_step"] = {
            **{f"{name}/{s.name}": s.figures["seconds"] for name, result in runs for s in result.stages},
            "correlate": figures.pop("correlate_seconds"),
        }
        return figures

    def summary(f: dict) -> str:
        return (
            f"median max-correlation A→B: features {f['median_feature_corr']:.2f} vs neurons "
            f"{f['median_neuron_corr']:.2f} (paper {f['paper_median_feature_corr']} vs "
            f"{f['paper_median_neuron_corr']})"
        )

    config = {**u.model_dump(), "stream_train": cfg.harvest.stream_train}
    return Stage(
        "universality", config, run, ["universality/universality.json"], summary, needs=["sae"], distributed=True
    )


MODEL_B, SAE_RESEED = "model_b", "sae_reseed"  # the universality stage's second runs, under RUN/


def sae_second_run(rd: RunDir, rel: str, cfg: RunConfig) -> RunResult:
    """The sae stage once more, under ``cfg`` (``rd``'s config with another sweep), in ``RUN/rel``
    on ``rd``'s activations: the SAE lands in ``RUN/rel/saes/``."""
    return rd.second_run(rel, ["corpus", "lm", "harvest"]).run_stages(cfg, [sae_stage(cfg)])


def universality_size(cfg: RunConfig) -> int:
    """The size of the sweep's SAE that universality reproduces (``universality.sae``; the largest),
    at the main hook point: universality over the extra hook points is not done."""
    names = {f"{cfg.sae.variant}-{size}": size for size in cfg.sae.sizes}
    if cfg.universality.sae is None:
        return max(cfg.sae.sizes)
    if cfg.universality.sae not in names:
        raise UserError(f"universality.sae={cfg.universality.sae}: not one of the sweep's SAEs ({', '.join(names)})")
    return names[cfg.universality.sae]


def second_run_config(cfg: RunConfig, size: int, model_b: bool) -> RunConfig:
    """Run A's config for a second run of its stages: the sweep cut to its ``size`` SAE, with the
    seed moved by ``universality.sae_seed_offset``; for ``model_b`` also the LM's seed moved by
    ``universality.lm_seed_offset``. Budgets ``universality`` may cut (LM steps, train tokens, SAE
    samples) are cut; nothing else differs from A."""
    u = cfg.universality
    sae_budget = u.sae_n_samples or cfg.sae.n_samples
    update = {
        "sae": cfg.sae.one_sae(size, seed=cfg.sae.seed + u.sae_seed_offset, n_samples=sae_budget),
        "harvest": cfg.harvest.model_copy(update={"extra_hooks": []}),  # universality compares the main hook point
    }
    if model_b:
        update["lm"] = cfg.lm.model_copy(
            update={"seed": cfg.lm.seed + u.lm_seed_offset, "n_steps": u.lm_steps or cfg.lm.n_steps}
        )
        update["harvest"] = update["harvest"].model_copy(
            update={"n_train_tokens": u.n_train_tokens or cfg.harvest.n_train_tokens}
        )
    return cfg.model_copy(update=update)


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
