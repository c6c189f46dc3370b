"""The analysis stage: neurons and every SAE's features, analysed alike, into ``RUN/features.sqlite``.

``analyze_run`` computes the per-unit statistics (``stats.py``) over the held-out activation store,
where each unit's activation comes from (``context.py``), logit effects, constituent neurons,
neighbours, and explains and scores units (``autointerp.py``) with every backend: the offline
context explainer, the offline token-list baseline, and the LLM when configured. It compares a
random sample of neurons with an equal-sized sample of the largest SAE's features under each
backend separately (``explainer_backends`` in ``run.json``; scores of different backends are never
averaged together), and checks for a "God" feature the way the essay describes it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from monosemantic.activations import ActivationStore
from monosemantic.activations.store import hook_store_dir
from monosemantic.analysis import store as fs
from monosemantic.analysis.autointerp import (
    ContextExplainer,
    Example,
    Explainer,
    OfflineExplainer,
    UnitScore,
    score_unit,
)
from monosemantic.analysis.config import AnalysisConfig
from monosemantic.analysis.context import TokenSources, UnitContext
from monosemantic.analysis.llm import llm_explainer_from_config
from monosemantic.analysis.logits import logit_effects, top_and_bottom
from monosemantic.analysis.neighbours import cofiring_neighbours, decoder_neighbours
from monosemantic.analysis.neurons import constituent_neurons, neuron_users
from monosemantic.analysis.stats import (
    Basis,
    StatsConfig,
    TokenContext,
    UnitStats,
    analysed_rows,
    compute_unit_stats,
    join_unit_stats,
    read_token_context,
)
from monosemantic.analysis.store import NEURONS
from monosemantic.corpus.sources import DocumentSources
from monosemantic.corpus.tokenizer import load_tokenizer
from monosemantic.device import resolve_device
from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.figures import save_figure
from monosemantic.lm.model import load_lm
from monosemantic.progress import progress
from monosemantic.sae.io import load_sae, saved_hook_name

GOD_TOKENS = (" God", "God")


def _token_strings(tokenizer, vocab_size: int) -> list[str]:
    return [tokenizer.decode([t], skip_special_tokens=False) for t in range(vocab_size)]


def _bases(run_dir: Path, sae_names: list[str], d_in: int, neurons: bool = True) -> tuple[list[Basis], dict[str, Any]]:
    bases = [Basis(NEURONS, "neuron", d_in, lambda acts_BD: acts_BD)] if neurons else []
    saes = {}
    for name in sae_names:
        sae = load_sae(run_dir / "saes" / name)
        if sae.cfg.d_in != d_in:
            raise UserError(f"SAE {name}: d_in {sae.cfg.d_in} does not match the activations' {d_in}")
        saes[name] = sae
        bases.append(Basis(name, "feature", sae.cfg.d_sae, sae.encode))
    return bases, saes


EXAMPLE_KINDS = ("top", "interval", "random")  # the store's example kinds, in its order per unit


@dataclass
class UnitExamples:
    """Every unit's examples as flat arrays over records E, grouped by unit (unit u's are
    ``start_U[u]:start_U[u+1]``), each unit's in the store's order: top ranks, each interval's ranks,
    the random contexts. A record is which list it is in (``kind_E`` indexes ``EXAMPLE_KINDS``;
    ``bucket_E`` the interval; ``rank_E``), the activation-store row at its centre, the unit's
    activation there and over the context window (``acts_EW``, NaN outside the harvest window), and
    whether it explains or scores. ``examples[u]`` is unit u's ``{"explain": [...], "score": [...]}``."""

    unit_E: np.ndarray
    kind_E: np.ndarray
    bucket_E: np.ndarray
    rank_E: np.ndarray
    row_E: np.ndarray
    activation_E: np.ndarray
    acts_EW: np.ndarray
    explain_E: np.ndarray
    start_U: np.ndarray
    text: TokenContext
    left: int
    right: int

    def __getitem__(self, unit: int) -> dict[str, list[Example]]:
        records = slice(self.start_U[unit], self.start_U[unit + 1])
        rows_EW, inside_EW = self.text.window_rows(self.row_E[records], self.left, self.right)
        tokens_EW, acts_EW = self.text.tokens_N[rows_EW], self.acts_EW[records].astype(np.float64)
        first_E, stop_E = (
            inside_EW.argmax(axis=1).tolist(),
            (inside_EW.shape[1] - inside_EW[:, ::-1].argmax(axis=1)).tolist(),
        )
        explain, score = [], []
        for e, explains in enumerate(self.explain_E[records].tolist()):
            a, b = first_E[e], stop_E[e]  # the window is one run of columns
            (explain if explains else score).append(Example(tokens_EW[e, a:b], acts_EW[e, a:b], rows_EW[e, a:b]))
        return {"explain": explain, "score": score}


