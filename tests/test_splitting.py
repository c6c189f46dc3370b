"""Feature splitting on a synthetic hierarchy: a parent whose activations are the union of two children."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monosemantic.activations.store import ActivationWriter
from monosemantic.compare.splitting import SplittingConfig, analyse_splitting, feature_families
from monosemantic.corpus.tokenizer import save_tokenizer, train_tokenizer
from monosemantic.errors import UserError
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.io import save_sae

set_quiet(True)
N = 6000


def _hierarchy(seed: int = 0) -> torch.Tensor:
    """Inputs x ∈ R^4 ≥ 0: x0 and x1 never fire together (two children), x2, x3 independent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 4, generator=g) * (torch.rand(N, 4, generator=g) < torch.tensor([0.1, 0.05, 0.2, 0.1]))
    x[x[:, 0] > 0, 1] = 0
    return x


def _sae(W_enc_DF: torch.Tensor):
    """A ReLU SAE computing latents = relu(x W_enc) exactly, decoder rows = normalised columns."""
    D, F = W_enc_DF.shape
    sae = build_sae(SAEConfig(variant="standard", d_in=D, d_sae=F))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc_DF)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_dec.copy_((W_enc_DF / W_enc_DF.norm(dim=0)).T)
    return sae.eval()


# small: parent = x0 + x1 (the union), x2, x3;  large: x0, x1 (the children), x2, x3, and 0.5·x3
SMALL = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
LARGE = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0, 1.0, 0.5]])


