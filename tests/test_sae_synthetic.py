"""Ground truth: on data made from a known dictionary, the SAEs find it."""

from __future__ import annotations

import pytest
import torch

from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae
from monosemantic.sae.metrics import evaluate_sae
from monosemantic.sae.synthetic import SyntheticFeatures, max_cosines, mmcs, recovered_fraction

set_quiet(True)


@pytest.fixture
def one_thread():
    """Small matmuls run faster on one thread than on two cores shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_generator_has_the_promised_statistics():
    syn = SyntheticFeatures(d=32, n_features=200, mean_active=4.0, density_decades=2.0, seed=1)
    assert syn.density_G.sum().item() == pytest.approx(4.0, rel=1e-5)
    spread = syn.density_G.max() / syn.density_G.min()
    assert 50 < spread <= 100  # two decades
    torch.testing.assert_close(syn.dictionary_GD.norm(dim=1), torch.ones(200))
    x = syn.sample(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 32)
    a = torch.cat(list(syn.batches(100, 3, seed=7)))
    b = torch.cat(list(syn.batches(100, 3, seed=7)))
    assert torch.equal(a, b)


def test_mmcs_of_a_rotated_and_permuted_copy():
    syn = SyntheticFeatures(d=16, n_features=40, seed=0)
    learned = syn.dictionary_GD[torch.randperm(40)] * 3.0  # scale and order do not matter
    assert mmcs(learned, syn.dictionary_GD) == pytest.approx(1.0, abs=1e-6)
    assert recovered_fraction(learned[:20], syn.dictionary_GD) == pytest.approx(0.5, abs=0.1)
    assert max_cosines(-learned, syn.dictionary_GD).max() < 0.99


@pytest.mark.parametrize(
    ("variant", "params"),
    [
        ("topk", {"k": 8, "lr": 2e-3}),
        # 0.1, the default encoder scale, suits LM activations (sae/standard.py); on this small
        # dictionary it recovers 86-88 % of the true features (standard) or leaves 8-11 % dead
        # (standard2024), where 0.5 recovers all of them with none dead (measured, seeds 0 and 1)
        ("standard", {"l1_coeff": 0.1, "lr": 2e-3, "encoder_init_scale": 0.5}),
        ("standard2024", {"l1_coeff": 0.1, "lr": 2e-3, "encoder_init_scale": 0.5}),
        ("batchtopk", {"k": 8, "lr": 2e-3}),
        ("jumprelu", {"l0_coeff": 3e-3, "lr": 2e-3}),
    ],
)
def test_sae_recovers_the_true_dictionary(variant, params, one_thread):
    syn = SyntheticFeatures(d=64, n_features=256, mean_active=5.0, seed=0)
    cfg = SAEConfig(variant=variant, d_in=64, d_sae=512, n_samples=100_000, batch_size=512, **params)
    init = syn.sample(4096, torch.Generator().manual_seed(99))
    result = train_sae(cfg, syn.batches(512, 400, seed=1), init)
    decoder = result.sae.W_dec.detach()
    assert mmcs(decoder, syn.dictionary_GD) >= 0.95
    assert recovered_fraction(decoder, syn.dictionary_GD) >= 0.95
    held_out = evaluate_sae(result.sae, list(syn.batches(4096, 2, seed=5)))
    assert held_out["dead_frac"] <= 0.1
    if variant == "batchtopk":  # the inference threshold keeps k per token on average
        assert 6 <= held_out["l0"] <= 10
    if variant == "jumprelu":  # the thresholds learned a sparsity near the true 5
        assert 3 <= held_out["l0"] <= 12
