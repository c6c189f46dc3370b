import pytest
import torch
from conftest import make_corpus_text

import monosemantic.lm.train as train_module
from monosemantic.corpus.shards import TokenShards, write_token_shards
from monosemantic.corpus.tokenizer import train_tokenizer
from monosemantic.distributed import SINGLE
from monosemantic.errors import UserError
from monosemantic.lm.baselines import baseline_losses
from monosemantic.lm.config import LMConfig
from monosemantic.lm.grad_tree import PartGradients
from monosemantic.lm.model import build_lm, load_lm, save_lm
from monosemantic.lm.train import backward_in_parts, evaluate_lm, next_token_loss, train_lm
from monosemantic.progress import set_quiet

set_quiet(True)
TINY = dict(
    d_model=32,
    d_mlp=64,
    n_heads=2,
    n_ctx=32,
    batch_size=8,
    warmup_steps=5,
    eval_every=10,
    eval_windows=8,
    checkpoint_every=10,
)


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "tokens"
    docs = make_corpus_text(n_docs=120).split("\n\n\n")
    write_token_shards(iter(docs), train_tokenizer(iter(docs), 400), out, val_fraction=0.2)
    return out


def test_lm_learns_beats_unigram_and_is_deterministic(tokens_dir, tmp_path):
    cfg = LMConfig(**TINY, n_steps=60, lr=1e-2)
    model, figures = train_lm(cfg, tokens_dir, tmp_path / "a.pt")
    _, again = train_lm(cfg, tokens_dir, tmp_path / "b.pt")
    assert [h["val_loss"] for h in figures["history"]] == [h["val_loss"] for h in again["history"]]
    train, val = TokenShards(tokens_dir, "train"), TokenShards(tokens_dir, "val")
    val_loss = evaluate_lm(model, val, cfg.n_ctx, None)
    base = baseline_losses(train, val, cfg.n_ctx)
    assert figures["history"][-1]["val_loss"] < figures["history"][0]["val_loss"]
    assert val_loss < base["unigram_loss"] - 0.5
    assert base["bigram_loss"] < base["unigram_loss"]


