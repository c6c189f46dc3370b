"""Held-out metrics (streamed), the density histogram, and loss recovered on a tiny LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monosemantic.errors import UserError
from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.metrics import evaluate_sae, loss_recovered, plot_density_histogram


def _identity_sae(d: int):
    """A 2d-feature standard SAE with x̂ = ReLU(x) − ReLU(−x) = x exactly."""
    sae = build_sae(SAEConfig(variant="standard", d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_evaluate_counts_what_it_should():
    sae = _identity_sae(4)
    x = torch.tensor([[1.0, 0, 0, 0], [0, -2.0, 0, 0], [3.0, 0, 0, 0], [1.0, 1.0, 0, 0]])
    stats = evaluate_sae(sae, [x[:3], x[3:]])  # streamed over two chunks
    assert stats["n_tokens"] == 4
    assert stats["mse"] == pytest.approx(0.0, abs=1e-12) and stats["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert stats["l0"] == pytest.approx(5 / 4)
    # features: +e0 fires 3/4, +e1 1/4, −e1 1/4, everything else never
    np.testing.assert_allclose(stats["density"][[0, 1, 5]], [0.75, 0.25, 0.25])
    assert stats["dead_frac"] == pytest.approx(5 / 8)
    assert stats["dense_frac"] == pytest.approx(3 / 8)


def test_fvu_of_the_mean_predictor_is_one():
    sae = _identity_sae(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g) + 5
    with torch.no_grad():  # an SAE that outputs the data mean whatever the input
        sae.W_dec.zero_()
        sae.b_dec.copy_(x.mean(0))
    stats = evaluate_sae(sae, x.split(128))
    assert stats["fvu"] == pytest.approx(1.0, rel=1e-9)
    assert stats["mse"] == pytest.approx(x.var(0, unbiased=False).mean().item(), rel=1e-5)


def test_evaluate_rejects_bad_chunks():
    sae = _identity_sae(3)
    with pytest.raises(UserError, match="NaN or inf"):
        evaluate_sae(sae, [torch.tensor([[0.0, float("inf"), 1.0]])])
    with pytest.raises(UserError, match=r"shape \[batch, 3\]"):
        evaluate_sae(sae, [torch.zeros(2, 4)])
    with pytest.raises(UserError, match="no tokens"):
        evaluate_sae(sae, [])


def test_density_histogram_is_a_png(tmp_path):
    density = np.concatenate([np.zeros(10), 10 ** np.random.default_rng(0).uniform(-6, -1, 500)])
    path = plot_density_histogram(density, tmp_path / "density.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["density.png"]


def test_loss_recovered_is_one_for_a_perfect_sae_and_zero_for_a_zero_one():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, d_mlp=32, n_heads=2, d_head=8, n_ctx=16, d_vocab=50, act_fn="relu", seed=0
    )
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():  # make the MLP matter, so ablating it moves the loss
        model.blocks[0].mlp.W_out.mul_(20)
    tokens = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    hook = "blocks.0.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    mean_acts = cache[hook].reshape(-1, 32).mean(0)

    perfect = loss_recovered(model, _identity_sae(32), tokens, hook, mean_acts)
    assert perfect["sae_loss"] == pytest.approx(perfect["clean_loss"], abs=1e-5)
    assert perfect["zero_ablation_loss"] - perfect["clean_loss"] > 0.01
    assert perfect["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert perfect["loss_recovered_mean_ablation"] == pytest.approx(1.0, abs=1e-2)

    zero = _identity_sae(32)
    with torch.no_grad():
        zero.W_dec.zero_()
    ablated = loss_recovered(model, zero, tokens, hook, mean_acts)
    assert ablated["sae_loss"] == pytest.approx(ablated["zero_ablation_loss"], abs=1e-6)
    assert ablated["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert ablated["clean_loss"] == pytest.approx(perfect["clean_loss"])
