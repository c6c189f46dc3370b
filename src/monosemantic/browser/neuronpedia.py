"""Feature dashboards as sae-dashboard writes them for Neuronpedia, so features move to those tools.

``export_dashboards`` writes ``batch-0.json`` in the shape of sae-dashboard's
``NeuronpediaDashboardBatch`` (``model_id``, ``layer``, ``sae_set``, ``features``: each feature the
keys of ``NeuronpediaDashboardFeature``, its ``activations`` those of
``NeuronpediaDashboardActivation``) and ``explanations.json`` in Neuronpedia's explanation shape
(``modelId``, ``layer``, ``index``, ``description``, ``explanationModelName``, ``typeName``, one per
explainer backend). What comes from where:

- ``pos_str``/``pos_values``, ``neg_str``/``neg_values``: the feature's promoted and suppressed
  tokens (median-shifted direct logit effects, ``analysis/logits.py``); ``logits_hist_*``: the
  histogram of that effect over the whole vocabulary.
- ``activations``: the top examples (``bin_min`` −1, ``bin_max`` the largest activation,
  ``bin_contains`` −1, as sae-dashboard marks them; random contexts have no bin there), then each
  activation interval's examples with its bounds [i·max/I, (i+1)·max/I) and the share of the
  feature's firings inside it (read from the activation histogram, bin by bin).
- ``frac_nonzero``: the firing density; ``freq_hist_*``: the activation histogram.
- ``neuron_alignment_*``: the feature's constituent neurons (decoder weights and their share of
  ‖W_dec[f]‖₁), for dictionaries at the run's main hook point.
- ``correlated_neurons_*``, ``correlated_features_*`` and ``decoder_weights_dist`` stay empty:
  we measure co-firing by Jaccard index (the browser shows it), not the Pearson and cosine
  numbers those keys hold.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monosemantic.analysis.logits import logit_effects
from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.atomic import atomic_path
from monosemantic.errors import UserError
from monosemantic.lm.model import load_lm
from monosemantic.pipeline import RunDir
from monosemantic.sae.io import load_sae, saved_hook_name

LOGIT_HIST_BINS = 40


def _r(values) -> list[float]:
    return [round(float(v), 3) for v in values]


def _layer(hook_name: str) -> int:
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else 0


def _interval_share(hist: list[int], hist_max: float, low: float, high: float) -> float:
    """Share of the firings whose histogram bin centre lies in [low, high)."""
    counts = np.asarray(hist, dtype=np.float64)
    centres = (np.arange(len(counts)) + 0.5) * hist_max / len(counts)
    inside = (centres >= low) & (centres < high)
    return float(counts[inside].sum() / counts.sum()) if counts.sum() else 0.0


def feature_dashboard(
    store: FeatureStore, dict_name: str, unit: int, sae, model, hook_name: str, dataset: str, n_ctx: int
) -> dict[str, Any]:
    """One feature as a ``NeuronpediaDashboardFeature`` dict (``n_ctx``: the LM's window, in tokens)."""
    page = store.feature_page(dict_name, unit)
    meta = store.meta()
    n_intervals = meta["analysis_config"]["n_quantile_intervals"]
    hist, hist_max = page["hist"], page["hist_max"]
    activations = []
    order = {"top": 0, "interval": 1}  # sae-dashboard's order: top activations, then intervals from the highest
    examples = sorted(
        (e for e in page["examples"] if e["kind"] in order), key=lambda e: (order[e["kind"]], -e["bucket"], e["rank"])
    )
    for e in examples:
        if e["kind"] == "top":
            bounds = (-1.0, float(page["max_act"]), -1.0)
        elif e["kind"] == "interval":
            low, high = e["bucket"] * page["max_act"] / n_intervals, (e["bucket"] + 1) * page["max_act"] / n_intervals
            bounds = (low, high, _interval_share(hist, hist_max, low, high))
        activations.append(
            {"bin_min": bounds[0], "bin_max": bounds[1], "bin_contains": bounds[2], "tokens": e["texts"]}
            | {"values": _r(e["acts"])}
        )
    effects_V = logit_effects(model, sae.W_dec.detach()[unit : unit + 1].float(), hook_name)
    if effects_V is None:
        logit_heights, logit_values = [], []
    else:
        heights, edges = np.histogram(effects_V[0].numpy(), bins=LOGIT_HIST_BINS)
        logit_heights, logit_values = heights.tolist(), _r((edges[:-1] + edges[1:]) / 2)
    constituents = page.get("constituents", [])
    l1 = float(sae.W_dec.detach()[unit].abs().sum())
    centres = (np.arange(len(hist)) + 0.5) * hist_max / max(len(hist), 1)
    return {
        "feature_index": unit,
        "neuron_alignment_indices": [n for n, _ in constituents],
        "neuron_alignment_values": _r(w for _, w in constituents),
        "neuron_alignment_l1": _r(abs(w) / l1 for _, w in constituents),
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [],
        "correlated_features_l1": [],
        "correlated_features_pearson": [],
        "neg_str": [t for t, _ in page["logits"]["bottom"]],
        "neg_values": _r(v for _, v in page["logits"]["bottom"]),
        "pos_str": [t for t, _ in page["logits"]["top"]],
        "pos_values": _r(v for _, v in page["logits"]["top"]),
        "frac_nonzero": float(page["density"]),
        "freq_hist_data_bar_values": _r(centres),
        "freq_hist_data_bar_heights": [int(h) for h in hist],
        "logits_hist_data_bar_heights": logit_heights,
        "logits_hist_data_bar_values": logit_values,
        "n_prompts_total": int(meta["n_tokens"]) // n_ctx,
        "n_tokens_in_prompt": n_ctx,
        "dataset": dataset,
        "decoder_weights_dist": [],
        "activations": activations,
    }


def export_dashboards(run_dir: str | Path, dict_name: str, units: list[int] | None, out: str | Path) -> Path:
    """Write ``units`` (default: every feature) of SAE ``dict_name`` into folder ``out`` (replaced
    atomically): ``batch-0.json`` and ``explanations.json``. Returns ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    store = FeatureStore(run_dir / FILENAME)
    try:
        dicts = {d["name"]: d for d in store.dictionaries() if d["unit_kind"] == "feature"}
        if dict_name not in dicts:
            raise UserError(f"{run_dir}: no SAE {dict_name!r} (have: {', '.join(dicts) or 'none'})")
        n_units = dicts[dict_name]["n_units"]
        units = list(range(n_units)) if units is None else units
        bad = [u for u in units if not 0 <= u < n_units]
        if bad:
            raise UserError(f"--features: {dict_name} has features 0…{n_units - 1}, not {bad[0]}")
        manifest = RunDir(run_dir).manifest
        hook = saved_hook_name(run_dir / "saes" / dict_name) or store.meta()["hook_name"]
        lm_cfg = manifest.get("config", {}).get("lm", {})
        model_id = Path(lm_cfg.get("hf_model_dir") or lm_cfg.get("pretrained") or run_dir.name).name
        corpus = manifest.get("config", {}).get("corpus", {})
        dataset = str(corpus.get("dataset") or corpus.get("corpus") or "bundled")
        sae, model = load_sae(run_dir / "saes" / dict_name), load_lm(run_dir / "lm")
        with torch.no_grad():
            n_ctx = int(lm_cfg.get("n_ctx") or model.cfg.n_ctx)
            features = [feature_dashboard(store, dict_name, u, sae, model, hook, dataset, n_ctx) for u in units]
        layer = _layer(hook)
        explanations = [
            {
                "modelId": model_id,
                "layer": f"{layer}-{dict_name}",
                "index": str(u),
                "description": e["explanation"],
                "explanationModelName": e["backend"],
                "typeName": "monosemantic",
                "simulationScore": e["simulation_score"],
            }
            for u in units
            for e in store.explanations(dict_name, u)
            if e["explanation"]
        ]
    finally:
        store.close()
    batch = {"model_id": model_id, "layer": layer, "sae_set": dict_name, "features": features}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "batch-0.json").write_text(json.dumps(batch))
        (tmp / "explanations.json").write_text(json.dumps(explanations, indent=1))
    return out