def _examples(stats: UnitStats, text: TokenContext, cfg: AnalysisConfig) -> UnitExamples:
    """Per unit its examples: the top ones of even rank and the first ``per_interval // 2 + 1`` of each
    interval explain, the rest and the random contexts score; a scoring context whose row is also an
    explaining one of the same unit is left out, so that nothing is scored on what explained it."""
    U, I, K, PI = stats.n_units, cfg.n_quantile_intervals, cfg.top_k, cfg.per_interval
    P, W = stats.random_acts_UPW.shape[1:]
    rank_R = np.concatenate([np.arange(K), np.tile(np.arange(PI), I), np.arange(P)])
    kind_R = np.repeat([0, 1, 2], [K, I * PI, P])
    bucket_R = np.concatenate([np.zeros(K, np.int64), np.repeat(np.arange(I), PI), np.zeros(P, np.int64)])
    explain_R = np.concatenate([np.arange(K) % 2 == 0, rank_R[K : K + I * PI] < PI // 2 + 1, np.zeros(P, bool)])
    row_UR = np.concatenate(
        [stats.top.row, stats.intervals.row.reshape(U, I * PI), np.broadcast_to(stats.random_rows_P, (U, P))], axis=1
    )
    activation_UR = np.concatenate(
        [stats.top.value, stats.intervals.value.reshape(U, I * PI), stats.random_acts_UPW[:, :, cfg.context_left]],
        axis=1,
    )
    acts_URW = np.concatenate(
        [stats.top.payload, stats.intervals.payload.reshape(U, I * PI, W), stats.random_acts_UPW], axis=1
    )
    R = row_UR.shape[1]
    unit_E, row_E, explain_E = np.repeat(np.arange(U), R), row_UR.reshape(-1), np.tile(explain_R, U)
    key_E = unit_E * (len(text.tokens_N) + 1) + row_E
    keep_E = (row_E >= 0) & (explain_E | ~np.isin(key_E, key_E[explain_E & (row_E >= 0)]))
    unit_E = unit_E[keep_E]
    return UnitExamples(
        unit_E=unit_E,
        kind_E=np.tile(kind_R, U)[keep_E],
        bucket_E=np.tile(bucket_R, U)[keep_E],
        rank_E=np.tile(rank_R, U)[keep_E],
        row_E=row_E[keep_E],
        activation_E=activation_UR.reshape(-1)[keep_E],
        acts_EW=acts_URW.reshape(-1, W)[keep_E],
        explain_E=explain_E[keep_E],
        start_U=np.searchsorted(unit_E, np.arange(U + 1)),
        text=text,
        left=cfg.context_left,
        right=cfg.context_right,
    )


def held_out_context(stats: UnitStats, unit: int, score: list[Example], sources: TokenSources) -> UnitContext:
    """The unit's context mass less its activations on the score split's rows (each row once)."""
    if not score:
        return stats.context(unit)
    rows = np.concatenate([e.rows for e in score])
    acts = np.concatenate([e.acts for e in score])
    rows, first = np.unique(rows, return_index=True)
    return stats.context(unit).without_rows(rows, acts[first], sources)


PROCESS_CHUNK = 256  # units a forked scoring worker takes at a time
_FORKED_SCORER: Callable[[int], UnitScore] | None = None  # what forked workers run: inherited, never pickled


def available_cpus() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _score_forked(units: list[int]) -> list[tuple[int, UnitScore]]:
    return [(u, _FORKED_SCORER(u)) for u in units]


def _score_units(
    explainer: Explainer,
    stats: UnitStats,
    examples: UnitExamples,
    units: list[int],
    sources: TokenSources,
    seed: int,
    workers: int = 1,
    processes: int = 1,
) -> dict[int, UnitScore]:
    """Explain and score ``units`` (the basis's numbers; ``stats`` and ``examples`` may be a rank's part
    of it, from unit ``stats.first_unit`` on); ``workers`` > 1 scores that many units at once in
    threads (an LLM's requests overlap), ``processes`` > 1 in that many forked processes (CPU-bound
    offline scoring; ``PROCESS_CHUNK`` units each, where the platform can fork). A unit's score depends
    on nothing but the unit (its fuzzing seed is ``seed + unit``), so every way gives the same scores."""

    def one(u: int) -> UnitScore:
        here = u - stats.first_unit
        unit_examples = examples[here]
        score = unit_examples["score"]
        return score_unit(
            explainer,
            unit_examples["explain"],
            score,
            float(stats.max_act_U[here]),
            held_out_context(stats, here, score, sources) if explainer.uses_context else None,
            seed=seed + u,
        )

    global _FORKED_SCORER
    scores = {}
    chunks = [units[i : i + PROCESS_CHUNK] for i in range(0, len(units), PROCESS_CHUNK)]
    forked = processes > 1 and len(chunks) > 1 and "fork" in multiprocessing.get_all_start_methods()
    with progress(f"analysis: explain+score {stats.name} ({explainer.backend})", len(units), unit="units") as advance:
        if forked:
            _FORKED_SCORER = one
            try:
                with multiprocessing.get_context("fork").Pool(min(processes, len(chunks))) as pool:
                    for done in pool.imap_unordered(_score_forked, chunks):
                        scores.update(done)
                        advance(len(done))
            finally:
                _FORKED_SCORER = None
        elif workers == 1:
            for u in units:
                scores[u] = one(u)
                advance(1)
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = {pool.submit(one, u): u for u in units}
                for future in as_completed(futures):
                    scores[futures[future]] = future.result()
                    advance(1)
    return {u: scores[u] for u in units}


def _finite_mean(values: list[float]) -> float:
    """Mean with NaN (nothing could be predicted) counted as 0, the same rule for neurons and features."""
    return float(np.mean(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0))) if values else float("nan")


def _plot_scores(per_backend: dict[str, tuple[list[float], list[float]]], feature_dict: str, path: Path) -> Path:
    """One panel per backend: the neurons' and the features' simulation scores (never pooled)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(per_backend), 3.5), layout="tight")
    axes = fig.subplots(1, len(per_backend), squeeze=False)
    bins = np.linspace(-0.2, 1, 25)
    for ax, (backend, (neuron_scores, feature_scores)) in zip(axes[0], per_backend.items()):
        for scores, label, color in (
            (neuron_scores, "neurons", "tab:gray"),
            (feature_scores, f"features ({feature_dict})", "tab:blue"),
        ):
            values = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
            ax.hist(
                np.clip(values, -0.2, 1),
                bins=bins,
                alpha=0.6,
                color=color,
                label=f"{label}: n={len(values)}, mean {values.mean():.2f}, median {np.median(values):.2f}",
            )
        ax.set_xlabel("simulation score (correlation of predicted and true activations)")
        ax.set_ylabel("units")
        ax.set_title(f"Automated interpretability, explainer: {backend}", fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def _nanmean(values: list[float]) -> float | None:
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def _backend_figures(scores: dict[int, UnitScore], sample: np.ndarray) -> dict[str, Any]:
    """Means over one dictionary's comparison sample, for one backend: simulation (NaN counted as 0,
    the same rule for neurons and features), detection and fuzzing (NaN left out)."""
    simulation = [scores[u].simulation for u in sample]
    return {
        "score_mean": _finite_mean(simulation),
        "score_median": float(np.median(np.nan_to_num(simulation, nan=0.0))),
        "detection_mean": _nanmean([scores[u].detection for u in sample]),
        "fuzzing_mean": _nanmean([scores[u].fuzzing for u in sample]),
    }


def _explainers(
    cfg: AnalysisConfig, token_strings: list[str], sources: TokenSources, cache_path: Path | None
) -> list[Explainer]:
    """The configured LLM (if any) first, then the offline context explainer and its token-list baseline
    (``cache_path``: the LLM's answer cache; None for none)."""
    offline: list[Explainer] = [ContextExplainer(token_strings, sources), OfflineExplainer(token_strings)]
    if cfg.explainer == "offline":
        return offline
    return [llm_explainer_from_config(cfg, token_strings, cache_path), *offline]


def _comparison_samples(alive: dict[str, np.ndarray], largest: str | None, n: int, seed: int) -> dict[str, np.ndarray]:
    """Equal-sized seeded samples of the alive neurons and the largest dictionary's alive features (at
    most ``n``), sorted: the units every backend's neuron/feature comparison is made on."""
    rng = np.random.default_rng(seed)
    names = [NEURONS, largest] if largest else [NEURONS]
    size = min([n] + [len(alive[name]) for name in names])
    return {name: np.sort(rng.choice(alive[name], size=size, replace=False)) for name in names}


def analyze_run(
    run_dir: Path,
    sae_names: list[str],
    cfg: AnalysisConfig,
    device: str = "cpu",
    doc_sources: DocumentSources | None = None,
    processes: int | None = None,
    world: World = SINGLE,
) -> dict[str, Any]:
    """Analyse the neurons and the SAEs ``RUN/saes/<name>`` over the held-out store; write
    ``RUN/features.sqlite`` and ``RUN/analysis/autointerp_scores.png``; return run.json's figures.
    ``doc_sources`` names each corpus document's source (default: one source for all); ``processes``
    score units with the offline backends at once (default: every available CPU core, divided among
    the ranks of ``world``).

    In a ``world`` of N ranks, rank r computes the statistics of the r-th contiguous N-th of each
    basis's units (``stats.py``: every rank reads and encodes every token, and keeps its units' counts
    and samples) and explains and scores its alive units with the offline backends (the dominant
    cost); rank 0 gathers the parts, scores an LLM's sample alone (it holds the answer cache), gathers
    the scores and writes the store and figures, and the other ranks return ``{}``. The joined
    statistics are exactly one process's, and a unit's score depends on nothing but the unit
    (``_score_units``), so the store is the one a world of one writes."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    store = ActivationStore(run_dir / "activations" / "val")
    model = load_lm(run_dir / "lm")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    vocab_size = model.cfg.d_vocab
    token_strings = _token_strings(tokenizer, vocab_size)
    n_rows, ctx = analysed_rows(store, cfg.n_tokens)
    text = read_token_context(store, n_rows, ctx)
    if doc_sources is None:
        sources = TokenSources.single_source(text.tokens_N, text.docs_N, ctx, vocab_size)
    else:
        sources = TokenSources.build(text.tokens_N, text.docs_N, ctx, doc_sources, vocab_size)
    # an SAE read at another hook point than the store's (a dictionary trained elsewhere) is analysed
    # over that hook's activations of the same tokens; the neurons are the main hook point's
    hook_of = {name: saved_hook_name(run_dir / "saes" / name) or store.hook_name for name in sae_names}
    bases, saes = _bases(run_dir, [n for n in sae_names if hook_of[n] == store.hook_name], store.d_in)
    stats_cfg = StatsConfig(
        n_rows=n_rows,
        top_k=cfg.top_k,
        doc_cap=cfg.doc_cap,
        n_intervals=cfg.n_quantile_intervals,
        per_interval=cfg.per_interval,
        n_random=cfg.n_random,
        hist_bins=cfg.hist_bins,
        left=cfg.context_left,
        right=cfg.context_right,
        seed=cfg.seed,
    )
    stats_started = time.perf_counter()
    my_stats = compute_unit_stats(store, bases, text, vocab_size, stats_cfg, sources, world)
    for hook in sorted(set(hook_of.values()) - {store.hook_name}):
        other = ActivationStore(hook_store_dir(run_dir, "val", hook, store.hook_name))
        other_bases, other_saes = _bases(run_dir, [n for n in sae_names if hook_of[n] == hook], other.d_in, False)
        saes.update(other_saes)
        my_stats += compute_unit_stats(other, other_bases, text, vocab_size, stats_cfg, sources, world)
    gathered = world.gather_to_main(my_stats)
    all_stats = [join_unit_stats(list(parts)) for parts in zip(*gathered)] if world.is_main else []
    stats_seconds = time.perf_counter() - stats_started
    hook_of[NEURONS] = store.hook_name

    llm_cache = run_dir / "analysis" / "llm_cache.sqlite" if world.is_main else None
    explainers = _explainers(cfg, token_strings, sources, llm_cache)
    primary = explainers[0]
    largest = max(sae_names, key=lambda n: saes[n].cfg.d_sae) if sae_names else None
    alive = {s.name: np.flatnonzero(s.fire_count_U > 0) for s in all_stats}  # rank 0's alone
    samples = _comparison_samples(alive, largest, cfg.n_scored_units, cfg.seed) if world.is_main else {}

    scores: dict[str, dict[str, dict[int, UnitScore]]] = {e.backend: {} for e in explainers}
    cores = max(1, (processes or available_cpus()) // world.size)
    for b, part in enumerate(my_stats):
        examples = _examples(part, text, cfg)
        for explainer in explainers:
            # the offline scorers are cheap: each rank scores every alive unit of its part; an LLM
            # scores the comparison sample only, on rank 0, which holds every unit's statistics
            offline = explainer.backend.startswith("offline")
            if offline:
                stats, units = part, part.first_unit + np.flatnonzero(part.fire_count_U > 0)
            elif world.is_main:
                stats, units = all_stats[b], samples.get(part.name, np.array([], int))
            else:
                stats, units = part, np.array([], int)
            scored = _score_units(
                explainer,
                stats,
                examples if stats is part else _examples(stats, text, cfg),
                units.tolist(),
                sources,
                cfg.seed,
                workers=1 if offline else cfg.llm_concurrency,
                processes=cores if offline else 1,
            )
            parts = world.gather_objects(scored)
            scores[explainer.backend][part.name] = {u: s for by_rank in parts for u, s in by_rank.items()}
    if not world.is_main:
        return {}

    token_count_V = np.bincount(text.tokens_N, minlength=vocab_size)
    with fs.create_store(run_dir / fs.FILENAME) as db:
        db.add(fs.VocabRow(t, token_strings[t], int(token_count_V[t])) for t in range(vocab_size))
        db.add(
            fs.MetaRow(key, value)
            for key, value in [
                ("analysis_config", json.dumps(cfg.model_dump())),
                ("n_tokens", json.dumps(n_rows)),
                ("hook_name", json.dumps(store.hook_name)),
                ("score_sample", json.dumps({k: v.tolist() for k, v in samples.items()})),
                ("backends", json.dumps([e.backend for e in explainers])),
                ("sources", json.dumps(sources.sources)),
                ("languages", json.dumps(sources.languages)),
            ]
        )
        written_N = np.zeros(n_rows, dtype=bool)
        for stats in all_stats:
            _write_dictionary(
                db,
                stats,
                _examples(stats, text, cfg),
                {b: by_dict[stats.name] for b, by_dict in scores.items()},
                samples.get(stats.name),
                text,
                cfg,
                model,
                saes.get(stats.name),
                vocab_size,
                token_count_V,
                written_N,
                primary.backend,
                hook_of[stats.name],
                hook_of[stats.name] == store.hook_name,
                resolve_device(device),
            )
            _write_contexts(db, stats, sources, token_strings)

    figures: dict[str, Any] = {
        "n_tokens": n_rows,
        "backend": primary.backend,
        "n_scored_units": len(samples[NEURONS]),
        "store": fs.FILENAME,
        "sources": sources.sources,
        "dictionaries": {},
    }
    for stats in all_stats:
        figures["dictionaries"][stats.name] = {
            "n_units": stats.n_units,
            "alive": int(len(alive[stats.name])),
            "dead_fraction": float(1 - len(alive[stats.name]) / stats.n_units),
            "mean_density": float(stats.density_U.mean()),
            "cofiring_tokens": stats.cofire_rows,
        }
    figures["explainer_backends"] = []
    for explainer in explainers:
        entry = {
            "backend": explainer.backend,
            **{
                f"neuron_{k}": v
                for k, v in _backend_figures(scores[explainer.backend][NEURONS], samples[NEURONS]).items()
            },
        }
        if largest:
            entry.update(
                {
                    f"feature_{k}": v
                    for k, v in _backend_figures(scores[explainer.backend][largest], samples[largest]).items()
                }
            )
        figures["explainer_backends"].append(entry)
    main = figures["explainer_backends"][0]
    figures["neuron_score_mean"] = main["neuron_score_mean"]
    figures["neuron_score_median"] = main["neuron_score_median"]
    if largest:
        figures["feature_dictionary"] = largest
        for key in ("feature_score_mean", "feature_score_median", "feature_detection_mean", "neuron_detection_mean"):
            figures[key] = main[key]
        per_backend = {
            e.backend: (
                [scores[e.backend][NEURONS][u].simulation for u in samples[NEURONS]],
                [scores[e.backend][largest][u].simulation for u in samples[largest]],
            )
            for e in explainers
        }
        figures["score_plot"] = str(
            _plot_scores(per_backend, largest, run_dir / "analysis" / "autointerp_scores.png").relative_to(run_dir)
        )
        figures["god"] = god_check(run_dir / fs.FILENAME, largest)
    figures["statistics_seconds"] = round(stats_seconds, 2)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return figures


def god_check(store_path: Path, dict_name: str) -> dict[str, Any] | None:
    """The essay's check: the feature that best matches the token " God"/"God", its top tokens,
    logit effects and constituent neurons with their own scores (None if no such token)."""
    store = fs.FeatureStore(store_path)
    try:
        best = None
        for token in GOD_TOKENS:
            if not store.tokens_matching(token):
                continue
            hits = store.search_token(token, dict_name, top=1)
            if hits and (best is None or hits[0]["f1"] > best["f1"]):
                best = hits[0]
        if best is None:
            return None
        unit = best["unit"]
        neurons = []
        for neuron, weight in store.constituents(dict_name, unit)[:3]:
            info = store.unit(NEURONS, neuron)
            neurons.append(
                {
                    "neuron": neuron,
                    "weight": round(weight, 4),
                    "simulation_score": info["simulation_score"],
                    "explanation": info["explanation"],
                    "top_tokens": [t.token for t in store.top_tokens(NEURONS, neuron)],
                }
            )
        page = store.unit(dict_name, unit)
        return {
            "dictionary": dict_name,
            "feature": unit,
            "token": best["token"],
            "precision": round(best["precision"], 4),
            "recall": round(best["recall"], 4),
            "top_tokens": [t.token for t in best["top_tokens"]],
            "simulation_score": page["simulation_score"],
            "explanation": page["explanation"],
            "promotes": [t for t, _ in store.logits(dict_name, unit)["top"][:8]],
            "constituent_neurons": neurons,
        }
    finally:
        store.close()


def _write_dictionary(
    db: fs.StoreWriter,
    stats: UnitStats,
    examples: UnitExamples,
    by_backend: dict[str, dict[int, UnitScore]],
    sample,
    text: TokenContext,
    cfg: AnalysisConfig,
    model,
    sae,
    vocab_size: int,
    token_count_V: np.ndarray,
    written_N: np.ndarray,
    backend: str,
    hook_name: str,
    over_neurons: bool,
    device: torch.device,
) -> None:
    """One dictionary's rows: ``units`` carries the primary ``backend``'s explanation, ``explanations``
    every backend's. ``over_neurons``: the units live in the neurons' space (the main hook point),
    so a feature's constituent neurons mean something. ``written_N`` marks the context rows already
    in the store (updated here); the decoder's neighbours and logit effects are computed on ``device``."""
    name, U = stats.name, stats.n_units
    scores = by_backend[backend]
    units = np.arange(U)
    variant = sae.cfg.variant if sae is not None else None
    d_in = sae.cfg.d_in if sae is not None else U
    db.add([fs.DictionaryRow(name, stats.kind, U, d_in, variant, stats.n_rows, backend)])
    unit_scores = [scores.get(u) for u in range(U)]
    db.add_columns(
        fs.UnitRow,
        dict=name,
        unit=units,
        unit_kind=stats.kind,
        fire_count=stats.fire_count_U,
        density=stats.density_U,
        mean_act=stats.mean_act_U,
        max_act=stats.max_act_U,
        hist=_blobs(stats.hist_UH, np.ones(stats.hist_UH.shape, bool), "i8"),
        hist_max=stats.max_act_U,
        explanation=[s.explanation if s else None for s in unit_scores],
        simulation_score=[_nullable(s.simulation) if s else None for s in unit_scores],
        detection_score=[_nullable(s.detection) if s else None for s in unit_scores],
        fuzzing_score=[_nullable(s.fuzzing) if s else None for s in unit_scores],
        score_backend=[s.backend if s else None for s in unit_scores],
        in_score_sample=np.isin(units, sample if sample is not None else []).astype(np.int64),
    )
    db.add(
        fs.ExplanationRow(
            name, u, b, s.explanation, _nullable(s.simulation), _nullable(s.detection), _nullable(s.fuzzing)
        )
        for b, unit_scores_of in by_backend.items()
        for u, s in unit_scores_of.items()
    )
    new_R = np.unique(examples.row_E)
    new_R = new_R[~written_N[new_R]]
    written_N[new_R] = True
    rows_RW, inside_RW = text.window_rows(new_R, cfg.context_left, cfg.context_right)
    first_R = rows_RW[np.arange(len(new_R)), inside_RW.argmax(axis=1)]
    db.add_columns(
        fs.ContextRow,
        row=new_R,
        doc=text.docs_N[new_R],
        center=new_R - first_R,
        tokens=_blobs(np.where(inside_RW, text.tokens_N[rows_RW], 0), inside_RW, "i4"),
    )
    inside_EW = ~np.isnan(examples.acts_EW)
    db.add_columns(
        fs.ExampleRow,
        dict=name,
        unit=examples.unit_E,
        kind=np.asarray(EXAMPLE_KINDS)[examples.kind_E],
        bucket=examples.bucket_E,
        rank=examples.rank_E,
        row=examples.row_E,
        activation=examples.activation_E,
        acts=_blobs(examples.acts_EW, inside_EW, "f4"),
        split=np.where(examples.explain_E, "explain", "score"),
    )

    decoder_FD = None if sae is None else sae.W_dec.detach().to(device)
    directions_UM = torch.eye(U, device=device) if sae is None else decoder_FD
    effects_UV = logit_effects(model, directions_UM, hook_name)
    if effects_UV is not None:
        top_v, top_i, bottom_v, bottom_i = (t.cpu().numpy() for t in top_and_bottom(effects_UV, cfg.n_logits))
        rank_N = np.arange(cfg.n_logits)
        db.add_columns(
            fs.LogitRow,
            dict=name,
            unit=np.repeat(units, 2 * cfg.n_logits),
            rank=np.tile(np.concatenate([rank_N, -1 - rank_N]), U),
            token=np.concatenate([top_i, bottom_i], axis=1).reshape(-1),
            value=np.concatenate([top_v, bottom_v], axis=1).reshape(-1),
        )
    cof_v, cof_i = cofiring_neighbours(stats.cofire_UU, cfg.n_neighbours, device)
    unit_R, rank_R = _ranks(cof_i.shape, keep_UR=cof_i >= 0)
    db.add_columns(
        fs.NeighbourRow,
        dict=name,
        unit=unit_R,
        kind="cofiring",
        rank=rank_R,
        other=cof_i[unit_R, rank_R],
        value=cof_v[unit_R, rank_R],
    )
    if sae is not None:
        dec_v, dec_i = decoder_neighbours(decoder_FD, cfg.n_neighbours)
        unit_R, rank_R = _ranks(dec_i.shape)
        db.add_columns(
            fs.NeighbourRow,
            dict=name,
            unit=unit_R,
            kind="decoder",
            rank=rank_R,
            other=dec_i.reshape(-1),
            value=dec_v.reshape(-1),
        )
    if sae is not None and over_neurons:
        w, n = constituent_neurons(sae.W_dec.detach(), cfg.n_constituents)
        unit_R, rank_R = _ranks(n.shape)
        db.add_columns(
            fs.ConstituentRow, dict=name, unit=unit_R, rank=rank_R, neuron=n.reshape(-1), weight=w.reshape(-1)
        )
        w, f = neuron_users(sae.W_dec.detach(), cfg.n_constituents)
        neuron_R, rank_R = _ranks(f.shape)
        db.add_columns(
            fs.NeuronUserRow, dict=name, neuron=neuron_R, rank=rank_R, unit=f.reshape(-1), weight=w.reshape(-1)
        )
    _add_unit_tokens(db, name, stats, cfg.n_unit_tokens)


def _ranks(shape: tuple[int, int], keep_UR: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(unit, rank) of every entry of a ranked list per unit [U, R] (those ``keep_UR`` marks), row-major."""
    unit_UR, rank_UR = np.indices(shape)
    keep = np.ones(shape, bool) if keep_UR is None else keep_UR
    return unit_UR[keep], rank_UR[keep]


def _blobs(values_EW: np.ndarray, keep_EW: np.ndarray, dtype: str) -> list[bytes]:
    """Per row e, the little-endian bytes of ``values_EW[e]`` where ``keep_EW[e]``: a ragged array as
    blobs, with one conversion of all values and one slice per row."""
    data = fs.blob(values_EW[keep_EW], dtype)
    ends = (np.cumsum(keep_EW.sum(axis=1)) * np.dtype(dtype).itemsize).tolist()
    return [data[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def _write_contexts(
    db: fs.StoreWriter, stats: UnitStats, sources: TokenSources, token_strings: list[str], n_prev: int = 5
) -> None:
    """Per unit that fires: its activation mass's shares by source and by language (the 5 largest of
    at least 1 %), and by previous token (the ``n_prev`` largest)."""
    alive_A = np.flatnonzero(stats.fire_count_U > 0)
    total_A = np.maximum(stats.source_mass_US[alive_A].sum(axis=1), 1e-30)
    for kind, mass_UC, names in (
        ("source", stats.source_mass_US, sources.sources),
        ("language", stats.language_mass_UL, sources.languages),
    ):
        shares_AC = mass_UC[alive_A] / total_A[:, None]
        order_AC = np.argsort(-shares_AC, axis=1, kind="stable")[:, :5]
        share_AR = np.take_along_axis(shares_AC, order_AC, axis=1)
        a_R, rank_R = _ranks(share_AR.shape, keep_UR=share_AR >= 0.01)
        db.add_columns(
            fs.UnitContextRow,
            dict=stats.name,
            unit=alive_A[a_R],
            kind=kind,
            rank=rank_R,
            label=np.asarray(names, dtype=object)[order_AC[a_R, rank_R]],
            share=share_AR[a_R, rank_R],
        )
    prev = stats.prev_mass_UV
    unit_E = np.repeat(np.arange(prev.shape[0]), np.diff(prev.indptr))
    order = np.lexsort((np.arange(len(unit_E)), -prev.data, unit_E))
    order = order[stats.fire_count_U[unit_E[order]] > 0]
    unit_E = unit_E[order]
    rank_E = np.arange(len(order)) - np.searchsorted(unit_E, unit_E)
    order, unit_E, rank_E = order[rank_E < n_prev], unit_E[rank_E < n_prev], rank_E[rank_E < n_prev]
    total_U = np.maximum(stats.source_mass_US.sum(axis=1), 1e-30)
    db.add_columns(
        fs.UnitContextRow,
        dict=stats.name,
        unit=unit_E,
        kind="preceding",
        rank=rank_E,
        label=np.asarray(token_strings, dtype=object)[prev.indices[order]],
        share=prev.data[order] / total_U[unit_E],
    )


def _add_unit_tokens(db: fs.StoreWriter, name: str, stats: UnitStats, n: int) -> None:
    """The fires and mean activation of each unit's n most-fired tokens and each token's n
    most-firing units — enough to rank units by precision/recall on any token."""
    fires = stats.token_fires_UV.tocoo()
    sums = stats.token_act_sums_UV.tocsr()
    unit, token, count = fires.row, fires.col, fires.data
    keep = np.zeros(len(count), dtype=bool)
    for by, other in ((unit, token), (token, unit)):
        order = np.lexsort((other, -count, by))
        sorted_by = by[order]
        starts = np.searchsorted(sorted_by, sorted_by)
        keep[order[np.arange(len(order)) - starts < n]] = True
    unit, token, count = unit[keep], token[keep], count[keep]
    act_sum = np.asarray(sums[unit, token]).ravel()
    db.add_columns(
        fs.UnitTokenRow, dict=name, unit=unit, token=token, fires=count.astype(np.int64), mean_act=act_sum / count
    )


def _nullable(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def analysis_headline(figures: dict[str, Any]) -> str:
    """One line for the ``run`` summary: the score comparison per backend and the God check."""
    line = f"{figures['n_tokens']:,} tokens; autointerp ({figures['n_scored_units']} each, mean simulation score): "
    if "feature_score_mean" not in figures:
        return (
            line
            + "; ".join(f"{b['backend']}: neurons {b['neuron_score_mean']:.2f}" for b in figures["explainer_backends"])
            + " (no SAE analysed)"
        )
    line += "; ".join(
        f"{b['backend']}: features {b['feature_score_mean']:.2f} vs neurons {b['neuron_score_mean']:.2f}"
        for b in figures["explainer_backends"]
    )
    god = figures.get("god")
    if god:
        line += (
            f"; {god['token']!r} → {god['dictionary']}/{god['feature']} (precision {god['precision']:.2f}, "
            f"recall {god['recall']:.2f}, neurons {', '.join(str(n['neuron']) for n in god['constituent_neurons'])})"
        )
    return line
