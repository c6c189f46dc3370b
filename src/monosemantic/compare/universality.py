"""Universality: do two independently trained models learn the same features? (Bricken et al. 2023)

The paper trains a second transformer B that differs from A only in its seed, trains the same
dictionary recipe on each (A/1, B/1), and for every feature of A/1 takes the largest Pearson
correlation of its activations with any feature of B/1 over the same 40.96M tokens: median 0.72,
against 0.46 for the same comparison between the neurons of A and of B.

The universality stage (``stages.py``) builds model B and its SAE as a second run of the lm,
harvest and sae stages (``RUN/model_b/``), and a reseeded SAE on A's activations, the cheaper
within-model check, as a second run of the sae stage (``RUN/sae_reseed/``). ``universality`` here
is the comparison: over A's held-out tokens (or ``n_tokens`` streamed through both LMs), it streams
every unit through ``CrossStats`` (never a tokens × F × F product) for the max correlation of each
A-feature with B's features, of each A-neuron with B's neurons, and of each A-feature with the
reseeded SAE's features, then writes ``RUN/universality/universality.json`` and
``max_correlation.png`` (the paper's histogram).

Under torchrun the stage runs on every rank: the second runs are split as the first run's stages
are, and the comparison over tokens: rank r streams its contiguous share of the compared tokens
(rows of the held-out store, or windows through both LMs) into its ``CrossStats``, whose sums are
then added across ranks (``CrossStats.all_reduce_``), so every rank holds the statistics of all the
tokens, and rank 0 writes the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from monosemantic.activations.store import ActivationStore
from monosemantic.activations.stream import ActivationStream
from monosemantic.atomic import write_json
from monosemantic.compare.config import UniversalityConfig
from monosemantic.compare.correlation import BestMatches, CrossStats, Matches, best_matches
from monosemantic.corpus.shards import TokenShards
from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.figures import new_figure, save_figure
from monosemantic.lm.model import load_lm
from monosemantic.sae.io import load_sae

PAPER_MEDIAN_FEATURE_CORR = 0.72  # Bricken et al. 2023, A/1 vs B/1
PAPER_MEDIAN_NEURON_CORR = 0.46
DENSE_MIN_DENSITY = 1e-5  # the "dense" median leaves out features rarer than this (paper's main cluster: 1e-5…1e-3)


def universality(
    run: Path,
    sae_name: str,
    cfg: UniversalityConfig,
    device: torch.device,
    model_b: Path,
    reseed: Path | None,
    world: World = SINGLE,
) -> dict:
    """Match SAE ``sae_name`` of run directory ``run`` (model A) against the SAE of that name in
    ``model_b`` (and in ``reseed``, a second SAE on A's activations, when given), and A's neurons
    against B's; returns the figures for ``run.json``: ``median_feature_corr``,
    ``median_feature_corr_dense`` (features firing on ≥ DENSE_MIN_DENSITY of the compared tokens),
    ``median_neuron_corr``, ``median_feature_corr_same_model`` (None without ``reseed``), the
    paper's numbers, the units and tokens compared, artifact paths and ``correlate_seconds``. In a
    ``world`` of N ranks each rank compares its share of the tokens; rank 0 writes the report and
    returns the figures, the others ``{}``."""
    out = run / "universality"
    store_a_val, store_b_val = ActivationStore(run / "activations/val"), ActivationStore(model_b / "activations/val")
    _check_aligned(store_a_val, store_b_val)
    sae_a = load_sae(run / "saes" / sae_name, device)
    units = {"features_a_vs_b": (sae_a.encode, load_sae(model_b / "saes" / sae_name, device).encode, "b")}
    if reseed is not None:
        units["features_same_model"] = (sae_a.encode, load_sae(reseed / "saes" / sae_name, device).encode, "a")
    units["neurons_a_vs_b"] = (_identity, _identity, "b")

    start = time.perf_counter()
    part = (world.rank, world.size)
    if cfg.n_tokens is None:
        compared = f"all {store_a_val.n_rows:,} held-out tokens (activations/val)"
        chunks = zip(
            (c for _, c in store_a_val.iter_chunks(cfg.chunk_rows, part)),
            (c for _, c in store_b_val.iter_chunks(cfg.chunk_rows, part)),
        )
    else:
        shards = TokenShards(run / "tokens", cfg.tokens_split)
        compared = f"the first {cfg.n_tokens:,} tokens of the {cfg.tokens_split} split, streamed through both LMs"
        ctx = store_a_val.meta["ctx"]
        chunks = zip(
            *(
                ActivationStream(load_lm(lm, device), shards, store_a_val.hook_name, ctx).token_chunks(
                    cfg.n_tokens, cfg.chunk_rows // ctx or 1, part
                )
                for lm in (run / "lm", model_b / "lm")
            )
        )
    matches = compare_units(chunks, units, device, world)
    correlate_seconds = time.perf_counter() - start
    if not world.is_main:
        return {}
    n_tokens = matches["features_a_vs_b"].n_tokens

    hist_path = plot_max_correlations({name: m.a_to_b for name, m in matches.items()}, out / "max_correlation.png")
    report = {
        "sae": sae_name,
        "d_sae": sae_a.cfg.d_sae,
        "n_tokens": n_tokens,
        "tokens": compared,
        **{name: _summary(m.a_to_b) for name, m in matches.items()},
        "paper": {"median_feature_corr": PAPER_MEDIAN_FEATURE_CORR, "median_neuron_corr": PAPER_MEDIAN_NEURON_CORR},
    }
    write_json(out / "universality.json", report)
    same = matches.get("features_same_model")
    features = matches["features_a_vs_b"].a_to_b
    second_runs = {"model_b": model_b} | ({"reseed": reseed} if reseed is not None else {})
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
        "artifacts": {
            "report": "universality/universality.json",
            "histogram": str(hist_path.relative_to(run)),
            **{name: str((path / "run.json").relative_to(run)) for name, path in second_runs.items()},
        },
        "correlate_seconds": round(correlate_seconds, 2),
    }


def compare_units(
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    units: dict[str, tuple[Callable, Callable, str]],
    device: torch.device | str = "cpu",
    world: World = SINGLE,
) -> dict[str, Matches]:
    """One pass over aligned activation chunks ``(acts_a, acts_b)`` (row n of both = the same
    token, in models A and B): for each named comparison ``(encode_1, encode_2, "a"|"b")``,
    encode_1 is applied to A's rows and encode_2 to A's ("a") or B's ("b") rows; returns each
    comparison's best Pearson matches in both directions. In a ``world`` of N ranks, each rank
    passes the chunks of its own tokens and every rank returns the matches over all of them."""
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
    if not all(world.gather_objects(bool(stats))):  # every rank stops here alike, none waits in a reduction
        raise UserError(
            f"universality: too few compared tokens to give each of the {world.size} ranks some "
            "(universality.n_tokens, harvest.n_val_tokens)"
        )
    return {name: best_matches(s.all_reduce_(world), "pearson") for name, s in stats.items()}


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


def _check_aligned(store_a: ActivationStore, store_b: ActivationStore) -> None:
    """Both stores must hold the same tokens in the same order (row n = the same token)."""
    if store_a.n_rows != store_b.n_rows:
        raise UserError(f"{store_b.path}: {store_b.n_rows:,} rows, but {store_a.path} has {store_a.n_rows:,}")
    rows = np.arange(store_a.n_rows)
    origin_a, origin_b = store_a.origin(rows), store_b.origin(rows)
    for column in ("token", "pos", "source_shard"):
        if not np.array_equal(origin_a[column], origin_b[column]):
            raise UserError(f"{store_b.path}: not the same tokens as {store_a.path} (delete it to re-harvest)")


def _summary(matches: BestMatches) -> dict:
    return {
        "median": matches.median(),
        "n_live": int(matches.live.sum()),
        "n_units": int(matches.live.size),
        "histogram": matches.histogram(),
        "best_index": matches.index.tolist(),
        "best_corr": [None if np.isnan(v) else round(float(v), 4) for v in matches.value],
    }


def _identity(x_ND: torch.Tensor) -> torch.Tensor:
    return x_ND
