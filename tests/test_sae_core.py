"""SAE variants and the shared trainer: math, constraints, determinism, resume, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from monosemantic.errors import UserError
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, build_sae, train_sae
from monosemantic.sae.base import (
    Entries,
    SparseAutoencoder,
    argsort_keys,
    feature_sums,
    selection_dtype,
    token_rows,
)
from monosemantic.sae.resampling import pick_inputs, reinitialise_features, resampling_weights
from monosemantic.sae.trainer import CHECKPOINT_NAME, _project_out_parallel_grad, geometric_median

set_quiet(True)
D, F = 16, 64


def _batches(n_batches: int, batch: int = 128, seed: int = 0):
    dirs = torch.randn(32, D, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        codes = (torch.rand(batch, 32, generator=g) < 0.1) * torch.rand(batch, 32, generator=g)
        yield codes @ dirs + 0.5


def _cfg(variant: str, **kw) -> SAEConfig:
    return SAEConfig(variant=variant, d_in=D, d_sae=F, n_samples=128 * 20, batch_size=128, **kw)


def test_config_fills_variant_defaults_and_rejects_bad_values():
    topk = _cfg("topk")
    assert (topk.k, topk.aux_k, topk.aux_coeff, topk.lr) == (32, D // 2, 1 / 32, 2e-4)
    std = _cfg("standard")
    assert std.resample_at == (0.1, 0.2, 0.3, 0.4) and std.l1_coeff is not None and std.sparsity_warmup == 0.3
    jump = _cfg("jumprelu")
    assert (jump.jumprelu_sparsity, jump.jumprelu_tanh_scale, jump.jumprelu_ste_to_input) == ("step", 4.0, False)
    assert jump.jumprelu_pre_act_coeff == 0.0
    assert SAEConfig.model_validate(topk.model_dump()) == topk  # a filled config round-trips
    assert SAEConfig.model_validate(jump.model_dump()) == jump
    with pytest.raises(ValidationError, match="k=64 must be smaller"):
        _cfg("topk", k=64)
    with pytest.raises(ValidationError, match="l1_coeff must be"):
        _cfg("standard", l1_coeff=-1.0)
    with pytest.raises(ValidationError, match="l1_coeff applies to variant standard"):
        _cfg("topk", l1_coeff=0.1)
    with pytest.raises(ValidationError, match="jumprelu_ste_to_input applies to variant jumprelu"):
        _cfg("standard", jumprelu_ste_to_input=True)
    with pytest.raises(ValidationError, match="extra"):
        SAEConfig(d_in=D, d_sae=F, lambda_=1)


def test_standard_encoder_starts_as_a_scaled_decoder_transpose():
    sae = build_sae(_cfg("standard"))
    assert sae.cfg.encoder_init_scale == 0.1
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(F))
    torch.testing.assert_close(sae.W_enc, 0.1 * sae.W_dec.T)
    torch.testing.assert_close(build_sae(_cfg("standard", encoder_init_scale=1.0)).W_enc, sae.W_dec.T)
    april = build_sae(_cfg("standard2024", encoder_init_scale=0.5))  # the April 2024 update: its own decoder
    assert _cfg("standard2024").encoder_init_scale == 0.1
    torch.testing.assert_close(april.W_enc, 0.5 * april.W_dec.T)
    assert _cfg("topk").encoder_init_scale is None
    with pytest.raises(ValidationError, match="encoder_init_scale applies to variant standard"):
        _cfg("topk", encoder_init_scale=0.5)


@pytest.mark.parametrize("variant", ["standard", "standard2024", "topk", "batchtopk", "jumprelu"])
def test_encode_matches_the_documented_math(variant):
    sae = build_sae(_cfg(variant, k=4) if "topk" in variant else _cfg(variant))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(10, D)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(sae.pre_acts(x), pre, rtol=1e-5, atol=1e-5)
    latents = sae.encode(x)
    if variant.startswith("standard"):
        expected = pre.relu()
    elif variant == "topk":
        kth = pre.topk(4, dim=1).values[:, -1:]
        expected = torch.where(pre >= kth, pre, 0).relu()
    else:
        threshold = sae.threshold if variant == "batchtopk" else sae.log_threshold.exp()
        expected = torch.where(pre > threshold, pre, 0).relu()
    torch.testing.assert_close(latents, expected)
    torch.testing.assert_close(sae(x), latents @ sae.W_dec + sae.b_dec)


@pytest.mark.parametrize("outlier", [1.0, 100.0])  # 100: one token owns most of the batch's top
def test_sparse_decoding_equals_dense_decoding_for_topk_and_batchtopk(outlier):
    x = torch.randn(32, D)
    x[7] *= outlier
    for variant in ("topk", "batchtopk"):
        sae = build_sae(_cfg(variant, k=5))
        pre = sae.pre_acts(x)
        idx, vals, offsets = sae.select_active(pre)
        sparse = sae.decode_sparse(idx, vals, offsets)
        if variant == "topk":
            dense = sae.activate(pre) @ sae.W_dec
        else:
            kept = pre.relu().flatten().topk(5 * 32).values.min()
            dense = torch.where(pre.relu() >= kept, pre.relu(), 0) @ sae.W_dec
            assert idx.numel() == 5 * 32 and offsets.shape == (32,)
            if outlier > 1:
                assert offsets[8] - offsets[7] > 4 * 5  # one token holds many of the batch's entries
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_decoder_gradient_projection_removes_the_component_along_each_row():
    g = torch.Generator().manual_seed(0)
    W = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(F, D, generator=g), dim=1))
    W.grad = torch.randn(F, D, generator=g)
    expected = W.grad - (W.grad * W).sum(dim=1, keepdim=True) * W
    _project_out_parallel_grad(W)
    torch.testing.assert_close(W.grad, expected)
    assert (W.grad * W).sum(dim=1).abs().max() < 1e-5


def test_feature_sums_equal_the_dense_product():
    """Sᵀ x for a sparse S given as entries, with repeated entries (summed) and features that have
    none (zero rows)."""
    g = torch.Generator().manual_seed(0)
    rows, idx = torch.randint(0, 32, (200,), generator=g), torch.randint(0, F // 2, (200,), generator=g)
    weights, x = torch.randn(200, generator=g), torch.randn(32, D, generator=g)
    dense_BF = torch.zeros(32, F).index_put_((rows, idx), weights, accumulate=True)
    sums_FD = feature_sums(rows, idx, weights, x, F)
    torch.testing.assert_close(sums_FD, dense_BF.T @ x, rtol=1e-5, atol=1e-5)
    assert torch.equal(sums_FD[F // 2 :], torch.zeros(F - F // 2, D))


def test_argsort_keys_sorts_narrow_keys_as_int32_and_wide_ones_exactly():
    narrow = torch.tensor([5, 3, 3, 7, 0])
    assert narrow[argsort_keys(narrow, 8)].tolist() == [0, 3, 3, 5, 7]
    wide = torch.tensor([2**40 + 1, 5, 2**40, 2**31])  # past int32: sorted as float64, exact below 2**53
    assert wide[argsort_keys(wide, 2**41)].tolist() == [5, 2**31, 2**40, 2**40 + 1]


@pytest.mark.parametrize("scaled_rows", ["none", "sampled", "unsampled"])
def test_batchtopk_selection_is_the_exact_top_k_batch(scaled_rows):
    """The candidates come from a bound estimated on every 4th row (256 rows): ×100 on exactly those
    rows leaves too few entries above the first bound (the retry), ×100 on the others too many."""
    sae = build_sae(_cfg("batchtopk", k=5))
    x = torch.randn(256, D)
    if scaled_rows != "none":
        x[0 if scaled_rows == "sampled" else 1 :: 4] *= 100
    pre = sae.pre_acts(x).detach()
    idx, vals, offsets = sae.select_active(pre)
    top = pre.relu().flatten().topk(5 * 256)
    rows = torch.arange(256).repeat_interleave(torch.diff(offsets, append=torch.tensor([idx.numel()])))
    assert torch.equal((rows * F + idx).sort().values, top.indices.sort().values)
    assert torch.equal(vals, pre.relu()[rows, idx])
    assert torch.all(rows[1:] >= rows[:-1])  # entries ordered by token, as decode_sparse wants


def test_jumprelu_threshold_gets_the_straight_through_gradient():
    cfg = _cfg("jumprelu", jumprelu_bandwidth=0.5, jumprelu_init_threshold=0.2, l0_coeff=1.0)
    sae = build_sae(cfg)
    x = torch.randn(64, D)
    out = sae.training_output(x, torch.zeros(F, dtype=torch.bool), sparsity_scale=1.0)
    out.loss.backward()
    pre = sae.pre_acts(x).detach()
    theta = sae.log_threshold.exp().detach()
    in_window = ((pre - theta) / 0.5).abs() < 0.5
    # L0 term alone: d/dθ mean_B Σ H(pre − θ) ≈ −(1/ε) mean_B K(...); times dθ/dlogθ = θ
    l0_grad = -(in_window.float().sum(0) / 64) / 0.5 * theta
    assert sae.log_threshold.grad is not None
    # reconstruction contributes too, so compare only where it cannot (no sample in the window)
    quiet = ~in_window.any(0)
    assert torch.all(sae.log_threshold.grad[quiet] == 0)
    assert (sae.log_threshold.grad[~quiet] != 0).all()
    assert l0_grad[~quiet].lt(0).all()


@pytest.mark.parametrize("variant", ["standard", "standard2024", "topk", "batchtopk", "jumprelu"])
def test_training_lowers_the_loss_keeps_unit_decoder_rows_and_is_deterministic(variant):
    cfg = _cfg(variant, k=4, lr=1e-2) if "topk" in variant else _cfg(variant, lr=1e-2)
    init = torch.cat(list(_batches(4, seed=9)))
    first = train_sae(cfg, _batches(40), init)
    second = train_sae(cfg, _batches(40), init)
    assert first.samples_seen == 128 * 20
    losses = [h["mse"] for h in first.history if "mse" in h]
    assert losses[-1] < 0.6 * losses[0]
    norms_F = first.sae.W_dec.norm(dim=1)
    if variant == "standard2024":  # no constraint: the rows' norms drift apart from their initial 1
        assert norms_F.std() > 0.01
    else:
        torch.testing.assert_close(norms_F, torch.ones(F))
    for name, tensor in first.sae.state_dict().items():
        assert torch.equal(tensor, second.sae.state_dict()[name]), name


def test_training_runs_on_deterministic_kernels_and_restores_the_setting():
    """Some CPU backward kernels (JumpReLU's at d = 512, F = 2,048, batch 1,024; an embedding's)
    sum in thread order; training runs with torch's deterministic ones and puts the setting back."""
    seen = []

    def batches():
        for x_BD in _batches(20):
            seen.append(torch.are_deterministic_algorithms_enabled())
            yield x_BD

    train_sae(_cfg("jumprelu"), batches(), torch.cat(list(_batches(4, seed=9))))
    assert seen == [True] * 20 and not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("variant", ["standard", "standard2024", "batchtopk", "jumprelu"])
