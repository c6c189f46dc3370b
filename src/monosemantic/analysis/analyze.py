"""The analysis stage: neurons and every SAE's features, analysed alike, into ``RUN/features.sqlite``.

``analyze_run`` computes the per-unit statistics (``stats.py``) over the held-out activation store,
logit effects, constituent neurons, neighbours, and explains and scores units (``autointerp.py``);
it compares a random sample of neurons with an equal-sized sample of the largest SAE's features
under the same scorer (a plot and the two means go into ``run.json``), and checks for a "God"
feature the way the essay describes it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monosemantic.activations import ActivationStore
from monosemantic.analysis import store as fs
from monosemantic.analysis.autointerp import (
    Example,
    Explainer,
    OfflineExplainer,
    UnitScore,
    llm_explainer_from_env,
    score_unit,
)
from monosemantic.analysis.config import AnalysisConfig
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
from monosemantic.corpus.tokenizer import load_tokenizer
from monosemantic.errors import UserError
from monosemantic.figures import new_figure, save_figure
from monosemantic.lm.model import load_lm
from monosemantic.progress import progress
from monosemantic.sae.io import load_sae

GOD_TOKENS = (" God", "God")


def _token_strings(tokenizer, vocab_size: int) -> list[str]:
    return [tokenizer.decode([t], skip_special_tokens=False) for t in range(vocab_size)]


def _bases(run_dir: Path, sae_names: list[str], d_in: int) -> tuple[list[Basis], dict[str, Any]]:
    bases = [Basis(NEURONS, "neuron", d_in, lambda acts_BD: acts_BD)]
    saes = {}
    for name in sae_names:
        sae = load_sae(run_dir / "saes" / name)
        if sae.cfg.d_in != d_in:
            raise UserError(f"SAE {name}: d_in {sae.cfg.d_in} does not match the activations' {d_in}")
        saes[name] = sae
        bases.append(Basis(name, "feature", sae.cfg.d_sae, sae.encode))
    return bases, saes


def _examples(stats: UnitStats, text: TokenContext, cfg: AnalysisConfig) -> dict[int, dict[str, list]]:
    """Per unit: explain and score examples (token ids + activations), and rows for the store."""
    explain_intervals = cfg.per_interval // 2 + 1
    out = {}
    random_tokens = [_context_tokens(text, r, cfg) for r in stats.random_rows_P]
    tokens_of: dict[int, np.ndarray] = {}
    for u in range(stats.n_units):
        records = []  # (kind, bucket, rank, row, activation, acts, split)
        for rank in range(cfg.top_k):
            row = stats.top.row[u, rank]
            if row >= 0:
                records.append(("top", 0, rank, row, stats.top.value[u, rank], stats.top.payload[u, rank],
                                "explain" if rank % 2 == 0 else "score"))
        I = cfg.n_quantile_intervals
        for interval in range(I):
            g = u * I + interval
            for rank in range(cfg.per_interval):
                row = stats.intervals.row[g, rank]
                if row >= 0:
                    records.append(
                        (
                            "interval",
                            interval,
                            rank,
                            row,
                            stats.intervals.value[g, rank],
                            stats.intervals.payload[g, rank],
                            "explain" if rank < explain_intervals else "score",
                        )
                    )
        for p, row in enumerate(stats.random_rows_P):
            acts = stats.random_acts_UPW[u, p]
            center = acts[cfg.context_left]
            records.append(("random", 0, p, row, center, acts, "score"))
        explain_rows = {r[3] for r in records if r[6] == "explain"}
        records = [r for r in records if r[6] == "explain" or r[3] not in explain_rows]
        explain, score = [], []
        for kind, _bucket, rank, row, _activation, acts, split in records:
            if kind == "random":
                tokens = random_tokens[rank]
            else:
                tokens = tokens_of.get(row)
                if tokens is None:
                    tokens = tokens_of[row] = _context_tokens(text, row, cfg)
            (explain if split == "explain" else score).append(Example(tokens, acts[~np.isnan(acts)].astype(np.float64)))
        out[u] = {"records": records, "explain": explain, "score": score}
    return out


def _context_tokens(text: TokenContext, row: int, cfg: AnalysisConfig) -> np.ndarray:
    first, stop = text.span(int(row), cfg.context_left, cfg.context_right)
    return text.tokens_N[first:stop]


def _score_units(explainer: Explainer, stats: UnitStats, examples: dict, units: list[int]) -> dict[int, UnitScore]:
    scores = {}
    with progress(f"analysis: explain+score {stats.name}", len(units), unit="units") as advance:
        for u in units:
            scores[u] = score_unit(explainer, examples[u]["explain"], examples[u]["score"], float(stats.max_act_U[u]))
            advance(1)
    return scores


def _finite_mean(values: list[float]) -> float:
    """Mean with NaN (nothing could be predicted) counted as 0, the same rule for neurons and features."""
    return float(np.mean(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0))) if values else float("nan")


def _plot_scores(neuron_scores: list[float], feature_scores: list[float], feature_dict: str, backend: str,
                 path: Path) -> Path:
    fig, ax = new_figure((6, 3.5))
    bins = np.linspace(-0.2, 1, 25)
    for scores, label, color in (
        (neuron_scores, "neurons", "tab:gray"),
        (feature_scores, f"features ({feature_dict})", "tab:blue"),
    ):
        values = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
        ax.hist(np.clip(values, -0.2, 1), bins=bins, alpha=0.6, color=color,
                label=f"{label}: n={len(values)}, mean {values.mean():.2f}, median {np.median(values):.2f}")
    ax.set_xlabel("simulation score (correlation of predicted and true activations)")
    ax.set_ylabel("units")
    ax.set_title(f"Automated interpretability, explainer: {backend}", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def analyze_run(run_dir: Path, sae_names: list[str], cfg: AnalysisConfig, device: str = "cpu") -> dict[str, Any]:
    """Analyse the neurons and the SAEs ``RUN/saes/<name>`` over the held-out store; write
    ``RUN/features.sqlite`` and ``RUN/analysis/autointerp_scores.png``; return run.json's figures."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    store = ActivationStore(run_dir / "activations" / "val")
    model = load_lm(run_dir / "lm")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    vocab_size = model.cfg.d_vocab
    token_strings = _token_strings(tokenizer, vocab_size)
    n_rows, ctx = analysed_rows(store, cfg.n_tokens)
    text = read_token_context(store, n_rows, ctx)
    bases, saes = _bases(run_dir, sae_names, store.d_in)
    stats_cfg = StatsConfig(n_rows=n_rows, top_k=cfg.top_k, doc_cap=cfg.doc_cap, n_intervals=cfg.n_quantile_intervals,
                            per_interval=cfg.per_interval, n_random=cfg.n_random, hist_bins=cfg.hist_bins,
                            left=cfg.context_left, right=cfg.context_right, seed=cfg.seed)
    all_stats = compute_unit_stats(store, bases, text, vocab_size, stats_cfg)

    offline = OfflineExplainer(token_strings)
    explainer: Explainer = (
        offline if cfg.explainer == "offline" else llm_explainer_from_env(cfg.explainer, token_strings, cfg.llm_model)
    )
    rng = np.random.default_rng(cfg.seed)
    largest = max(sae_names, key=lambda n: saes[n].cfg.d_sae) if sae_names else None
    alive = {s.name: np.flatnonzero(s.fire_count_U > 0) for s in all_stats}
    n_sample = min([cfg.n_scored_units, len(alive[NEURONS])] + ([len(alive[largest])] if largest else []))
    samples = {name: np.sort(rng.choice(alive[name], size=n_sample, replace=False))
               for name in ([NEURONS, largest] if largest else [NEURONS])}

    token_count_V = np.bincount(text.tokens_N, minlength=vocab_size)
    scores: dict[str, dict[int, UnitScore]] = {}
    with fs.create_store(run_dir / fs.FILENAME) as db:
        db.executemany("INSERT INTO vocab VALUES (?, ?, ?)",
                       [(t, token_strings[t], int(token_count_V[t])) for t in range(vocab_size)])
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("analysis_config", json.dumps(cfg.model_dump())),
                ("n_tokens", json.dumps(n_rows)),
                ("hook_name", json.dumps(store.hook_name)),
                ("score_sample", json.dumps({k: v.tolist() for k, v in samples.items()})),
            ],
        )
        written_rows: set[int] = set()
        for stats in all_stats:
            examples = _examples(stats, text, cfg)
            # the offline scorer is cheap: it scores every unit; an LLM scores the comparison sample only
            units = (
                alive[stats.name].tolist()
                if explainer is offline
                else samples.get(stats.name, np.array([], int)).tolist()
            )
            scores[stats.name] = _score_units(explainer, stats, examples, units)
            _write_dictionary(db, stats, examples, scores[stats.name], samples.get(stats.name), text, cfg,
                              model, saes.get(stats.name), vocab_size, token_count_V, written_rows, explainer.backend)

    figures: dict[str, Any] = {"n_tokens": n_rows, "backend": explainer.backend, "n_scored_units": n_sample,
                               "store": fs.FILENAME, "dictionaries": {}}
    for stats in all_stats:
        figures["dictionaries"][stats.name] = {
            "n_units": stats.n_units, "alive": int(len(alive[stats.name])),
            "dead_fraction": float(1 - len(alive[stats.name]) / stats.n_units),
            "mean_density": float(stats.density_U.mean()), "cofiring_tokens": stats.cofire_rows}
    neuron_sample = [scores[NEURONS][u].simulation for u in samples[NEURONS]]
    figures["neuron_score_mean"] = _finite_mean(neuron_sample)
    figures["neuron_score_median"] = float(np.median(np.nan_to_num(neuron_sample, nan=0.0)))
    if largest:
        feature_sample = [scores[largest][u].simulation for u in samples[largest]]
        figures["feature_dictionary"] = largest
        figures["feature_score_mean"] = _finite_mean(feature_sample)
        figures["feature_score_median"] = float(np.median(np.nan_to_num(feature_sample, nan=0.0)))
        for name, sample in ((NEURONS, samples[NEURONS]), (largest, samples[largest])):
            detection = [scores[name][u].detection for u in sample]
            figures[f"{'neuron' if name == NEURONS else 'feature'}_detection_mean"] = (
                float(np.nanmean(detection)) if np.isfinite(detection).any() else None)
        figures["score_plot"] = str(_plot_scores(neuron_sample, feature_sample, largest, explainer.backend,
                                                 run_dir / "analysis" / "autointerp_scores.png").relative_to(run_dir))
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
                    "top_tokens": [t for t, _, _ in store.top_tokens(NEURONS, neuron)],
                }
            )
        page = store.unit(dict_name, unit)
        return {"dictionary": dict_name, "feature": unit, "token": best["token"],
                "precision": round(best["precision"], 4), "recall": round(best["recall"], 4),
                "top_tokens": [t for t, _, _ in best["top_tokens"]],
                "simulation_score": page["simulation_score"], "explanation": page["explanation"],
                "promotes": [t for t, _ in store.logits(dict_name, unit)["top"][:8]],
                "constituent_neurons": neurons}
    finally:
        store.close()


