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
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple

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
from monosemantic.analysis.context import TokenSources, UnitContext, describe_sources
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
    read_token_context,
)
from monosemantic.analysis.store import NEURONS
from monosemantic.corpus.sources import DocumentSources
from monosemantic.corpus.tokenizer import load_tokenizer
from monosemantic.errors import UserError
from monosemantic.figures import save_figure
from monosemantic.lm.model import load_lm
from monosemantic.progress import progress
from monosemantic.sae.io import load_sae, saved_hook_name

GOD_TOKENS = (" God", "God")


class ExampleRecord(NamedTuple):
    """One example of a unit as the store keeps it: which list it is in (``kind`` top, interval or
    random; ``bucket`` the interval; ``rank``), the activation-store row at its centre, the unit's
    activation there and over the context window (``acts``), and whether it explains or scores."""

    kind: str
    bucket: int
    rank: int
    row: int
    activation: float
    acts: np.ndarray
    split: str


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


def _kept(kept, group: int, kind: str, bucket: int, n: int, split_of) -> list[ExampleRecord]:
    """The examples ``kept`` (top or interval examples: ``row``, ``value``, ``payload`` [G, n]) holds
    for ``group``, as records; ``split_of(rank)`` says whether each explains or scores."""
    return [
        ExampleRecord(
            kind,
            bucket,
            rank,
            kept.row[group, rank],
            kept.value[group, rank],
            kept.payload[group, rank],
            split_of(rank),
        )
        for rank in range(n)
        if kept.row[group, rank] >= 0
    ]


def _examples(stats: UnitStats, text: TokenContext, cfg: AnalysisConfig) -> dict[int, dict[str, list]]:
    """Per unit: explain and score examples (token ids + activations), and rows for the store."""
    explain_intervals = cfg.per_interval // 2 + 1
    out = {}
    random_rows = [_context_rows(text, r, cfg) for r in stats.random_rows_P]
    rows_of: dict[int, np.ndarray] = {}
    for u in range(stats.n_units):
        records = _kept(stats.top, u, "top", 0, cfg.top_k, lambda rank: "explain" if rank % 2 == 0 else "score")
        I = cfg.n_quantile_intervals
        for interval in range(I):
            records += _kept(
                stats.intervals,
                u * I + interval,
                "interval",
                interval,
                cfg.per_interval,
                lambda rank: "explain" if rank < explain_intervals else "score",
            )
        for p, row in enumerate(stats.random_rows_P):
            acts = stats.random_acts_UPW[u, p]
            center = acts[cfg.context_left]
            records.append(ExampleRecord("random", 0, p, row, center, acts, "score"))
        explain_rows = {r.row for r in records if r.split == "explain"}
        records = [r for r in records if r.split == "explain" or r.row not in explain_rows]
        explain, score = [], []
        for r in records:
            if r.kind == "random":
                rows = random_rows[r.rank]
            else:
                rows = rows_of.get(r.row)
                if rows is None:
                    rows = rows_of[r.row] = _context_rows(text, r.row, cfg)
            (explain if r.split == "explain" else score).append(
                Example(text.tokens_N[rows], r.acts[~np.isnan(r.acts)].astype(np.float64), rows)
            )
        out[u] = {"records": records, "explain": explain, "score": score}
    return out


def _context_rows(text: TokenContext, row: int, cfg: AnalysisConfig) -> np.ndarray:
    first, stop = text.span(int(row), cfg.context_left, cfg.context_right)
    return np.arange(first, stop)


def held_out_context(stats: UnitStats, unit: int, score: list[Example], sources: TokenSources) -> UnitContext:
    """The unit's context mass less its activations on the score split's rows (each row once)."""
    if not score:
        return stats.context(unit)
    rows = np.concatenate([e.rows for e in score])
    acts = np.concatenate([e.acts for e in score])
    rows, first = np.unique(rows, return_index=True)
    return stats.context(unit).without_rows(rows, acts[first], sources)


def _score_units(
    explainer: Explainer,
    stats: UnitStats,
    examples: dict,
    units: list[int],
    sources: TokenSources,
    seed: int,
    workers: int = 1,
) -> dict[int, UnitScore]:
    """Explain and score ``units``; ``workers`` > 1 scores that many units at once (an LLM's requests overlap)."""

    def one(u: int) -> UnitScore:
        score = examples[u]["score"]
        return score_unit(
            explainer,
            examples[u]["explain"],
            score,
            float(stats.max_act_U[u]),
            held_out_context(stats, u, score, sources),
            seed=seed + u,
        )

    scores = {}
    with progress(f"analysis: explain+score {stats.name} ({explainer.backend})", len(units), unit="units") as advance:
        if workers == 1:
            for u in units:
                scores[u] = one(u)
                advance(1)
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = {pool.submit(one, u): u for u in units}
                for future in as_completed(futures):
                    scores[futures[future]] = future.result()
                    advance(1)
    return scores


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
    cfg: AnalysisConfig, token_strings: list[str], sources: TokenSources, cache_path: Path
) -> list[Explainer]:
    """The configured LLM (if any) first, then the offline context explainer and its token-list baseline."""
    offline: list[Explainer] = [ContextExplainer(token_strings, sources), OfflineExplainer(token_strings)]
    if cfg.explainer == "offline":
        return offline
    return [llm_explainer_from_config(cfg, token_strings, cache_path), *offline]


