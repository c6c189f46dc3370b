"""Universality: do two independently trained models learn the same features? (Bricken et al. 2023)

The paper trains a second transformer B that differs from A only in its seed, trains the same
dictionary recipe on each (A/1, B/1), and for every feature of A/1 takes the largest Pearson
correlation of its activations with any feature of B/1 over the same 40.96M tokens: median 0.72,
against 0.46 for the same comparison between the neurons of A and of B.

``universality(run_dir, cfg)`` does that on a run directory:

1. train model B (model A's config, another seed; optionally fewer steps) → ``RUN/lm_b/``;
2. harvest B's activations on exactly the token windows A's stores hold → ``RUN/activations_b/{train,val}``;
3. train an SAE on B with A's SAE config → ``RUN/universality/sae_b/``, and — the cheaper
   within-model check — a second SAE on A's activations with another seed → ``RUN/universality/sae_a_reseed/``;
4. over A's held-out tokens, stream every unit through ``CrossStats`` (never a tokens × F × F
   product): max correlation of each A-feature with B's features, of each A-neuron with B's
   neurons, and of each A-feature with the reseeded SAE's features;
5. write ``RUN/universality/universality.json`` and ``max_correlation.png`` (the paper's histogram).

Each step records the hash of its config (chained with the steps it reads) in
``RUN/universality/steps.json`` and is skipped when that hash and its artifact are current, so an
interrupted run resumes without redoing finished steps and a changed config redoes the ones it affects.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from monosemantic.activations.harvest import harvest_activations
from monosemantic.activations.store import ActivationStore
from monosemantic.activations.stream import ActivationStream
from monosemantic.atomic import write_json
from monosemantic.compare.config import UniversalityConfig
from monosemantic.compare.correlation import BestMatches, CrossStats, Matches, best_matches
from monosemantic.corpus.shards import TokenShards
from monosemantic.device import resolve_device
from monosemantic.errors import UserError
from monosemantic.figures import new_figure, save_figure
from monosemantic.lm.config import LMConfig
from monosemantic.lm.model import load_lm, save_lm
from monosemantic.lm.train import evaluate_lm, train_lm
from monosemantic.pipeline import config_hash
from monosemantic.sae.config import SAEConfig, SAESweepConfig
from monosemantic.sae.io import load_sae, save_sae
from monosemantic.sae.trainer import train_sae

PAPER_MEDIAN_FEATURE_CORR = 0.72  # Bricken et al. 2023, A/1 vs B/1
PAPER_MEDIAN_NEURON_CORR = 0.46
DENSE_MIN_DENSITY = 1e-5  # the "dense" median leaves out features rarer than this (paper's main cluster: 1e-5…1e-3)


def universality(
    run_dir: str | Path, cfg: UniversalityConfig, sweep: SAESweepConfig, stream_train: bool = False
) -> dict:
    """Run the whole comparison (see the module docstring); returns the figures for ``run.json``:
    ``median_feature_corr``, ``median_feature_corr_dense`` (features firing on ≥ DENSE_MIN_DENSITY
    of the compared tokens), ``median_neuron_corr``, ``median_feature_corr_same_model`` (None when
    ``same_model_check`` is off), the paper's numbers, the units and tokens compared, artifact paths
    and ``seconds`` per step. Both new SAEs train with ``sweep``'s shuffle buffer and init rows, on
    streamed activations when ``stream_train`` (as run A's sweep did)."""
    run = Path(run_dir)
    out = run / "universality"
    device = resolve_device(cfg.device)
    steps = _Steps(out / "steps.json")
    sae_name = cfg.sae or _largest_sae(run)
    sae_a = load_sae(run / "saes" / sae_name, device)
    store_a_val = ActivationStore(run / "activations/val")

    lm_a_cfg = LMConfig(**_read_json(run / "lm/config.json")["lm"])
    lm_b_cfg = lm_a_cfg.model_copy(
        update={"seed": lm_a_cfg.seed + cfg.lm_seed_offset, "n_steps": cfg.lm_steps or lm_a_cfg.n_steps}
    )
    # run A's corpus/LM/harvest fingerprint: a re-run upstream invalidates every step here
    upstream = _read_json(run / "run.json").get("stages", {}).get("harvest", {}).get("config_hash")
    lm_b_figures = steps.run(
        "lm_b",
        {**lm_b_cfg.model_dump(), "upstream": upstream},
        run / "lm_b/model.safetensors",
        lambda: _train_lm_b(run, lm_b_cfg, device),
    )
    lm_a, lm_b = load_lm(run / "lm", device), load_lm(run / "lm_b", device)
    train_shards = TokenShards(run / "tokens", "train")

    def train_source(model, store: str) -> ActivationStore | ActivationStream:
        if stream_train:
            return ActivationStream(model, train_shards, store_a_val.hook_name, store_a_val.meta["ctx"])
        return ActivationStore(run / store)

    store_a_train = train_source(lm_a, "activations/train")
    splits = [("val", store_a_val, store_a_val.n_rows)]
    if not stream_train:
        splits.append(("train", store_a_train, min(cfg.n_train_tokens or store_a_train.n_rows, store_a_train.n_rows)))
    for split, store_a, n_tokens in splits:
        steps.run(
            f"harvest_{split}",
            {"n_tokens": n_tokens, "ctx": store_a.meta["ctx"], "hook": store_a.hook_name, "dtype": store_a.dtype},
            run / f"activations_b/{split}/store.json",
            lambda split=split, store_a=store_a, n_tokens=n_tokens: _harvest_b(
                run, split, store_a, n_tokens, cfg, device
            ),
            after=["lm_b"],
        )
    store_b_val = ActivationStore(run / "activations_b/val")
    _check_aligned(store_a_val, store_b_val)
    store_b_train = train_source(lm_b, "activations_b/train")

    sae_b_cfg = _recipe(sae_a.cfg, cfg, seed=sae_a.cfg.seed)
    steps.run(
        "sae_b",
        {**sae_b_cfg.model_dump(mode="json"), "sweep": _sweep_recipe(sweep), "stream": stream_train},
        out / "sae_b/cfg.json",
        lambda: _train_sae_on(store_b_train, sae_b_cfg, sweep, out / "sae_b", "lm_b"),
        after=["lm_b"] if stream_train else ["harvest_train"],
    )
    units = {"features_a_vs_b": (sae_a.encode, load_sae(out / "sae_b", device).encode, "b")}
    if cfg.same_model_check:
        reseed_cfg = _recipe(sae_a.cfg, cfg, seed=sae_a.cfg.seed + cfg.sae_seed_offset)
        steps.run(
            "sae_a_reseed",
            {
                **reseed_cfg.model_dump(mode="json"),
                "sae_a": sae_name,
                "upstream": upstream,
                "sweep": _sweep_recipe(sweep),
                "stream": stream_train,
            },
            out / "sae_a_reseed/cfg.json",
            lambda: _train_sae_on(store_a_train, reseed_cfg, sweep, out / "sae_a_reseed", "lm"),
        )
        units["features_same_model"] = (sae_a.encode, load_sae(out / "sae_a_reseed", device).encode, "a")
    units["neurons_a_vs_b"] = (_identity, _identity, "b")

    start = time.perf_counter()
    if cfg.n_tokens is None:
        compared = f"all {store_a_val.n_rows:,} held-out tokens (activations/val)"
        chunks = zip(
            (c for _, c in store_a_val.iter_chunks(cfg.chunk_rows)),
            (c for _, c in store_b_val.iter_chunks(cfg.chunk_rows)),
        )
    else:
        shards = TokenShards(run / "tokens", cfg.tokens_split)
        compared = f"the first {cfg.n_tokens:,} tokens of the {cfg.tokens_split} split, streamed through both LMs"
        chunks = zip(
            *(
                ActivationStream(m, shards, store_a_val.hook_name, store_a_val.meta["ctx"]).token_chunks(
                    cfg.n_tokens, cfg.chunk_rows // store_a_val.meta["ctx"] or 1
                )
                for m in (lm_a, lm_b)
            )
        )
    matches = compare_units(chunks, units, device)
    correlate_seconds = time.perf_counter() - start
    n_tokens = matches["features_a_vs_b"].n_tokens

    hist_path = plot_max_correlations({name: m.a_to_b for name, m in matches.items()}, out / "max_correlation.png")
    report = {
        "sae": sae_name,
        "d_sae": sae_a.cfg.d_sae,
        "n_tokens": n_tokens,
        "tokens": compared,
        "lm_b": {"seed": lm_b_cfg.seed, "n_steps": lm_b_cfg.n_steps, **lm_b_figures},
        **{name: _summary(m.a_to_b) for name, m in matches.items()},
        "paper": {"median_feature_corr": PAPER_MEDIAN_FEATURE_CORR, "median_neuron_corr": PAPER_MEDIAN_NEURON_CORR},
    }
    write_json(out / "universality.json", report)
    same = matches.get("features_same_model")
    features = matches["features_a_vs_b"].a_to_b
    return {
        "median_feature_corr": features.median(),
        "median_feature_corr_dense": features.median(DENSE_MIN_DENSITY),
        "dense_min_density": DENSE_MIN_DENSITY,
        "n_features_dense": int((features.density >= DENSE_MIN_DENSITY).sum()),
        "median_neuron_corr": matches["neurons_a_vs_b"].a_to_b.median(),
        "median_feature_corr_same_model": same.a_to_b.median() if same is not None else None,
        "median_feature_corr_same_model_dense": same.a_to_b.median(DENSE_MIN_DENSITY) if same is not None else None,
        "paper_median_feature_corr": PAPER_MEDIAN_FEATURE_CORR,
        "paper_median_neuron_corr": PAPER_MEDIAN_NEURON_CORR,
        "sae": sae_name,
        "n_tokens": n_tokens,
        "tokens": compared,
        "lm_b_val_loss": lm_b_figures.get("val_loss"),
        "lm_b_train_loss": lm_b_figures.get("train_loss"),
        "artifacts": {"report": "universality/universality.json", "histogram": str(hist_path.relative_to(run))},
        "seconds_by_step": {**steps.seconds, "correlate": round(correlate_seconds, 2)},
    }


def compare_units(
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    units: dict[str, tuple[Callable, Callable, str]],
    device: torch.device | str = "cpu",
) -> dict[str, Matches]:
    """One pass over aligned activation chunks ``(acts_a, acts_b)`` (row n of both = the same
    token, in models A and B): for each named comparison ``(encode_1, encode_2, "a"|"b")``,
    encode_1 is applied to A's rows and encode_2 to A's ("a") or B's ("b") rows; returns each
    comparison's best Pearson matches in both directions."""
    stats: dict[str, CrossStats] = {}
    with torch.no_grad():
        for acts_a, acts_b in chunks:
            acts = {"a": acts_a.to(device, torch.float32), "b": acts_b.to(device, torch.float32)}
            cache: dict[tuple[Callable, str], torch.Tensor] = {}  # encode each (encoder, store) once per chunk

            def encoded(encode: Callable, source: str, cache=cache, acts=acts) -> torch.Tensor:
                key = (encode, source)  # bound methods of one SAE compare equal
                if key not in cache:
                    cache[key] = encode(acts[source])
                return cache[key]

            for name, (encode_1, encode_2, source_2) in units.items():
                x_NA, y_NB = encoded(encode_1, "a"), encoded(encode_2, source_2)
                if name not in stats:
                    stats[name] = CrossStats(x_NA.shape[1], y_NB.shape[1], device=device)
                stats[name].update(x_NA, y_NB)
    return {name: best_matches(s, "pearson") for name, s in stats.items()}


def plot_max_correlations(best: dict[str, BestMatches], path: Path) -> Path:
    """Histograms of each unit's max correlation, one colour per comparison, medians marked (PNG)."""
    fig, ax = new_figure((6.5, 3.8))
    bins = np.linspace(0, 1, 41)
    for (name, matches), colour in zip(best.items(), ("tab:blue", "tab:green", "tab:orange")):
        values = matches.value[matches.live & ~np.isnan(matches.value)]
        median = matches.median()
        ax.hist(
            values,
            bins=bins,
            alpha=0.55,
            color=colour,
            density=True,
            label=f"{name.replace('_', ' ')}: median {median:.2f} (n={values.size})",
        )
        ax.axvline(median, color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel("max Pearson correlation with any unit of the other run")
    ax.set_ylabel("density")
    ax.set_title(f"Universality (paper: features {PAPER_MEDIAN_FEATURE_CORR}, neurons {PAPER_MEDIAN_NEURON_CORR})")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return save_figure(fig, path)


class _Steps:
    """Which steps are done, by config hash chained with the steps they read from."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, str] = _read_json(path) if path.exists() else {}
        self.seconds: dict[str, float] = {}

    def run(
        self, name: str, config: object, artifact: Path, work: Callable[[], dict | None], after: list[str] = ()
    ) -> dict:
        digest = config_hash(config, [self.done.get(n, "") for n in after])
        record = self.path.parent / f"{name}.json"
        if self.done.get(name) == digest and artifact.exists() and record.exists():
            return _read_json(record)
        start = time.perf_counter()
        figures = work() or {}
        self.seconds[name] = round(time.perf_counter() - start, 2)
        write_json(record, figures)
        self.done[name] = digest
        write_json(self.path, self.done)
        return figures


def _train_lm_b(run: Path, lm_cfg: LMConfig, device: torch.device) -> dict:
    checkpoint = run / "lm_b_checkpoint.pt"
    model, figures = train_lm(lm_cfg, run / "tokens", checkpoint, device)
    save_lm(model, lm_cfg, run / "lm_b")
    checkpoint.unlink(missing_ok=True)
    # the whole val split, as the lm stage measures model A
    val_loss = evaluate_lm(model, TokenShards(run / "tokens", "val"), lm_cfg.n_ctx, None, device=device)
    return {
        "train_loss": figures["train_loss"],
        "val_loss": val_loss,
        "train_tokens": figures["train_tokens"],
        "train_seconds": round(figures["train_seconds"], 2),
    }


def _harvest_b(
    run: Path, split: str, store_a: ActivationStore, n_tokens: int, cfg: UniversalityConfig, device: torch.device
) -> dict:
    model = load_lm(run / "lm_b", device)
    return harvest_activations(
        model,
        TokenShards(run / "tokens", split),
        store_a.hook_name,
        n_tokens,
        store_a.meta["ctx"],
        cfg.harvest_batch_size,
        run / f"activations_b/{split}",
        store_a.dtype,
        device,
    )


def _check_aligned(store_a: ActivationStore, store_b: ActivationStore) -> None:
    """Both stores must hold the same tokens in the same order (row n = the same token)."""
    if store_a.n_rows != store_b.n_rows:
        raise UserError(f"{store_b.path}: {store_b.n_rows:,} rows, but {store_a.path} has {store_a.n_rows:,}")
    rows = np.arange(store_a.n_rows)
    origin_a, origin_b = store_a.origin(rows), store_b.origin(rows)
    for column in ("token", "pos", "source_shard"):
        if not np.array_equal(origin_a[column], origin_b[column]):
            raise UserError(f"{store_b.path}: not the same tokens as {store_a.path} (delete it to re-harvest)")


def _recipe(sae_cfg: SAEConfig, cfg: UniversalityConfig, seed: int) -> SAEConfig:
    """Run A's SAE config with another seed (and, if asked, another length) on this device."""
    fields = {**sae_cfg.model_dump(mode="json"), "seed": seed, "device": cfg.device}
    if cfg.sae_n_samples is not None:
        fields.update(n_samples=cfg.sae_n_samples, checkpoint_every=None)
    return SAEConfig.model_validate(fields)


def _sweep_recipe(sweep: SAESweepConfig) -> dict:
    """The sweep fields that shape an SAE's training besides its own config."""
    return {"buffer_rows": sweep.buffer_rows, "init_rows": sweep.init_rows}


def _train_sae_on(
    source: ActivationStore | ActivationStream, sae_cfg: SAEConfig, sweep: SAESweepConfig, folder: Path, model_dir: str
) -> dict:
    """Train ``sae_cfg`` as run A's sweep trains its SAEs (same init rows and shuffle buffer)."""
    n_batches = math.ceil(sae_cfg.n_samples / sae_cfg.batch_size)

    def batches(start_batch: int):
        return source.shuffled_batches(
            sae_cfg.batch_size,
            sae_cfg.seed,
            sweep.buffer_rows,
            n_batches,
            device=sae_cfg.device,
            start_batch=start_batch,
        )

    checkpoint_dir = folder.with_name(folder.name + "_checkpoint")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    result = train_sae(sae_cfg, batches, source.sample_rows(sweep.init_rows, sae_cfg.seed), checkpoint_dir)
    save_sae(result.sae, sae_cfg, folder, extra={"hook_name": source.hook_name, "model_dir": model_dir})
    for leftover in checkpoint_dir.iterdir():
        leftover.unlink()
    checkpoint_dir.rmdir()
    return {"train_seconds": round(result.train_seconds, 2), "samples": result.samples_seen}


def _summary(matches: BestMatches) -> dict:
    return {
        "median": matches.median(),
        "n_live": int(matches.live.sum()),
        "n_units": int(matches.live.size),
        "histogram": matches.histogram(),
        "best_index": matches.index.tolist(),
        "best_corr": [None if np.isnan(v) else round(float(v), 4) for v in matches.value],
    }


def _largest_sae(run: Path) -> str:
    folders = (
        sorted(p for p in (run / "saes").glob("*") if (p / "cfg.json").is_file()) if (run / "saes").is_dir() else []
    )
    if not folders:
        raise UserError(f"{run / 'saes'}: no SAEs to compare (run the sae stage first)")
    return max(folders, key=lambda p: _read_json(p / "cfg.json")["d_sae"]).name


def _identity(x_ND: torch.Tensor) -> torch.Tensor:
    return x_ND


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing (run the earlier stages first)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg})") from None