def test_splitting_finds_the_two_children_of_a_union_parent():
    x = _hierarchy()
    small, large = _sae(SMALL), _sae(LARGE)
    result = analyse_splitting(
        torch.split(x, 1700),
        [small.encode, large.encode],
        [small.W_dec.detach(), large.W_dec.detach()],
        threshold=0.4,
        top_k=5,
    )
    link = result.links[0]
    assert result.n_tokens == N
    np.testing.assert_array_equal(link.parent_L, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(link.children(0), [0, 1])
    np.testing.assert_array_equal(link.n_children_S(), [2, 1, 2])
    # a child is its parent restricted to its own tokens: masked cosine 1, Pearson clearly below 1
    np.testing.assert_allclose(link.similarity_L, 1.0, atol=1e-6)
    p, c0 = x[:, 0] + x[:, 1], x[:, 0]
    expected_corr = np.corrcoef(p.numpy(), c0.numpy())[0, 1]
    assert link.pearson_L[0] == pytest.approx(expected_corr, abs=1e-5) and link.pearson_L[0] < 0.9
    np.testing.assert_allclose(link.coverage_S, 1.0, atol=1e-6)
    assert link.decoder_cos_L[0] == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    np.testing.assert_allclose(result.density[0], (x @ SMALL > 0).double().mean(0).numpy())
    # top rows of the parent are the largest values of x0 + x1
    assert set(result.top_rows[0][:, 0]) == set(torch.topk(p, 5).indices.tolist())


def test_below_threshold_no_parent_and_dead_features_are_not_split():
    x = _hierarchy(1)
    x[:, 3] = 0  # small feature 2 and large features 3, 4 are dead
    small, large = _sae(SMALL), _sae(LARGE)
    result = analyse_splitting(
        [x], [small.encode, large.encode], [small.W_dec.detach(), large.W_dec.detach()], threshold=0.4
    )
    link = result.links[0]
    np.testing.assert_array_equal(link.parent_L, [0, 0, 1, -1, -1])
    assert np.isnan(link.similarity_L[3:]).all() and np.isnan(link.coverage_S[2])
    with pytest.raises(UserError, match="at least two dictionaries"):
        analyse_splitting([x], [small.encode], [small.W_dec], threshold=0.4)


def test_feature_families_writes_trees_labels_and_pictures(tmp_path):
    run = tmp_path / "run"
    tokenizer = train_tokenizer(["the cat sat on the mat. God said let there be light."] * 20, 300)
    save_tokenizer(tokenizer, run / "tokenizer.json")
    the_id, cat_id = tokenizer.encode(" the").ids[0], tokenizer.encode(" cat").ids[0]
    x = _hierarchy(2)
    tokens = np.where(x[:, :2].sum(1).numpy() > 0, the_id, cat_id)  # the parent fires on " the"
    with ActivationWriter(run / "activations/val", 4, "synthetic", meta={"ctx": 8}) as writer:
        writer.append(x, tokens, np.zeros(N, np.int64), np.arange(N), np.zeros(N, np.int64))
    for name, W in (("standard-3", SMALL), ("standard-5", LARGE)):
        save_sae(_sae(W), SAEConfig(variant="standard", d_in=4, d_sae=W.shape[1]), run / "saes" / name)

    figures = feature_families(run, ["standard-3", "standard-5"], SplittingConfig(n_pictures=2, chunk_rows=2500))
    assert figures["split_families"] == 2 and figures["split_families_by_size"] == {"3": 2}
    assert figures["n_tokens"] == N
    summary = figures["summary"][0]
    assert (summary["split_2plus"], summary["one_child"], summary["linked_children"]) == (2, 1, 5)
    assert figures["highlights"]["the"]["root"] == 0 and figures["highlights"]["God"] is None
    assert sorted(figures["highlights"]["the"]["by_size"]["5"]) == ["0: ' the'", "1: ' the'"]
    saved = json.loads((run / "splitting/families.json").read_text())
    assert saved["links"][0]["parent"] == [0, 0, 1, 2, 2]
    the_family = next(f for f in saved["families"] if f["feature"] == 0)
    assert sorted(c["feature"] for c in the_family["children"]) == [0, 1] and the_family["leaves"] == 2
    assert saved["features"]["standard-3"]["label"][0] == "' the'"
    for picture in figures["artifacts"]["pictures"]:
        assert (run / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figures["artifacts"]["pictures"]) == 2

    with pytest.raises(UserError, match="smallest first"):
        feature_families(run, ["standard-5", "standard-3"])


def test_feature_map_places_each_dictionary_and_joins_splitting_labels(tmp_path):
    from monosemantic.compare.feature_map import FeatureMapConfig, feature_map, project_2d

    # two tight clusters of directions: PCA must put them on opposite sides of the first axis
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(6)[:2] * 5
    dirs = torch.cat(
        [centres[0] + 0.1 * torch.randn(10, 6, generator=g), centres[1] + 0.1 * torch.randn(10, 6, generator=g)]
    )
    coords, method = project_2d(dirs.numpy(), FeatureMapConfig(method="pca"))
    assert method == "pca" and coords.shape == (20, 2)
    assert (np.sign(coords[:10, 0]) == -np.sign(coords[10:, 0]).mean()).all()
    again, _ = project_2d(dirs.numpy(), FeatureMapConfig(method="pca"))
    np.testing.assert_array_equal(coords, again)

    run = tmp_path / "run"
    for name, W in (("standard-3", SMALL), ("standard-5", LARGE)):
        save_sae(_sae(W), SAEConfig(variant="standard", d_in=4, d_sae=W.shape[1]), run / "saes" / name)
    (run / "splitting").mkdir()
    (run / "splitting/families.json").write_text(
        json.dumps(
            {
                "features": {
                    "standard-3": {"label": ["a", "b", "c"], "density": [0.1, 0.2, 0.3]},
                    "standard-5": {"label": list("vwxyz"), "density": [0.1] * 5},
                },
                "links": [{"from": "standard-3", "to": "standard-5", "parent": [0, 0, 1, 2, 2]}],
            }
        )
    )
    figures = feature_map(run, ["standard-3", "standard-5"], FeatureMapConfig(method="pca"))
    assert figures["n_points"] == 8 and figures["method"] == "pca"
    points = json.loads((run / "feature_map/map.json").read_text())["points"]
    assert [(p["sae"], p["feature"]) for p in points][2:4] == [("standard-3", 2), ("standard-5", 0)]
    assert points[4]["parent"] == 0 and points[4]["label"] == "w" and "parent" not in points[0]
    # identical decoder directions land on the same spot (small feature 1 = large feature 2 = x2)
    assert (points[1]["x"], points[1]["y"]) == pytest.approx((points[5]["x"], points[5]["y"]), abs=1e-3)
    assert (run / "feature_map/map.png").read_bytes()[:4] == b"\x89PNG"


def test_features_firing_on_too_few_tokens_get_no_parent():
    x = _hierarchy(3)
    rare = torch.zeros(N, dtype=torch.bool)
    rare[[10, 500, 4000]] = True
    x[~rare, 3] = 0
    x[rare, 3] = 1.0  # small feature 2 and large features 3, 4 fire on 3 tokens only
    small, large = _sae(SMALL), _sae(LARGE)
    decoders = [small.W_dec.detach(), large.W_dec.detach()]
    strict = analyse_splitting([x], [small.encode, large.encode], decoders, threshold=0.4, min_fires=10).links[0]
    loose = analyse_splitting([x], [small.encode, large.encode], decoders, threshold=0.4, min_fires=1).links[0]
    np.testing.assert_array_equal(strict.parent_L, [0, 0, 1, -1, -1])
    np.testing.assert_array_equal(loose.parent_L, [0, 0, 1, 2, 2])


def test_context_family_is_the_parent_whose_children_differ_most_in_source(tmp_path):
    """Parent x0 + x1 + x2 splits into three children that fire in three different documents'
    sources: the context family is that parent, with JS divergence = the entropy of the children's
    mass shares, and each child covers exactly its own share of the parent's squared activation."""
    from monosemantic.corpus.sources import DocumentSources

    g = torch.Generator().manual_seed(4)
    x = torch.rand(N, 4, generator=g) * (torch.rand(N, 4, generator=g) < 0.3)
    which = torch.randint(0, 3, (N,), generator=g)
    x[:, :3] *= torch.nn.functional.one_hot(which, 3).float()  # at most one of x0, x1, x2 per token
    small_W = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [0, 1.0]])
    large_W = torch.eye(4)
    run = tmp_path / "run"
    tokenizer = train_tokenizer(["the cat sat on the mat."] * 20, 300)
    save_tokenizer(tokenizer, run / "tokenizer.json")
    doc_N = np.where(x[:, :3].sum(1).numpy() > 0, which.numpy(), 3)  # document k holds the tokens of child k
    with ActivationWriter(run / "activations/val", 4, "synthetic", meta={"ctx": 8}) as writer:
        writer.append(x, np.zeros(N, np.int64), doc_N, np.arange(N) % 8, np.zeros(N, np.int64))
    for name, W in (("standard-2", small_W), ("standard-4", large_W)):
        save_sae(_sae(W), SAEConfig(variant="standard", d_in=4, d_sae=W.shape[1]), run / "saes" / name)
    sources = DocumentSources(
        ["bible", "python", "fortunes", "other"], ["en"], np.arange(4, dtype=np.int32), np.zeros(4, dtype=np.int32)
    )

    figures = feature_families(run, ["standard-2", "standard-4"], SplittingConfig(n_pictures=0), sources)
    chosen = figures["context_family"]
    assert (chosen["sae"], chosen["feature"], chosen["n_children"]) == ("standard-2", 0, 3)
    mass = np.array([x[:, k].sum().item() for k in range(3)])
    w = mass / mass.sum()
    assert chosen["js_divergence_bits"] == pytest.approx(-(w * np.log2(w)).sum(), abs=1e-3)
    assert chosen["distinct_dominant_sources"] == 3
    saved = json.loads((run / "splitting/families.json").read_text())["context_family"]
    p2 = ((x[:, 0] + x[:, 1] + x[:, 2]) ** 2).sum().item()
    for child in saved["children"]:
        k = child["feature"]
        assert child["dominant_source"] == ["bible", "python", "fortunes"][k] and child["dominant_share"] == 1.0
        assert child["parent_coverage"] == pytest.approx((x[:, k] ** 2).sum().item() / p2, abs=1e-4)
    assert saved["parent"]["source_shares"][:3] == pytest.approx(w.tolist(), abs=1e-4)
    assert (run / chosen["picture"]).read_bytes()[:4] == b"\x89PNG"
    families = json.loads((run / "splitting/families.json").read_text())
    assert families["features"]["standard-4"]["sources"][1] == [["python", 1.0]]


