"""The analysis stage end to end on the tiny run, with an SAE whose features are the neurons
themselves — so every feature number must equal the matching neuron number — and steering checks."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch

from monosemantic.activations import ActivationStore
from monosemantic.analysis import analyze
from monosemantic.analysis.analyze import AnalysisConfig, analyze_run
from monosemantic.analysis.cli import search
from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.corpus.sources import DocumentSources
from monosemantic.errors import UserError
from monosemantic.interventions.cli import steer
from monosemantic.interventions.steer import ablation_loss_change, next_token_change, sample_continuation, steering_hook
from monosemantic.lm.model import load_lm
from monosemantic.progress import set_quiet
from monosemantic.sae.build import build_sae
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.io import save_sae

HOOK = "blocks.0.mlp.hook_post"
CFG = AnalysisConfig(
    top_k=6,
    per_interval=2,
    n_quantile_intervals=3,
    n_random=4,
    n_scored_units=16,
    context_left=4,
    context_right=2,
    n_logits=3,
    n_neighbours=3,
    n_constituents=3,
)


def identity_sae(d: int):
    """encode(x) = ReLU(x) = x for post-ReLU activations; W_dec = I: feature f *is* neuron f."""
    cfg = SAEConfig(d_in=d, d_sae=d, n_samples=1)
    sae = build_sae(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d)), sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_(), sae.b_dec.zero_()
    return sae, cfg


@pytest.fixture(scope="module")
def analysed(tiny_run, tmp_path_factory):
    set_quiet(True)
    run = tmp_path_factory.mktemp("analysis") / "run"
    shutil.copytree(tiny_run, run)
    d = ActivationStore(run / "activations" / "val").d_in
    sae, cfg = identity_sae(d)
    save_sae(sae, cfg, run / "saes" / f"identity-{d}")
    figures = analyze_run(run, [f"identity-{d}"], CFG, doc_sources=parity_sources(run))
    return run, figures, f"identity-{d}"


def parity_sources(run):
    """Two made-up sources: even and odd corpus documents."""
    n_docs = json.loads((run / "tokens" / "index.json").read_text())["n_docs"]
    parity = np.arange(n_docs, dtype=np.int32) % 2
    return DocumentSources(["even", "odd"], ["en"], parity, np.zeros(n_docs, dtype=np.int32))


def test_figures_and_files(analysed):
    run, figures, name = analysed
    assert (run / FILENAME).is_file() and (run / figures["score_plot"]).stat().st_size > 1000
    assert figures["backend"] == "offline-context" and figures["feature_dictionary"] == name
    backends = {b["backend"]: b for b in figures["explainer_backends"]}
    assert list(backends) == ["offline-context", "offline-token-list"]
    for b in backends.values():
        for key in ("score_mean", "score_median", "detection_mean", "fuzzing_mean"):
            assert -1 <= b[f"feature_{key}"] <= 1 and -1 <= b[f"neuron_{key}"] <= 1, key
    assert figures["feature_score_mean"] == backends["offline-context"]["feature_score_mean"]
    n_alive = figures["dictionaries"]["neurons"]["alive"]
    assert figures["n_scored_units"] == min(16, n_alive) and figures["dictionaries"][name]["alive"] == n_alive
    store = FeatureStore(run / FILENAME)
    for dict_name, key in ((name, "feature_score_mean"), ("neurons", "neuron_score_mean")):
        scores = [
            r[0] or 0.0
            for r in store.db.execute(  # no score (NaN) counts as 0, as in the figure
                "SELECT simulation_score FROM units WHERE dict=? AND in_score_sample", (dict_name,)
            )
        ]
        assert len(scores) == figures["n_scored_units"] and figures[key] == pytest.approx(np.mean(scores))
    n_rows = figures["n_tokens"]
    assert n_rows == ActivationStore(run / "activations" / "val").n_rows // 32 * 32


def test_identity_features_equal_neurons(analysed):
    run, _, name = analysed
    store = FeatureStore(run / FILENAME)
    d = store.dictionary(name)["n_units"]
    for u in range(d):
        neuron, feature = store.unit("neurons", u), store.unit(name, u)
        for key in ("fire_count", "max_act", "hist", "explanation", "simulation_score"):
            assert neuron[key] == pytest.approx(feature[key]), key
        assert store.logits("neurons", u) == store.logits(name, u)
        assert [e["row"] for e in store.examples("neurons", u, "top")] == [
            e["row"] for e in store.examples(name, u, "top")
        ]
        assert store.constituents(name, u)[0] == (u, 1.0)
        assert store.neuron_users(name, u)[0] == (u, 1.0)
        assert store.explanations("neurons", u) == store.explanations(name, u)
        assert store.contexts("neurons", u) == store.contexts(name, u)
    assert store.dictionary(None)["name"] == name  # the default is the largest SAE
    with pytest.raises(sqlite3.OperationalError):
        store.db.execute("DELETE FROM units")  # read-only


def test_examples_hold_true_contexts_and_activations(analysed):
    run, figures, name = analysed
    acts = ActivationStore(run / "activations" / "val")
    store = FeatureStore(run / FILENAME)
    unit = max(range(8), key=lambda u: store.unit(name, u)["fire_count"])
    examples = store.examples(name, unit)
    kinds = {e["kind"] for e in examples}
    assert kinds == {"top", "interval", "random"} and sum(e["kind"] == "random" for e in examples) == 4
    top = [e for e in examples if e["kind"] == "top"]
    assert [e["activation"] for e in top] == sorted((e["activation"] for e in top), reverse=True)
    assert top[0]["activation"] == pytest.approx(store.unit(name, unit)["max_act"])
    for e in examples:
        first = e["row"] - e["center"]
        rows = np.arange(first, first + len(e["tokens"]))
        assert e["tokens"] == acts.origin(rows)["token"].tolist()
        np.testing.assert_allclose(e["acts"], acts.rows(rows)[:, unit].numpy(), rtol=1e-6)
        assert len(set(rows // 32)) == 1  # never crosses a harvest window


def test_context_shares_are_exact(analysed):
    run, figures, name = analysed
    acts = ActivationStore(run / "activations" / "val")
    n = figures["n_tokens"]
    origin = acts.origin(np.arange(n))
    acts_NU = acts.rows(np.arange(n)).numpy().astype(np.float64)
    parity_N = origin["doc"] % 2
    prev_N = np.concatenate([[-1], origin["token"][:-1]])
    prev_N[np.arange(n) % 32 == 0] = -1  # nothing before a harvest window's first token
    store = FeatureStore(run / FILENAME)
    unit = max(range(8), key=lambda u: store.unit(name, u)["fire_count"])
    contexts = store.contexts(name, unit)
    total = acts_NU[:, unit].sum()
    expected = {label: acts_NU[parity_N == k, unit].sum() / total for k, label in enumerate(["even", "odd"])}
    assert {label: share for label, share in contexts["source"]} == pytest.approx(
        {k: v for k, v in expected.items() if v >= 0.01}
    )
    assert contexts["language"] == [("en", pytest.approx(1.0))]
    label, share = contexts["preceding"][0]
    by_prev = np.bincount(prev_N[prev_N >= 0], weights=acts_NU[prev_N >= 0, unit])
    assert store.token_text(int(by_prev.argmax())) == label and share == pytest.approx(by_prev.max() / total)
    explanations = store.explanations(name, unit)
    assert [e["backend"] for e in explanations] == ["offline-context", "offline-token-list"]
    assert store.unit(name, unit)["explanation"] == explanations[0]["explanation"]


def test_token_search_precision_recall_is_exact(analysed):
    run, figures, name = analysed
    acts = ActivationStore(run / "activations" / "val")
    n = figures["n_tokens"]
    tokens = acts.origin(np.arange(n))["token"]
    acts_NU = acts.rows(np.arange(n)).numpy()
    fired = acts_NU > 0
    store = FeatureStore(run / FILENAME)
    token = int(np.bincount(tokens).argmax())
    text = store.token_text(token)
    hits = store.search_token(text, name, top=3)
    on_token = tokens == token
    f1 = []
    for u in range(fired.shape[1]):
        precision = acts_NU[fired[:, u] & on_token, u].sum() / max(acts_NU[fired[:, u], u].sum(), 1e-12)
        recall = (fired[:, u] & on_token).sum() / on_token.sum()
        f1.append(2 * precision * recall / max(precision + recall, 1e-12))
    assert hits[0]["unit"] == int(np.argmax(f1)) and hits[0]["f1"] == pytest.approx(max(f1))
    u = hits[0]["unit"]
    assert hits[0]["recall"] == pytest.approx((fired[:, u] & on_token).sum() / on_token.sum())
    printed = search(run, token=text, sae=name, top=3)
    assert printed[0]["unit"] == u
    with pytest.raises(UserError, match="not a token"):
        store.search_token("no such token string", name)
    with pytest.raises(UserError, match="exactly one"):
        search(run, token=text, text="x")
    with pytest.raises(UserError, match="--sae"):
        search(run, token=text, sae="nope")


def test_analysis_is_deterministic(analysed, tmp_path, monkeypatch):
    """The same store again, this time scoring units in two forked processes, a few units at a time."""
    run, figures, name = analysed
    again = tmp_path / "run"
    shutil.copytree(run, again)
    (again / FILENAME).unlink()
    monkeypatch.setattr(analyze, "PROCESS_CHUNK", 5)
    figures2 = analyze_run(again, [name], CFG, doc_sources=parity_sources(again), processes=2)
    assert figures2["neuron_score_mean"] == figures["neuron_score_mean"]
    for sql in (
        "SELECT * FROM examples ORDER BY dict, unit, kind, bucket, rank",
        "SELECT * FROM explanations ORDER BY dict, unit, backend",
        "SELECT * FROM units ORDER BY dict, unit",
    ):
        rows = [sqlite3.connect(r / FILENAME).execute(sql).fetchall() for r in (run, again)]
        assert rows[0] == rows[1] and len(rows[0]) > 10


def test_steering_acts_on_exactly_one_feature(analysed):
    run, _, name = analysed
    model = load_lm(run / "lm")
    d = model.cfg.d_mlp
    sae, _ = identity_sae(d)
    tokens_T = torch.tensor([0, 5, 9, 17, 3])

    def set_neuron(acts, hook=None):
        acts = acts.clone()
        acts[..., 2] = 1.5
        return acts

    clamped = model.run_with_hooks(tokens_T[None], fwd_hooks=[(HOOK, steering_hook(sae, 2, "clamp", 1.5))])
    manual = model.run_with_hooks(tokens_T[None], fwd_hooks=[(HOOK, set_neuron)])
    torch.testing.assert_close(clamped, manual)
    unchanged = next_token_change(model, HOOK, tokens_T, steering_hook(sae, 2, "add", 0.0), top=3)
    assert all(before == after for _, before, after in unchanged["before"])
    assert sample_continuation(model, HOOK, tokens_T, 4, None, seed=3) == sample_continuation(
        model, HOOK, tokens_T, 4, None, seed=3
    )
    greedy = sample_continuation(model, HOOK, tokens_T, 1, None, temperature=0)
    assert greedy == [int(model(tokens_T[None])[0, -1].argmax())]

    windows = torch.tensor([[0, 5, 9, 17, 3, 4], [0, 7, 7, 2, 1, 9]])
    positions = torch.tensor([2, 4])
    activation, delta = ablation_loss_change(model, HOOK, sae, 2, windows, positions)

    def zero_neuron(acts, hook=None):
        acts = acts.clone()
        acts[..., 2] = 0
        return acts

    clean = model(windows).log_softmax(-1)
    ablated = model.run_with_hooks(windows, fwd_hooks=[(HOOK, zero_neuron)]).log_softmax(-1)
    for b, p in enumerate(positions.tolist()):
        target = windows[b, p + 1]
        assert delta[b].item() == pytest.approx((clean[b, p, target] - ablated[b, p, target]).item(), abs=1e-5)
    with pytest.raises(UserError, match="feature 999"):
        steering_hook(sae, 999, "clamp", 1.0)


def test_steer_command(analysed, capsys):
    run, _, name = analysed
    result = steer(run, name, 3, "God blesses", mode="ablate", n_tokens=3, top=3)
    assert len(result["steered_continuation"]) == 3
    store = FeatureStore(run / FILENAME)
    assert result["value"] == pytest.approx(2 * store.unit(name, 3)["max_act"])  # default clamp value
    assert result["ablation"]["n_contexts"] >= 1
    with pytest.raises(UserError, match="--sae nope"):
        steer(run, "nope", 0, "x")


def test_steer_finds_its_feature_by_token(analysed, capsys):
    run, _, name = analysed
    best = FeatureStore(run / FILENAME).search_token(" God", name, top=1)[0]["unit"]
    result = steer(run, name, None, "God blesses", feature_token=" God", n_tokens=2, top=3)
    assert result["feature"] == best
    assert f"{name} feature {best} clamped" in capsys.readouterr().out
    with pytest.raises(UserError, match="exactly one of --feature or --feature-token"):
        steer(run, name, 3, "x", feature_token=" God")
    with pytest.raises(UserError, match="not a token"):
        steer(run, name, None, "x", feature_token="no such token")


def test_cli_steer_by_token(analysed, capsys):
    from test_cli import run_cli

    run, _, name = analysed
    best = FeatureStore(run / FILENAME).search_token(" God", name, top=1)[0]["unit"]
    code, out, err = run_cli(
        ["steer", str(run), "--sae", name, "--feature-token", " God", "--prompt", "God", "--n-tokens", "1"], capsys
    )
    assert code == 0, err
    assert f"feature {best} clamped" in out


def test_steer_closes_the_feature_store_when_it_fails(analysed, monkeypatch):
    import monosemantic.interventions.cli as interventions_cli

    run, _, name = analysed
    opened = []

    class Recorded(FeatureStore):
        def __init__(self, path):
            super().__init__(path)
            opened.append(self)

    monkeypatch.setattr(interventions_cli, "FeatureStore", Recorded)
    with pytest.raises(UserError, match="feature 999"):
        steer(run, name, 999, "God blesses", value=1.0)
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].db.execute("SELECT 1")