def test_training_is_bitwise_reproducible_on_two_threads(tokens_dir, tmp_path):
    """2,048 tokens in one backward pass (grad_parts 1), with repeats: the embedding's backward then
    runs on both threads and, without ``reproducible_kernels``, adds into a shared row in whichever
    order the threads get there (measured: 3 of 3 reruns differed without it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = LMConfig(**{**TINY, "d_model": 64, "batch_size": 64}, n_steps=3, grad_parts=1)
        a, _ = train_lm(cfg, tokens_dir, tmp_path / "a.pt")
        b, _ = train_lm(cfg, tokens_dir, tmp_path / "b.pt")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is restored after training


def test_resume_after_interruption_gives_identical_losses(tokens_dir, tmp_path, monkeypatch):
    cfg = LMConfig(**TINY, n_steps=30)
    _, uninterrupted = train_lm(cfg, tokens_dir, tmp_path / "u.pt")

    real_lr_at = train_module.lr_at

    def crash_at_step_25(step, c):
        if step == 25:
            raise KeyboardInterrupt
        return real_lr_at(step, c)

    monkeypatch.setattr(train_module, "lr_at", crash_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        train_lm(cfg, tokens_dir, tmp_path / "r.pt")
    assert (tmp_path / "r.pt").exists()  # the step-20 checkpoint survived the crash
    monkeypatch.setattr(train_module, "lr_at", real_lr_at)
    _, resumed = train_lm(cfg, tokens_dir, tmp_path / "r.pt")
    assert resumed["history"] == uninterrupted["history"]


def test_save_load_round_trip_and_corrupt_checkpoint(tokens_dir, tmp_path):
    cfg = LMConfig(**TINY, n_steps=5)
    model, _ = train_lm(cfg, tokens_dir, tmp_path / "c.pt")
    save_lm(model, cfg, tmp_path / "lm")
    loaded = load_lm(tmp_path / "lm")
    tokens_BT = torch.randint(0, 300, (2, 16))
    assert torch.allclose(model(tokens_BT), loaded(tokens_BT))
    (tmp_path / "lm" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_lm(tmp_path / "lm")


def test_baselines_on_a_known_sequence(tmp_path):
    docs = ["a b c d " * 200] * 10 + ["a b c d " * 50]
    tok = train_tokenizer(iter(docs), 300)
    write_token_shards(iter(docs), tok, tmp_path / "tokens", val_fraction=0.3)
    train, val = TokenShards(tmp_path / "tokens", "train"), TokenShards(tmp_path / "tokens", "val")
    base = baseline_losses(train, val, 16)
    # A deterministic cycle: the bigram predicts almost perfectly, the unigram cannot.
    assert base["bigram_loss"] < 0.05
    assert base["unigram_loss"] > 1.0


def test_impossible_config():
    with pytest.raises(ValueError, match="divisible"):
        LMConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match=r"grad_parts \(8\) must divide batch_size \(12\)"):
        LMConfig(batch_size=12)


TREES = {  # P: the balanced tree over the parts' gradients g, written out
    4: lambda g: (g[0] + g[1]) + (g[2] + g[3]),
    6: lambda g: (g[0] + (g[1] + g[2])) + (g[3] + (g[4] + g[5])),
}


@pytest.mark.parametrize("n_parts", sorted(TREES))
def test_the_gradient_of_a_batch_in_parts_is_the_tree_of_the_parts_gradients(n_parts):
    cfg = LMConfig(**{**TINY, "batch_size": 12}, grad_parts=n_parts)
    torch.manual_seed(0)
    model = build_lm(cfg, 50)
    params = list(model.parameters())
    windows_BT = torch.randint(0, 50, (12, cfg.n_ctx), generator=torch.Generator().manual_seed(1))
    parts_BT = windows_BT.chunk(n_parts)
    part_grads = [torch.autograd.grad(next_token_loss(model, part_BT), params) for part_BT in parts_BT]
    whole_grads = torch.autograd.grad(next_token_loss(model, windows_BT), params)

    losses = backward_in_parts(model, PartGradients(params, n_parts, SINGLE), windows_BT, "cpu", bf16=False)
    assert losses.tolist() == [next_token_loss(model, part_BT).item() for part_BT in parts_BT]
    in_order = 0
    for i, param in enumerate(params):
        g = [grads[i] for grads in part_grads]
        assert torch.equal(param.grad, TREES[n_parts](g) / n_parts), i
        torch.testing.assert_close(param.grad, whole_grads[i], rtol=1e-4, atol=1e-6)  # the batch's gradient
        in_order += not torch.equal(param.grad, sum(g[1:], g[0]) / n_parts)
    assert in_order > 0  # summed left to right the bits differ: the test sees the order


def test_bigram_dense_and_sparse_counts_agree(tokens_dir, monkeypatch):
    import monosemantic.lm.baselines as baselines

    train, val = TokenShards(tokens_dir, "train"), TokenShards(tokens_dir, "val")
    dense = baseline_losses(train, val, 32)
    monkeypatch.setattr(baselines, "DENSE_PAIRS_MAX", 0)
    assert baseline_losses(train, val, 32) == dense


def test_bfloat16_training_runs_under_autocast_and_learns_like_float32(tokens_dir, tmp_path, monkeypatch):
    seen = []
    forward = train_module.next_token_loss

    def spy(model, tokens_BT):
        loss = forward(model, tokens_BT)
        seen.append(torch.is_autocast_enabled("cpu"))
        return loss

    monkeypatch.setattr(train_module, "next_token_loss", spy)
    fp32, _ = train_lm(LMConfig(**TINY, n_steps=60, lr=1e-2), tokens_dir, tmp_path / "a.pt")
    assert not any(seen)  # auto = float32 on the CPU
    seen.clear()  # (evaluation, also through next_token_loss, stays float32)
    bf16, _ = train_lm(LMConfig(**TINY, n_steps=60, lr=1e-2, precision="bfloat16"), tokens_dir, tmp_path / "b.pt")
    assert seen.count(True) == 60 * 8  # every step backpropagates its 8 parts (lm.grad_parts)
    val = TokenShards(tokens_dir, "val")
    loss_fp32, loss_bf16 = (evaluate_lm(m, val, 32, None) for m in (fp32, bf16))
    assert next(bf16.parameters()).dtype == torch.float32  # weights stay float32
    assert loss_bf16 == pytest.approx(loss_fp32, rel=0.05) and loss_bf16 != loss_fp32