def analyze_run(
    run_dir: Path,
    sae_names: list[str],
    cfg: AnalysisConfig,
    device: str = "cpu",
    doc_sources: DocumentSources | None = None,
) -> dict[str, Any]:
    """Analyse the neurons and the SAEs ``RUN/saes/<name>`` over the held-out store; write
    ``RUN/features.sqlite`` and ``RUN/analysis/autointerp_scores.png``; return run.json's figures.
    ``doc_sources`` names each corpus document's source (default: one source for all)."""
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
    all_stats = compute_unit_stats(store, bases, text, vocab_size, stats_cfg, sources)
    for hook in sorted(set(hook_of.values()) - {store.hook_name}):
        other = ActivationStore(hook_store_dir(run_dir, "val", hook, store.hook_name))
        other_bases, other_saes = _bases(run_dir, [n for n in sae_names if hook_of[n] == hook], other.d_in, False)
        saes.update(other_saes)
        all_stats += compute_unit_stats(other, other_bases, text, vocab_size, stats_cfg, sources)
    hook_of[NEURONS] = store.hook_name

    explainers = _explainers(cfg, token_strings, sources, run_dir / "analysis" / "llm_cache.sqlite")
    primary = explainers[0]
    rng = np.random.default_rng(cfg.seed)
    largest = max(sae_names, key=lambda n: saes[n].cfg.d_sae) if sae_names else None
    alive = {s.name: np.flatnonzero(s.fire_count_U > 0) for s in all_stats}
    n_sample = min([cfg.n_scored_units, len(alive[NEURONS])] + ([len(alive[largest])] if largest else []))
    samples = {
        name: np.sort(rng.choice(alive[name], size=n_sample, replace=False))
        for name in ([NEURONS, largest] if largest else [NEURONS])
    }

    token_count_V = np.bincount(text.tokens_N, minlength=vocab_size)
    scores: dict[str, dict[str, dict[int, UnitScore]]] = {e.backend: {} for e in explainers}
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
        written_rows: set[int] = set()
        for stats in all_stats:
            examples = _examples(stats, text, cfg)
            for explainer in explainers:
                # the offline scorers are cheap: they score every unit; an LLM scores the comparison sample only
                offline = explainer.backend.startswith("offline")
                units = alive[stats.name] if offline else samples.get(stats.name, np.array([], int))
                scores[explainer.backend][stats.name] = _score_units(
                    explainer,
                    stats,
                    examples,
                    units.tolist(),
                    sources,
                    cfg.seed,
                    workers=1 if offline else cfg.llm_concurrency,
                )
            _write_dictionary(
                db,
                stats,
                examples,
                {b: by_dict[stats.name] for b, by_dict in scores.items()},
                samples.get(stats.name),
                text,
                cfg,
                model,
                saes.get(stats.name),
                vocab_size,
                token_count_V,
                written_rows,
                primary.backend,
                hook_of[stats.name],
                hook_of[stats.name] == store.hook_name,
            )
            _write_contexts(db, stats, sources, token_strings)

    figures: dict[str, Any] = {
        "n_tokens": n_rows,
        "backend": primary.backend,
        "n_scored_units": n_sample,
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
    examples: dict,
    by_backend: dict[str, dict[int, UnitScore]],
    sample,
    text: TokenContext,
    cfg: AnalysisConfig,
    model,
    sae,
    vocab_size: int,
    token_count_V: np.ndarray,
    written_rows: set[int],
    backend: str,
    hook_name: str,
    over_neurons: bool,
) -> None:
    """One dictionary's rows: ``units`` carries the primary ``backend``'s explanation, ``explanations``
    every backend's. ``over_neurons``: the units live in the neurons' space (the main hook point),
    so a feature's constituent neurons mean something."""
    name, U = stats.name, stats.n_units
    scores = by_backend[backend]
    in_sample = set(sample.tolist()) if sample is not None else set()
    variant = sae.cfg.variant if sae is not None else None
    d_in = sae.cfg.d_in if sae is not None else U
    db.add([fs.DictionaryRow(name, stats.kind, U, d_in, variant, stats.n_rows, backend)])
    density, mean_act = stats.density_U, stats.mean_act_U
    db.add(
        [
            fs.UnitRow(
                name,
                u,
                stats.kind,
                int(stats.fire_count_U[u]),
                float(density[u]),
                float(mean_act[u]),
                float(stats.max_act_U[u]),
                fs.blob(stats.hist_UH[u], "i8"),
                float(stats.max_act_U[u]),
                scores[u].explanation if u in scores else None,
                _nullable(scores[u].simulation) if u in scores else None,
                _nullable(scores[u].detection) if u in scores else None,
                _nullable(scores[u].fuzzing) if u in scores else None,
                scores[u].backend if u in scores else None,
                int(u in in_sample),
            )
            for u in range(U)
        ]
    )
    db.add(
        [
            fs.ExplanationRow(
                name,
                u,
                b,
                score.explanation,
                _nullable(score.simulation),
                _nullable(score.detection),
                _nullable(score.fuzzing),
            )
            for b, unit_scores in by_backend.items()
            for u, score in unit_scores.items()
        ]
    )
    new_contexts, example_rows = [], []
    for u in range(U):
        for r in examples[u]["records"]:
            row = int(r.row)
            if row not in written_rows:
                written_rows.add(row)
                first, stop = text.span(row, cfg.context_left, cfg.context_right)
                tokens = fs.blob(text.tokens_N[first:stop], "i4")
                new_contexts.append(fs.ContextRow(row, int(text.docs_N[row]), row - first, tokens))
            acts = fs.blob(r.acts[~np.isnan(r.acts)], "f4")
            example_rows.append(
                fs.ExampleRow(name, u, r.kind, r.bucket, r.rank, row, float(r.activation), acts, r.split)
            )
    db.add(new_contexts)
    db.add(example_rows)

    directions_UM = torch.eye(U) if sae is None else sae.W_dec.detach().float()
    effects_UV = logit_effects(model, directions_UM, hook_name)
    if effects_UV is not None:
        top_v, top_i, bottom_v, bottom_i = top_and_bottom(effects_UV, cfg.n_logits)
        db.add(
            [
                fs.LogitRow(name, u, r, int(top_i[u, r]), float(top_v[u, r]))
                for u in range(U)
                for r in range(cfg.n_logits)
            ]
            + [
                fs.LogitRow(name, u, -1 - r, int(bottom_i[u, r]), float(bottom_v[u, r]))
                for u in range(U)
                for r in range(cfg.n_logits)
            ]
        )
    neighbour_rows = []
    cof_v, cof_i = cofiring_neighbours(stats.cofire_UU, cfg.n_neighbours)
    neighbour_rows += [
        fs.NeighbourRow(name, u, "cofiring", r, int(cof_i[u, r]), float(cof_v[u, r]))
        for u in range(U)
        for r in range(cfg.n_neighbours)
        if cof_i[u, r] >= 0
    ]
    if sae is not None:
        dec_v, dec_i = decoder_neighbours(sae.W_dec.detach(), cfg.n_neighbours)
        neighbour_rows += [
            fs.NeighbourRow(name, u, "decoder", r, int(dec_i[u, r]), float(dec_v[u, r]))
            for u in range(U)
            for r in range(dec_i.shape[1])
        ]
    if sae is not None and over_neurons:
        w, n = constituent_neurons(sae.W_dec.detach(), cfg.n_constituents)
        db.add(fs.ConstituentRow(name, u, r, int(n[u, r]), float(w[u, r])) for u in range(U) for r in range(n.shape[1]))
        w, f = neuron_users(sae.W_dec.detach(), cfg.n_constituents)
        db.add(
            fs.NeuronUserRow(name, m, r, int(f[m, r]), float(w[m, r]))
            for m in range(f.shape[0])
            for r in range(f.shape[1])
        )
    db.add(neighbour_rows)
    db.add(_unit_token_rows(name, stats, cfg.n_unit_tokens))