def test_context_family_counts_only_children_that_keep_the_parents_token():
    from monosemantic.compare.splitting import SizeLink, SplitAnalysis, choose_context_family

    ones = np.ones(4)
    link = SizeLink(np.zeros(4, dtype=np.int64), ones, ones, ones, np.zeros(4, dtype=np.int64), np.ones(1), ones / 4)
    mass = [np.array([[3.0, 1.0, 1.0]]), np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])]
    analysis = SplitAnalysis([np.ones(1), ones], [], [link], 10, mass, [np.zeros((1, 5)), np.zeros((4, 5))])
    contexts = [[{"sources": [], "after": []}] * n for n in (1, 4)]
    labels = [["' the'"], ["' the'"] * 4]
    family = choose_context_family(
        analysis, ["s", "l"], [1, 4], labels, contexts, ["a", "b", "c"], [[" the"], [" the", " the", " the", " of"]]
    )
    assert sorted(c["feature"] for c in family["children"]) == [0, 1, 2] and family["n_children_total"] == 4
    assert family["js_divergence_bits"] == pytest.approx(-(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3)), abs=1e-4)
    assert (
        choose_context_family(
            analysis, ["s", "l"], [1, 4], labels, contexts, ["a", "b", "c"], [[" the"], [" the", " the", " a", " of"]]
        )
        is None
    )
