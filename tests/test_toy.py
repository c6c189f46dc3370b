"""Toy models of superposition: geometry on hand-built polytopes, training on tiny models, the sweep,
its outputs and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from monosemantic.errors import UserError
from monosemantic.toy.cli import toy_app
from monosemantic.toy.config import ToyConfig
from monosemantic.toy.geometry import (
    STRUCTURE_NAMES,
    classify,
    dimensions_per_feature,
    feature_dimensionality,
    interference,
)
from monosemantic.toy.model import ToyModel, sample_features, train_toy_model
from monosemantic.toy.sweep import cpu_threads, run_toy_sweep


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: OpenMP threads only add overhead (and thrash on a shared machine)."""
    with cpu_threads(1):
        yield


def regular_polygon(k: int) -> torch.Tensor:
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def square_antiprism() -> torch.Tensor:
    """8 unit vectors: squares at heights ±1/√3, twisted by 45° (the uniform D_i = 3/8 arrangement)."""
    h, r = 1 / math.sqrt(3), math.sqrt(2 / 3)
    top = [(r * math.cos(a), r * math.sin(a), h) for a in (0, math.pi / 2, math.pi, 3 * math.pi / 2)]
    bottom = [
        (r * math.cos(a + math.pi / 4), r * math.sin(a + math.pi / 4), -h)
        for a in (0, math.pi / 2, math.pi, 3 * math.pi / 2)
    ]
    return torch.tensor(top + bottom, dtype=torch.float64)


def block_diagonal(*blocks: torch.Tensor) -> torch.Tensor:
    """Tegum product: each factor's directions in its own orthogonal subspace."""
    return torch.block_diag(*blocks)


# -- geometry on exact polytopes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "W_NM, expected",
    [
        (torch.eye(3, dtype=torch.float64), 1.0),
        (torch.tensor([[1.0], [-1.0]], dtype=torch.float64), 1 / 2),
        (regular_polygon(3), 2 / 3),
        (torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) / math.sqrt(3), 3 / 4),
        (regular_polygon(5), 2 / 5),
        (square_antiprism(), 3 / 8),
    ],
)
def test_feature_dimensionality_of_uniform_polytopes(W_NM, expected):
    assert feature_dimensionality(W_NM) == pytest.approx(torch.full((W_NM.shape[0],), expected, dtype=torch.float64))
    # for a uniform polytope every feature's share is the same, so D* equals it too
    assert dimensions_per_feature(W_NM) == pytest.approx(expected)


def test_interference_of_a_pentagon():
    # Σ_{j≠i} cos² over a regular pentagon = 2 cos²(72°) + 2 cos²(144°) = 1.5
    assert interference(regular_polygon(5)) == pytest.approx(torch.full((5,), 1.5, dtype=torch.float64))


def test_classify_counts_tegum_factors():
    tetrahedron = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) / math.sqrt(3)
    W_NM = block_diagonal(
        torch.ones(1, 1, dtype=torch.float64),  # dense: 1 feature, 1 dim
        torch.tensor([[1.0], [-1.0]], dtype=torch.float64),  # digon
        torch.tensor([[1.0], [-1.0]], dtype=torch.float64),  # digon
        regular_polygon(3),
        tetrahedron,
        regular_polygon(5),
        square_antiprism(),
        torch.tensor([[0.02]], dtype=torch.float64),  # a feature the model dropped
        torch.tensor([[0.3]], dtype=torch.float64),  # a feature kept at reduced strength
    )
    geometry = classify(W_NM)
    assert geometry.counts == {
        "dense": 1,
        "tetrahedron": 1,
        "triangle": 1,
        "digon": 2,
        "pentagon": 1,
        "square_antiprism": 1,
        "other": 0,
        "partial": 1,
        "not_learned": 1,
    }
    assert geometry.n_represented == 1 + 4 + 3 + 4 + 5 + 8
    assert geometry.label_N[1:3] == ["digon", "digon"] and geometry.label_N[-1] == "partial"