def _write_contexts(
    db: fs.StoreWriter, stats: UnitStats, sources: TokenSources, token_strings: list[str], n_prev: int = 5
) -> None:
    """Per unit: its activation mass's shares by source, by language, and by previous token (top ``n_prev``)."""
    rows = []
    prev = stats.prev_mass_UV
    for u in np.flatnonzero(stats.fire_count_U > 0):
        context = stats.context(int(u))
        total = max(context.total, 1e-30)
        for kind, shares, names in (
            ("source", context.source_shares(), sources.sources),
            ("language", context.language_shares(), sources.languages),
        ):
            rows += [
                fs.UnitContextRow(stats.name, int(u), kind, r, label, share)
                for r, (label, share) in enumerate(describe_sources(shares, names, n=5, min_share=0.01))
            ]
        start, stop = prev.indptr[u], prev.indptr[u + 1]
        order = np.argsort(-prev.data[start:stop], kind="stable")[:n_prev]
        rows += [
            fs.UnitContextRow(
                stats.name,
                int(u),
                "preceding",
                r,
                token_strings[int(prev.indices[start + i])],
                float(prev.data[start + i] / total),
            )
            for r, i in enumerate(order)
        ]
    db.add(rows)


def _unit_token_rows(name: str, stats: UnitStats, n: int) -> list[fs.UnitTokenRow]:
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
    return [
        fs.UnitTokenRow(name, int(u), int(t), int(c), float(s / c)) for u, t, c, s in zip(unit, token, count, act_sum)
    ]


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
