"""``monosemantic eval``: SAEBench's core metrics under its names and structure, and the custom-SAE adapter."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from monosemantic.activations import ActivationStore
from monosemantic.corpus.shards import TokenShards
from monosemantic.evaluation import evaluate_run
from monosemantic.lm.model import load_lm
from monosemantic.sae import SAEConfig, build_sae
from monosemantic.sae.io import load_sae
from monosemantic.sae.saebench import SAEBenchSAE

PROMPTS, BATCHES = 8, 2


@pytest.fixture(scope="module")
def evaluated(analysed_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(analysed_run[0], run)
    done = evaluate_run(run, PROMPTS, BATCHES)
    return run, analysed_run[1], done


def _result(run, name) -> dict:
    return json.loads((run / "eval" / "core" / f"run_{name}_eval_results.json").read_text())


def test_core_metrics_are_the_saes_own_numbers(evaluated):
    run, cfg, done = evaluated
    names = [f"{cfg.sae.variant}-{size}" for size in cfg.sae.sizes]
    assert sorted(done.figures["saes"]) == sorted(names)
    store = ActivationStore(run / "activations" / "val")
    model = load_lm(run / "lm")
    windows = [w for _, _, w in TokenShards(run / "tokens", "val").sequential_windows(cfg.lm.n_ctx, PROMPTS * BATCHES)]
    tokens_BT = torch.from_numpy(np.stack(windows))
    for name in names:
        out = _result(run, name)
        assert out["eval_type_id"] == "core" and out["sae_lens_id"] == name and out["sae_lens_release_id"] == "run"
        m = out["eval_result_metrics"]
        sae = load_sae(run / "saes" / name)
        n = m["token_stats"]["total_tokens_eval_sparsity_variance"]
        assert n == (len(store) // (PROMPTS * cfg.lm.n_ctx)) * PROMPTS * cfg.lm.n_ctx
        x_ND = torch.from_numpy(store.read_range(0, n)).double()
        with torch.no_grad():
            acts_NF = sae.encode(x_ND.float())
            x_hat_ND = sae.decode(acts_NF).double()
        assert m["sparsity"]["l0"] == pytest.approx(float((acts_NF != 0).sum(1).float().mean()), rel=1e-6)
        cos = torch.nn.functional.cosine_similarity(x_ND, x_hat_ND, dim=1).mean()
        assert m["reconstruction_quality"]["cossim"] == pytest.approx(float(cos), rel=1e-5)
        density_F = (acts_NF > 0).double().mean(0)
        assert m["misc_metrics"]["frac_alive"] == pytest.approx(float((density_F > 0).double().mean()))
        assert [d["feature_density"] for d in out["eval_result_details"]] == pytest.approx(density_F.tolist())
        with torch.no_grad():
            clean = model(tokens_BT, return_type="loss")
        perf = m["model_performance_preservation"]
        assert perf["ce_loss_without_sae"] == pytest.approx(float(clean), rel=1e-4)
        assert perf["ce_loss_with_sae"] < perf["ce_loss_with_ablation"]  # a trained SAE beats zeroing the MLP
        behaviour = m["model_behavior_preservation"]
        assert 0 < behaviour["kl_div_with_sae"] < behaviour["kl_div_with_ablation"]
        assert behaviour["kl_div_score"] == pytest.approx(
            1 - behaviour["kl_div_with_sae"] / behaviour["kl_div_with_ablation"]
        )
    assert json.loads((run / "run.json").read_text())["eval"]["saes"][names[0]]["l0"] == pytest.approx(
        _result(run, names[0])["eval_result_metrics"]["sparsity"]["l0"]
    )
    assert evaluate_run(run, PROMPTS, BATCHES).skipped  # a stage: current results are kept


def test_output_validates_as_saebench_core_output(evaluated):
    """SAEBench's own pydantic schema accepts the file, and its metric helpers give our numbers."""
    core = pytest.importorskip("sae_bench.evals.core.main")
    from sae_bench.evals.core.eval_output import CoreEvalOutput

    run, cfg, _ = evaluated
    name = f"{cfg.sae.variant}-{cfg.sae.sizes[-1]}"
    out = _result(run, name)
    parsed = CoreEvalOutput(**out)
    assert parsed.eval_result_metrics.sparsity.l0 == out["eval_result_metrics"]["sparsity"]["l0"]
    details = out["eval_result_details"]
    theirs = core.calculate_misc_metrics(
        {k: [d[k] for d in details] for k in ("feature_density", "max_encoder_cosine_sim", "max_decoder_cosine_sim")}
    )
    assert theirs == pytest.approx(out["eval_result_metrics"]["misc_metrics"], rel=1e-5)
    sae = load_sae(run / "saes" / name)
    max_dec = core.calculate_max_cosine_sim(sae.W_dec.detach().T)
    assert [d["max_decoder_cosine_sim"] for d in details] == pytest.approx(max_dec.tolist(), abs=1e-5)


def test_adapter_meets_saebench_custom_sae_interface():
    sae = build_sae(SAEConfig(variant="topk", d_in=16, d_sae=48, k=4))
    adapter = SAEBenchSAE(sae, "tiny-gpt2", "blocks.2.hook_resid_post", context_size=32)
    x_BTD = torch.randn(3, 5, 16)
    with torch.no_grad():
        latents = adapter.encode(x_BTD)
        assert latents.shape == (3, 5, 48) and ((latents > 0).sum(-1) <= 4).all()
        torch.testing.assert_close(adapter.decode(latents), sae(x_BTD.reshape(15, 16)).reshape(3, 5, 16))
        torch.testing.assert_close(adapter(x_BTD), adapter.decode(latents))
    assert isinstance(adapter.W_dec, torch.nn.Parameter) and adapter.W_dec.shape == (48, 16)
    assert adapter.W_enc.shape == (16, 48) and adapter.W_dec is sae.W_dec  # shared, not copied
    assert adapter.dtype == torch.float32 and adapter.device == torch.device("cpu")
    assert (adapter.cfg.d_in, adapter.cfg.d_sae, adapter.cfg.hook_layer) == (16, 48, 2)
    assert adapter.cfg.to_dict()["hook_name"] == "blocks.2.hook_resid_post"
    base = pytest.importorskip("sae_bench.custom_saes.base_sae")
    from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig

    assert {f.name for f in dataclasses.fields(CustomSAEConfig)} <= {f.name for f in dataclasses.fields(adapter.cfg)}
    assert base.BaseSAE.check_decoder_norms(adapter)  # SAEBench's own check of unit decoder rows
    adapter.to(dtype=torch.float64)
    assert adapter.dtype == torch.float64 and adapter.cfg.dtype == "float64"


def test_eval_of_a_run_without_saes_is_one_line(tiny_run):
    from monosemantic.errors import UserError

    with pytest.raises(UserError, match="no SAEs yet"):
        evaluate_run(tiny_run)