def test_classify_finds_tetrahedra_and_triangles_among_digons_when_slightly_noisy():
    # the uniform sweep's transition from 1 to 1/2: tegum products of polytopes in their own subspaces
    tetrahedron = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) / math.sqrt(3)
    digon = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    W_NM = block_diagonal(tetrahedron, regular_polygon(3), regular_polygon(3), digon, digon, digon)
    W_NM = W_NM[torch.randperm(W_NM.shape[0], generator=torch.Generator().manual_seed(0))]
    W_NM = W_NM + 0.01 * torch.randn(W_NM.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    geometry = classify(W_NM)
    assert geometry.counts == {
        "dense": 0,
        "tetrahedron": 1,
        "triangle": 2,
        "digon": 3,
        "pentagon": 0,
        "square_antiprism": 0,
        "other": 0,
        "partial": 0,
        "not_learned": 0,
    }
    assert dimensions_per_feature(W_NM) == pytest.approx(10 / 16, abs=0.01)  # 3 + 2·2 + 3·1 dims over 16 features
    for name, value in (("tetrahedron", 3 / 4), ("triangle", 2 / 3), ("digon", 1 / 2)):
        chosen = torch.tensor([label == name for label in geometry.label_N])
        assert geometry.dimensionality_N[chosen] == pytest.approx(
            torch.full((int(chosen.sum()),), value, dtype=torch.float64), abs=0.02
        )


def test_a_projection_spread_over_all_features_is_dense_but_partial():
    # the dense end of the uniform sweep: W = an m-dimensional orthonormal frame of Rⁿ, WᵀW a projection.
    # Every feature gets ‖W_i‖² = D_i ≈ m/n and D* = m/‖W‖² = 1 exactly.
    Q_NM, _ = torch.linalg.qr(torch.randn(200, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    geometry = classify(Q_NM)
    assert geometry.dims_per_feature == pytest.approx(1.0)
    assert geometry.dimensionality_N == pytest.approx(geometry.norm_N**2)
    assert float(geometry.dimensionality_N.mean()) == pytest.approx(10 / 200)
    assert geometry.n_represented == 0 and geometry.counts["partial"] + geometry.counts["not_learned"] == 200


def test_classify_names_a_distorted_polytope_other():
    squashed = regular_polygon(5) * torch.tensor([1.0, 0.5], dtype=torch.float64)
    geometry = classify(squashed)
    assert geometry.counts["other"] == 1 and geometry.counts["pentagon"] == 0


# -- the model and its training -------------------------------------------------------------------


def test_sample_features_has_the_requested_sparsity_and_range():
    generator = torch.Generator().manual_seed(0)
    x_IBN = sample_features(torch.tensor([1.0, 0.1]), 4000, 50, generator)
    present = (x_IBN > 0).float().mean(dim=(1, 2))
    assert present[0] == pytest.approx(1.0, abs=1e-3)
    assert present[1] == pytest.approx(0.1, abs=0.005)
    values = x_IBN[1][x_IBN[1] > 0]
    assert values.max() <= 1.0 and values.mean() == pytest.approx(0.5, abs=0.01)


def train(
    n: int, m: int, sparsities: list[float], decay: float, lr: float, seed: int = 0, steps: int = 800
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    model = ToyModel(len(sparsities), n, m, generator)
    density_I = 1.0 - torch.tensor(sparsities)
    train_toy_model(
        model,
        density_I,
        decay ** torch.arange(n, dtype=torch.float32),
        steps=steps,
        batch_size=256,
        lr=lr,
        schedule="cosine",
        warmup=steps // 10,
        weight_decay=0.01,
        generator=generator,
    )
    return model.W_INM.detach()


def test_five_features_in_two_dimensions_dense_basis_and_sparse_pentagon():
    W_INM = train(5, 2, [0.0, 0.97], decay=0.9, lr=0.1)
    dense, sparse = classify(W_INM[0]), classify(W_INM[1])
    # dense: the two most important features get a dimension each, the other three are dropped
    assert dense.n_represented == 2 and dense.counts["dense"] == 2
    assert dense.dimensionality_N[:2] == pytest.approx([1.0, 1.0], abs=0.02)
    assert dense.norm_N[2:].max() < 0.1
    assert dense.dims_per_feature == pytest.approx(1.0, abs=0.02)
    # sparse: all five share the plane as a pentagon, D_i = 2/5
    assert sparse.counts["pentagon"] == 1
    assert sparse.dimensionality_N == pytest.approx(torch.full((5,), 0.4, dtype=torch.float64), abs=0.02)


def test_antipodal_pairs_for_2k_features_in_k_dimensions():
    W_INM = train(6, 3, [0.8], decay=1.0, lr=0.05)
    geometry = classify(W_INM[0])
    assert geometry.counts["digon"] == 3
    assert geometry.dimensionality_N == pytest.approx(torch.full((6,), 0.5, dtype=torch.float64), abs=0.02)
    cosine = torch.nn.functional.normalize(W_INM[0], dim=1) @ torch.nn.functional.normalize(W_INM[0], dim=1).T
    assert (cosine < -0.98).sum() == 6  # each feature has an antipodal partner


def test_same_seed_same_weights():
    first = train(5, 2, [0.9], 0.9, 0.05, seed=3, steps=30)
    assert torch.equal(first, train(5, 2, [0.9], 0.9, 0.05, seed=3, steps=30))
    assert not torch.equal(first, train(5, 2, [0.9], 0.9, 0.05, seed=4, steps=30))


# -- configuration --------------------------------------------------------------------------------


def test_sparsities_are_log_spaced_in_inverse_density():
    cfg = ToyConfig.from_preset("tiny", sparsity_min=0.0, sparsity_max=0.99, n_sparsities=3)
    assert [1 / (1 - s) for s in cfg.sparsities()] == pytest.approx([1.0, 10.0, 100.0])


@pytest.mark.parametrize(
    "overrides, mentions",
    [
        (dict(sparsity_max=1.0), "sparsity_max must lie in [0, 1)"),
        (dict(sparsity_min=-0.1), "sparsity_min must lie in [0, 1)"),
        (dict(sparsity_min=0.9, sparsity_max=0.5), "sparsity_min (0.9) is above sparsity_max (0.5)"),
        (dict(n_features=0), "n_features (--n-features)"),
        (dict(n_hidden=0), "n_hidden (--n-hidden)"),
        (dict(lr=0.0), "lr (--lr)"),
        (dict(importance_decay=1.5), "importance_decay"),
        (dict(widht=3), "unknown option(s) widht"),
    ],
)
def test_bad_parameters_raise_one_clear_user_error(overrides, mentions):
    with pytest.raises(UserError) as err:
        ToyConfig.from_preset("tiny", **overrides)
    assert mentions in str(err.value) and "\n" not in str(err.value)


def test_more_hidden_dimensions_than_features_is_allowed():
    assert ToyConfig.from_preset("tiny", n_features=3, n_hidden=8).n_hidden == 8


def test_unknown_preset():
    with pytest.raises(UserError, match="--preset huge"):
        ToyConfig.preset("huge")


# -- the whole sweep: files, numbers, CLI ---------------------------------------------------------


def test_cli_sweep_writes_figures_and_numbers(tmp_path):
    out = tmp_path / "toy"
    result = CliRunner().invoke(toy_app, ["sweep", "--preset", "tiny", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "1/(1−S)" in result.output and "digon" in result.output
    details = json.loads((out / "toy.json").read_text())
    cfg = ToyConfig.from_preset("tiny", seed=1)
    assert [p["sparsity"] for p in details["points"]] == pytest.approx(cfg.sparsities())
    for point in details["points"]:
        assert set(point["structures"]) == set(STRUCTURE_NAMES)
        features = point["features"]
        assert len(features["dimensionality"]) == cfg.n_features == len(features["norm"])
        # D* = m/‖W‖² is recomputable from the saved norms
        assert point["dims_per_feature"] == pytest.approx(cfg.n_hidden / sum(v * v for v in features["norm"]), rel=1e-3)
        # every feature is accounted for: factor members + partial + not learned = n
        sizes = {"dense": 1, "tetrahedron": 4, "triangle": 3, "digon": 2, "pentagon": 5, "square_antiprism": 8}
        in_polytopes = sum(sizes[name] * point["structures"][name] for name in sizes)
        in_other = features["structure"].count("other")
        assert in_polytopes + in_other == point["n_represented"]
        assert (
            point["n_represented"] + point["structures"]["partial"] + point["structures"]["not_learned"]
            == cfg.n_features
        )
    assert details["points"][0]["dims_per_feature"] == pytest.approx(1.0, abs=0.1)  # dense end: one dimension each
    assert details["points"][-1]["dims_per_feature"] < 0.7  # sparse end: superposition
    for name in ("dimensionality", "plane_demo", "gram"):
        for extension in ("png", "svg"):
            path = out / details["plots"][name][extension]
            assert path.stat().st_size > 1000
    assert (out / "dimensionality.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_run_toy_sweep_returns_the_run_json_summary(tmp_path):
    cfg = ToyConfig.from_preset("tiny", n_sparsities=2, steps=50, plane_steps=50, plane_sparsities=[0.9])
    summary = run_toy_sweep(cfg, tmp_path / "toy")
    assert len(summary["points"]) == 2 and len(summary["plane_demo"]) == 1
    assert {"sparsity", "dims_per_feature", "n_represented", "structures"} <= set(summary["points"][0])
    assert "features" not in summary["points"][0]  # per-feature detail stays in toy.json
    assert summary["plots"]["dimensionality"]["png"] == "dimensionality.png"
    assert summary["seconds"] > 0
    json.dumps(summary)  # goes verbatim into run.json


def test_cli_bad_sparsity_is_a_user_error(tmp_path):
    result = CliRunner().invoke(
        toy_app, ["sweep", "--preset", "tiny", "--out", str(tmp_path / "t"), "--sparsity-max", "1.0"]
    )
    assert isinstance(result.exception, UserError)
    assert "sparsity_max must lie in [0, 1)" in str(result.exception)
    assert not (tmp_path / "t").exists()