def _write_dictionary(db, stats: UnitStats, examples: dict, scores: dict[int, UnitScore], sample, text: TokenContext,
                      cfg: AnalysisConfig, model, sae, vocab_size: int, token_count_V: np.ndarray,
                      written_rows: set[int], backend: str) -> None:
    name, U = stats.name, stats.n_units
    in_sample = set(sample.tolist()) if sample is not None else set()
    db.execute(
        "INSERT INTO dictionaries VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, stats.kind, U, model.cfg.d_mlp, sae.cfg.variant if sae is not None else None, stats.n_rows, backend),
    )
    density, mean_act = stats.density_U, stats.mean_act_U
    db.executemany(
        "INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
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
                scores[u].backend if u in scores else None,
                int(u in in_sample),
            )
            for u in range(U)
        ],
    )
    new_contexts, example_rows = [], []
    for u in range(U):
        for kind, bucket, rank, row, activation, acts, split in examples[u]["records"]:
            row = int(row)
            if row not in written_rows:
                written_rows.add(row)
                first, stop = text.span(row, cfg.context_left, cfg.context_right)
                new_contexts.append((row, int(text.docs_N[row]), row - first, fs.blob(text.tokens_N[first:stop], "i4")))
            example_rows.append((name, u, kind, bucket, rank, row, float(activation),
                                 fs.blob(acts[~np.isnan(acts)], "f4"), split))
    db.executemany("INSERT INTO contexts VALUES (?, ?, ?, ?)", new_contexts)
    db.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", example_rows)

    directions_UM = torch.eye(U) if sae is None else sae.W_dec.detach().float()
    top_v, top_i, bottom_v, bottom_i = top_and_bottom(logit_effects(model, directions_UM), cfg.n_logits)
    db.executemany(
        "INSERT INTO logits VALUES (?, ?, ?, ?, ?)",
        [(name, u, r, int(top_i[u, r]), float(top_v[u, r])) for u in range(U) for r in range(cfg.n_logits)]
        + [
            (name, u, -1 - r, int(bottom_i[u, r]), float(bottom_v[u, r])) for u in range(U) for r in range(cfg.n_logits)
        ],
    )
    neighbour_rows = []
    cof_v, cof_i = cofiring_neighbours(stats.cofire_UU, cfg.n_neighbours)
    neighbour_rows += [(name, u, "cofiring", r, int(cof_i[u, r]), float(cof_v[u, r]))
                       for u in range(U) for r in range(cfg.n_neighbours) if cof_i[u, r] >= 0]
    if sae is not None:
        dec_v, dec_i = decoder_neighbours(sae.W_dec.detach(), cfg.n_neighbours)
        neighbour_rows += [(name, u, "decoder", r, int(dec_i[u, r]), float(dec_v[u, r]))
                           for u in range(U) for r in range(dec_i.shape[1])]
        w, n = constituent_neurons(sae.W_dec.detach(), cfg.n_constituents)
        db.executemany("INSERT INTO constituents VALUES (?, ?, ?, ?, ?)",
                       [(name, u, r, int(n[u, r]), float(w[u, r])) for u in range(U) for r in range(n.shape[1])])
        w, f = neuron_users(sae.W_dec.detach(), cfg.n_constituents)
        db.executemany(
            "INSERT INTO neuron_users VALUES (?, ?, ?, ?, ?)",
            [(name, m, r, int(f[m, r]), float(w[m, r])) for m in range(f.shape[0]) for r in range(f.shape[1])],
        )
    db.executemany("INSERT INTO neighbours VALUES (?, ?, ?, ?, ?, ?)", neighbour_rows)
    db.executemany("INSERT INTO unit_tokens VALUES (?, ?, ?, ?, ?)",
                   _unit_token_rows(name, stats, cfg.n_unit_tokens))


def _unit_token_rows(name: str, stats: UnitStats, n: int) -> list[tuple]:
    """(dict, unit, token, fires, mean act) for each unit's n most-fired tokens and each token's n
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
    return [(name, int(u), int(t), int(c), float(s / c)) for u, t, c, s in zip(unit, token, count, act_sum)]


def _nullable(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def analysis_headline(figures: dict[str, Any]) -> str:
    """One line for the ``run`` summary: the score comparison and the God check."""
    line = f"{figures['n_tokens']:,} tokens; autointerp ({figures['backend']}, {figures['n_scored_units']} each): "
    if "feature_score_mean" not in figures:
        return line + f"neurons {figures['neuron_score_mean']:.2f} (no SAE analysed)"
    line += (f"features {figures['feature_score_mean']:.2f} vs neurons {figures['neuron_score_mean']:.2f} "
             f"(mean simulation score)")
    god = figures.get("god")
    if god:
        line += (
            f"; {god['token']!r} → {god['dictionary']}/{god['feature']} (precision {god['precision']:.2f}, "
            f"recall {god['recall']:.2f}, neurons {', '.join(str(n['neuron']) for n in god['constituent_neurons'])})"
        )
    return line