def test_returned_sae_takes_raw_activations(variant):
    cfg = _cfg(variant, k=4, lr=1e-2) if "topk" in variant else _cfg(variant, lr=1e-2)
    init = torch.cat(list(_batches(4, seed=9)))
    result = train_sae(cfg, _batches(40), init)
    scale = result.input_scale
    assert scale == pytest.approx(math.sqrt(D / init.pow(2).sum(1).mean().item()), rel=1e-6)
    x = torch.cat(list(_batches(2, seed=5)))
    fvu = (result.sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.8
    in_training_units = copy.deepcopy(result.sae)
    in_training_units.rescale_units(1 / scale)
    torch.testing.assert_close(in_training_units.encode(x * scale) / scale, result.sae.encode(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(in_training_units(x * scale) / scale, result.sae(x), rtol=1e-4, atol=1e-5)


def test_standard2024_penalty_is_weighted_by_decoder_norms_and_has_its_recipe_defaults():
    cfg = _cfg("standard2024")
    assert (cfg.sparsity_warmup, cfg.grad_clip, cfg.resample_at, cfg.decay_frac) == (0.05, 1.0, (), 0.2)
    assert _cfg("standard").grad_clip is None
    sae = build_sae(cfg)
    torch.testing.assert_close(sae.W_enc, 0.1 * sae.W_dec.T)
    latents = torch.rand(5, F)
    with torch.no_grad():
        sae.W_dec[:3] *= 0.25  # rows 0-2 now have norm 0.25, the others 1
    expected = (latents[:, :3].sum(1) * 0.25 + latents[:, 3:].sum(1)).mean()
    torch.testing.assert_close(sae.sparsity_penalty(Entries(latents)), expected)
    rows, idx = latents.nonzero(as_tuple=True)  # the same latents as a list of entries
    listed = Entries(latents[rows, idx], idx, torch.arange(5) * F)
    torch.testing.assert_close(sae.sparsity_penalty(listed), expected)


def test_geometric_median_resists_outliers():
    points = torch.cat([torch.zeros(99, 3), torch.full((1, 3), 1000.0)])
    assert geometric_median(points).norm() < 1e-2
    assert points.mean(0).norm() > 10


def test_resampling_follows_the_paper():
    cfg = _cfg("standard")
    sae = build_sae(cfg)
    opt = torch.optim.Adam(sae.parameters())
    sae(torch.randn(8, D)).sum().backward()
    opt.step()
    dead = torch.zeros(F, dtype=torch.bool)
    dead[[3, 7]] = True
    inputs = torch.zeros(50, D)
    inputs[17] = torch.arange(D, dtype=torch.float32)  # the two inputs with non-trivial loss
    inputs[23] = -torch.arange(D, dtype=torch.float32)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc[:, 3:8] = 0.0  # encoder kills reconstruction everywhere except via bias
    live_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    pick = pick_inputs(resampling_weights(sae, inputs), 2, torch.Generator().manual_seed(0))
    assert sorted(pick.tolist()) == [17, 23]  # only they have non-zero weight
    reinitialise_features(sae, opt, dead, inputs[pick])
    unit = inputs[17] / inputs[17].norm()
    assert sorted(round((sae.W_dec[i] @ unit).item(), 5) for i in (3, 7)) == [-1.0, 1.0]
    torch.testing.assert_close(sae.W_enc[:, 7], sae.W_dec[7] * 0.2 * live_norm)
    assert sae.b_enc[3] == 0 and sae.b_enc[7] == 0
    assert torch.all(opt.state[sae.W_dec]["exp_avg"][[3, 7]] == 0)
    assert torch.all(opt.state[sae.W_enc]["exp_avg_sq"][:, [3, 7]] == 0)
    assert opt.state[sae.W_dec]["exp_avg"][0].abs().sum() > 0


def test_trainer_resamples_on_schedule_and_reuses_the_inputs():
    # Nearly constant inputs: every feature whose pre-activation is negative there never fires.
    g = torch.Generator().manual_seed(0)
    c = torch.randn(D, generator=g)
    stream = [c + 0.01 * torch.randn(128, D, generator=g) for _ in range(20)]
    # encoder at full scale: features pointing away from c start far enough below 0 to stay dead
    cfg = _cfg("standard", resample_at=(0.5,), dead_window=0.2, resample_inputs=256, encoder_init_scale=1.0)
    init = torch.randn(512, D, generator=g)  # b_dec starts near 0, far from c
    never_fire = (c @ build_sae(cfg).W_enc < -0.5).sum().item()
    result = train_sae(cfg, iter(stream), init)  # exactly n_samples: nothing may be skipped
    events = [h for h in result.history if "resampled" in h]
    assert [e["samples"] for e in events] == [128 * 10]
    assert events[0]["resampled"] >= never_fire > 10
    assert result.samples_seen == cfg.n_samples
    cos_to_c = result.sae.W_dec @ (c / c.norm())
    assert (cos_to_c > 0.99).sum() >= events[0]["resampled"]  # resampled towards the inputs


def test_killed_run_resumes_from_checkpoint_and_matches_an_uninterrupted_one(tmp_path):
    cfg = _cfg("topk", k=4, lr=3e-3, checkpoint_every=128 * 5)
    init = torch.cat(list(_batches(4, seed=9)))
    full = train_sae(cfg, _batches(20), init)

    class Killed(Exception):
        pass

    def dies_after(n):
        for i, batch in enumerate(_batches(20)):
            if i == n:
                raise Killed
            yield batch

    read: list[int] = []  # indices of the batches the resumed run reads

    def from_batch(start):
        for i, batch in enumerate(_batches(20)):
            if i >= start:
                read.append(i)
                yield batch

    with pytest.raises(Killed):
        train_sae(cfg, dies_after(12), init, checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).exists()
    resumed = train_sae(cfg, from_batch, init, checkpoint_dir=tmp_path)
    assert read == list(range(10, 20))  # from the step-10 checkpoint on; nothing before it is handed over
    assert resumed.samples_seen == cfg.n_samples
    torch.testing.assert_close(resumed.sae.W_dec, full.sae.W_dec)
    again = train_sae(cfg, _batches(20), init, checkpoint_dir=tmp_path)  # finished: nothing to do
    torch.testing.assert_close(again.sae.W_enc, full.sae.W_enc)
    with pytest.raises(Killed):
        train_sae(cfg, dies_after(12), init, checkpoint_dir=tmp_path / "b")
    with pytest.raises(TypeError, match="function of the start batch"):
        train_sae(cfg, _batches(20), init, checkpoint_dir=tmp_path / "b")  # a plain stream cannot start mid-way
    # a checkpoint of a version before some of today's config fields resumes: they take their defaults
    payload = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    payload["config"] = {k: v for k, v in payload["config"].items() if not k.startswith("jumprelu_")}
    torch.save(payload, tmp_path / "b" / CHECKPOINT_NAME)
    resumed = train_sae(cfg, from_batch, init, checkpoint_dir=tmp_path / "b")
    torch.testing.assert_close(resumed.sae.W_dec, full.sae.W_dec)


def test_bad_input_gives_one_clear_user_error(tmp_path):
    cfg = _cfg("topk", k=4)
    init = torch.cat(list(_batches(2)))
    with pytest.raises(UserError, match=r"shape \[batch, 16\]"):
        train_sae(cfg, iter([torch.randn(128, D + 1)]), init)
    for bad in (float("nan"), float("inf")):
        x_BD = torch.randn(128, D)
        x_BD[7, 3] = bad
        with pytest.raises(UserError, match="NaN or inf"):
            train_sae(cfg, iter([x_BD]), init)
    overflowing = torch.full((128, D), 3e38)  # finite entries whose sum overflows: no error from the check
    with pytest.raises(UserError, match="ran out after 128"):
        train_sae(cfg, iter([overflowing]), init)
    with pytest.raises(UserError, match="init activations"):
        train_sae(cfg, _batches(2), torch.randn(10, 3))
    with pytest.raises(UserError, match="ran out after 256"):
        train_sae(cfg, _batches(2), init)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt or not ours"):
        train_sae(cfg, _batches(20), init, checkpoint_dir=tmp_path)
    train_sae(cfg, _batches(20), init, checkpoint_dir=tmp_path / "other")
    with pytest.raises(UserError, match="different SAE config .*k"):
        train_sae(_cfg("topk", k=5), _batches(20), init, checkpoint_dir=tmp_path / "other")


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_sparse_decoding_gradients_equal_dense_ones(variant):
    sae = build_sae(_cfg(variant, k=5))
    x = torch.randn(32, D)
    pre = sae.pre_acts(x)
    idx, vals, offsets = sae.select_active(pre)
    (sae.decode_sparse(idx, vals, offsets) ** 2).sum().backward()
    sparse_grads = [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    sae.zero_grad()
    kept = torch.zeros_like(pre, dtype=torch.bool)
    if variant == "topk":
        kept.scatter_(1, pre.detach().topk(5, dim=1).indices, True)
    else:
        kept = pre.detach().relu() >= pre.detach().relu().flatten().topk(5 * 32).values.min()
    ((torch.where(kept, sae.pre_acts(x).relu(), 0) @ sae.W_dec) ** 2).sum().backward()
    for got, want in zip(sparse_grads, [p.grad for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("aux_k", [4, 32])  # 32 ≥ the 22 dead latents: all of them, no top-k
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_sparse_encoder_gradients_equal_dense_ones_with_auxk(variant, aux_k):
    """The training loss's gradients, read through the selected entries only (``pre_acts_at``),
    equal those of the same loss written densely: latents = kept ReLU(pre), AuxK over dead ones."""
    torch.manual_seed(0)
    sae = build_sae(_cfg(variant, k=5, aux_k=aux_k, select_precision="float32"))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(32, D)
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::3] = True
    sae.training_output(x, dead, 1.0).loss.backward()
    sparse_grads = [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    sae.zero_grad()

    pre = sae.pre_acts(x)
    kept = torch.zeros_like(pre, dtype=torch.bool)
    if variant == "topk":
        kept.scatter_(1, pre.detach().topk(5, dim=1).indices, True)
    else:
        kept = pre.detach().relu() >= pre.detach().relu().flatten().topk(5 * 32).values.min()
    recon = torch.where(kept, pre.relu(), 0) @ sae.W_dec + sae.b_dec
    dead_kept = torch.zeros_like(kept)
    dead_kept.scatter_(1, pre.detach().masked_fill(~dead, float("-inf")).topk(min(aux_k, 22), dim=1).indices, True)
    residual = (x - recon).detach()
    aux = ((torch.where(dead_kept, pre.relu(), 0) @ sae.W_dec - residual) ** 2).mean()
    aux = aux / (residual - residual.mean(dim=0)).pow(2).mean()
    (((recon - x) ** 2).mean() + sae.cfg.aux_coeff * aux).backward()
    for got, want in zip(sparse_grads, [p.grad for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_bf16_ranking_reads_the_chosen_entries_exactly(variant):
    """With a bf16 ranking product, the kept latents are those its selection names, their values
    and gradients those of the exact fp32 pre-activations at those entries."""
    torch.manual_seed(0)
    sae = build_sae(_cfg(variant, k=5, select_precision="bfloat16"))
    x = torch.randn(32, D)
    rank = sae.ranking_pre_acts(x)
    assert rank.dtype == torch.bfloat16
    idx, _, offsets = sae.select_active(rank)
    sae.training_output(x, torch.zeros(F, dtype=torch.bool), 1.0).loss.backward()
    sparse_grads = [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    sae.zero_grad()

    kept = torch.zeros(32, F, dtype=torch.bool)
    kept[token_rows(idx, offsets, 32), idx.flatten()] = True
    pre = sae.pre_acts(x)
    recon = torch.where(kept, pre.relu(), 0) @ sae.W_dec + sae.b_dec
    ((recon - x) ** 2).mean().backward()
    for got, want in zip(sparse_grads, [p.grad for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_ranking_precision_falls_back_to_exact_where_bf16_is_not_faster():
    cpu = torch.device("cpu")
    assert selection_dtype("auto", cpu, bf16_is_fast=lambda device: True) == torch.bfloat16
    assert selection_dtype("auto", cpu, bf16_is_fast=lambda device: False) == torch.float32
    assert selection_dtype("float32", cpu, bf16_is_fast=lambda device: True) == torch.float32
    assert selection_dtype("bfloat16", cpu, bf16_is_fast=lambda device: False) == torch.bfloat16
    sae = build_sae(_cfg("topk", k=5))
    assert sae.cfg.select_precision == "auto"
    x = torch.randn(8, D)
    sae.bf16_is_fast = lambda device: False
    torch.testing.assert_close(sae.ranking_pre_acts(x), sae.pre_acts(x).detach())
    sae.bf16_is_fast = lambda device: True
    assert sae.ranking_pre_acts(x).dtype == torch.bfloat16


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_bf16_ranking_trains_to_the_exact_paths_fvu(variant):
    """Same seed, same data: picking latents from a bf16 product ends within 1 % of the fp32
    path's held-out FVU, at the same L0."""
    from monosemantic.sae.metrics import evaluate_sae

    held_out = list(_batches(2, batch=512, seed=9))
    stats = {}
    for precision in ("float32", "bfloat16"):
        cfg = SAEConfig(
            variant=variant,
            d_in=D,
            d_sae=F,
            k=4,
            n_samples=128 * 60,
            batch_size=128,
            lr=3e-3,
            select_precision=precision,
        )
        stats[precision] = evaluate_sae(train_sae(cfg, _batches(60), next(_batches(1))).sae, held_out)
    exact, low = stats["float32"], stats["bfloat16"]
    assert exact["fvu"] < 0.5  # it learned something, so the comparison means something
    assert abs(low["fvu"] - exact["fvu"]) <= 0.01 * exact["fvu"]
    assert abs(low["l0"] - exact["l0"]) <= 0.02 * exact["l0"]


RELU_FAMILY = ["standard", "standard2024", "jumprelu"]
# JumpReLU's penalties and estimators: the paper's (L0, θ only) and Anthropic's 2025 parts
JUMPRELU_SETUPS = [
    {"jumprelu_sparsity": "tanh"},
    {"jumprelu_ste_to_input": True},
    {"jumprelu_sparsity": "tanh", "jumprelu_ste_to_input": True},
]


def _relu_family_sae(variant: str, precision: str = "float32", **options):
    """A ReLU-family SAE with random biases; JumpReLU's θ and ε put many entries in the kernel window."""
    torch.manual_seed(0)
    kw = dict(jumprelu_init_threshold=0.5, jumprelu_bandwidth=0.5, l0_coeff=0.1) if variant == "jumprelu" else {}
    sae = build_sae(_cfg(variant, select_precision=precision, **kw, **options))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(mean=-1.0)  # about 1 in 5 entries above the floor
        if variant == "jumprelu":
            sae.log_threshold.uniform_(-1.5, 0.0)
    return sae


def _step(sae, x, sparse: bool) -> tuple:
    """Loss, L0, fired features and every parameter's gradient of one training step, with the
    sparse or the dense path forced."""
    sae.zero_grad()
    sae.sparse_below, sae._last_dense = (1.0, False) if sparse else (0.0, True)
    out = sae.training_output(x, torch.zeros(F, dtype=torch.bool), 0.7)
    out.loss.backward()
    assert sae._last_dense is not sparse
    return out.loss.detach(), out.l0, out.fired_F, [p.grad.clone() for p in sae.parameters()]


def _straight_through_step(pre, theta, eps, to_input):
    """H(pre − θ) whose gradient is the rectangle estimator's, −K/ε for θ (and K/ε for pre when
    ``to_input``), written with detach instead of a custom autograd function."""
    kernel = (((pre - theta) / eps).abs() < 0.5).float() / eps
    surrogate = kernel * ((pre if to_input else pre.detach()) - theta)
    return (pre > theta).float() + surrogate - surrogate.detach()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "variant, options", [(v, {}) for v in RELU_FAMILY] + [("jumprelu", setup) for setup in JUMPRELU_SETUPS]
)
def test_sparse_relu_family_step_equals_the_dense_one_and_the_written_math(variant, options, precision):
    """Listing only the entries above the floor (exactly, or as candidates of a bf16 product) gives
    the loss, L0, fired features and gradients of the dense step, which are those of the loss
    written out with autograd through the dense pre-activations."""
    sae = _relu_family_sae(variant, precision, **options)
    x = torch.randn(96, D) * 2
    x[::7, 3] *= 20  # an outlier dimension, as MLP activations have
    dense, sparse = _step(sae, x, sparse=False), _step(sae, x, sparse=True)

    sae.zero_grad()
    pre = sae.pre_acts(x)
    if variant == "jumprelu":
        theta, eps, to_input = sae.log_threshold.exp(), sae.cfg.jumprelu_bandwidth, sae.cfg.jumprelu_ste_to_input
        active = _straight_through_step(pre, theta, eps, to_input)
        # pre · H(pre − θ): ∂/∂pre = H (+ θ K/ε), ∂/∂θ = −θ K/ε
        latents = pre * (pre > theta) + theta.detach() * (active - active.detach())
        if sae.cfg.jumprelu_sparsity == "tanh":
            penalty = sae.cfg.l0_coeff * torch.tanh(sae.cfg.jumprelu_tanh_scale * latents).sum(1).mean()
        else:
            penalty = sae.cfg.l0_coeff * active.sum(1).mean()
    else:
        latents = active = pre.relu()
        weights = sae.W_dec.norm(dim=1) if variant == "standard2024" else torch.ones(F)
        penalty = sae.cfg.l1_coeff * (latents @ weights).mean()
    loss = ((latents @ sae.W_dec + sae.b_dec - x) ** 2).mean() + 0.7 * penalty
    loss.backward()
    written = loss.detach(), (active > 0).sum(1).float().mean(), (active > 0).any(0), [p.grad for p in sae.parameters()]

    assert 0.05 < written[1] / F < 0.5  # neither path is trivial
    for got in (dense, sparse):
        torch.testing.assert_close(got[0], written[0], rtol=1e-5, atol=1e-6)
        assert got[1] == written[1] and torch.equal(got[2], written[2])
        for g, w in zip(got[3], written[3]):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_jumprelu_pre_activation_loss_pulls_only_dead_features_up_to_their_threshold():
    """μ · mean_B Σ_{f dead} ReLU(θ_f − pre_bf) joins the loss; the live features' parameters get
    none of its gradient, and a dead feature's bias is pushed up."""
    sae = _relu_family_sae("jumprelu", jumprelu_pre_act_coeff=0.5)
    x, dead_F = torch.randn(96, D), torch.zeros(F, dtype=torch.bool)
    dead_F[::3] = True
    grads = {}
    for mask in (torch.zeros(F, dtype=torch.bool), dead_F):
        sae.zero_grad()
        out = sae.training_output(x, mask, 0.7)
        out.loss.backward()
        grads[bool(mask.any())] = (out.loss.detach(), sae.b_enc.grad.clone(), sae.W_enc.grad.clone())
    below = (sae.log_threshold.exp() - sae.pre_acts(x)).relu()[:, dead_F].sum(1).mean()
    torch.testing.assert_close(grads[True][0], grads[False][0] + 0.5 * below.detach())
    torch.testing.assert_close(grads[True][1][~dead_F], grads[False][1][~dead_F])
    torch.testing.assert_close(grads[True][2][:, ~dead_F], grads[False][2][:, ~dead_F])
    assert (grads[True][1] - grads[False][1])[dead_F].lt(0).all()  # descent raises b_enc


@pytest.mark.parametrize("variant", RELU_FAMILY)
def test_sparse_relu_family_training_equals_dense_training(variant, monkeypatch):
    """Twenty steps with every batch sparse end where twenty dense ones do."""
    cfg = _cfg(variant, lr=1e-2, select_precision="float32")
    init = torch.cat(list(_batches(4, seed=9)))
    states = {}
    for below in (0.0, 1.0):
        monkeypatch.setattr(SparseAutoencoder, "sparse_below", below)
        states[below] = train_sae(cfg, _batches(20), init).sae.state_dict()
    for name, tensor in states[1.0].items():
        torch.testing.assert_close(tensor, states[0.0][name], rtol=1e-4, atol=1e-5, msg=name)


def test_relu_family_goes_dense_while_many_latents_are_active():
    sae = _relu_family_sae("standard")
    x = torch.randn(96, D)
    above = (sae.pre_acts(x) > 0).float().mean().item()
    sae.sparse_below = above * 1.01
    assert sae.pre_acts_above(x, torch.zeros(F)).idx is not None and not sae._last_dense
    sae.sparse_below = above * 0.99
    assert sae.pre_acts_above(x, torch.zeros(F)).idx is None and sae._last_dense


@pytest.mark.parametrize("variant", ["standard", "jumprelu"])
def test_relu_family_takes_bf16_candidates_only_when_asked(variant):
    """``auto`` keeps the exact product for the ReLU family, with or without bf16 units (the bf16
    candidates were measured no faster); ``bfloat16`` takes them."""
    sae = _relu_family_sae(variant)
    calls = []
    sae.ranking_above = lambda *args: calls.append(1) or SparseAutoencoder.ranking_above(sae, *args)
    x = torch.randn(32, D)
    for precision, fast, expected_calls in (("auto", False, 0), ("auto", True, 0), ("bfloat16", True, 1)):
        sae.cfg = sae.cfg.model_copy(update={"select_precision": precision})
        sae.bf16_is_fast = lambda device, fast=fast: fast
        sae.sparse_below, sae._last_dense = 1.0, False
        sae.training_output(x, torch.zeros(F, dtype=torch.bool), 1.0).loss.backward()
        assert len(calls) == expected_calls


@pytest.mark.parametrize("variant", ["standard", "jumprelu"])
def test_relu_family_bf16_candidates_train_to_the_exact_paths_fvu(variant, monkeypatch):
    """Same seed, same data, every batch sparse: choosing the entries above the floor from a bf16
    product ends within 1 % of the exact choice's held-out FVU, at the same L0."""
    from monosemantic.sae.metrics import evaluate_sae

    monkeypatch.setattr(SparseAutoencoder, "sparse_below", 1.0)
    ranked = []
    bf16_ranking = SparseAutoencoder.ranking_above
    monkeypatch.setattr(SparseAutoencoder, "ranking_above", lambda *a: ranked.append(1) or bf16_ranking(*a))
    held_out = list(_batches(2, batch=512, seed=9))
    stats = {}
    for precision in ("float32", "bfloat16"):
        cfg = SAEConfig(
            variant=variant, d_in=D, d_sae=F, n_samples=128 * 60, batch_size=128, lr=3e-3, select_precision=precision
        )
        stats[precision] = evaluate_sae(train_sae(cfg, _batches(60), next(_batches(1))).sae, held_out)
    assert len(ranked) == 59  # the bf16 run's every batch after the first (taken exactly: dense until known)
    exact, low = stats["float32"], stats["bfloat16"]
    assert exact["fvu"] < 0.5
    assert abs(low["fvu"] - exact["fvu"]) <= 0.01 * exact["fvu"]
    assert abs(low["l0"] - exact["l0"]) <= 0.02 * exact["l0"]
