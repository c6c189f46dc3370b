"""A world of 2 processes on Gloo (127.0.0.1, a free port per test, a timeout on every join) must
compute what a world of 1 computes on the same global batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch

from monosemantic.distributed import SINGLE, World, backend_for, run_local_world, session, world
from monosemantic.errors import UserError
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae

JOIN_TIMEOUT_S = 120
SRC = str(Path(__file__).parent.parent / "src")
D, F = 16, 64
SHARD_CFG = dict(
    variant="topk", d_in=D, d_sae=F, k=4, aux_k=6, n_samples=1024, batch_size=64, select_precision="float32"
)  # bf16 ranking of F/2 columns may round a near-tie otherwise than of F


def spawn_world(fn, *args, size: int = 2) -> list:
    """Each rank's result of ``fn(world, *args)`` on a Gloo world of ``size`` spawned processes."""
    try:
        return run_local_world(fn, args, size, timeout_s=JOIN_TIMEOUT_S)
    except TimeoutError as err:
        pytest.fail(str(err))


# ---------------------------------------------------------------- SAE, data-parallel


def _sparse_batches(n: int, seed: int, batch: int = 128) -> list[torch.Tensor]:
    dirs = torch.randn(32, D, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    return [
        ((torch.rand(batch, 32, generator=g) < 0.1) * torch.rand(batch, 32, generator=g)) @ dirs + 0.5 for _ in range(n)
    ]


def _near_constant_batches(n: int, seed: int, batch: int = 128) -> list[torch.Tensor]:
    """Nearly constant inputs: many features never fire, so resampling has work to do."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(D, generator=g)
    return [c + 0.05 * torch.randn(batch, D, generator=g) for _ in range(n)]


SAE_CASES = {
    "topk": (dict(variant="topk", k=4, aux_k=8, dead_window=0.1), _sparse_batches),
    "batchtopk": (dict(variant="batchtopk", k=4, aux_k=8, dead_window=0.1), _sparse_batches),
    "standard": (
        dict(variant="standard", resample_at=(0.5,), dead_window=0.2, resample_inputs=256),
        _near_constant_batches,
    ),
    "standard2024": (dict(variant="standard2024"), _sparse_batches),  # clips the whole gradient's norm
    "jumprelu": (dict(variant="jumprelu"), _sparse_batches),
    # θ high enough that under 5 % of the entries are candidates: every step takes the sparse path
    "jumprelu, sparse": (dict(variant="jumprelu", jumprelu_init_threshold=2.0), _sparse_batches),
}
RANK_ROWS_CASES = ("topk", "standard")  # AuxK, and resampling's picks from rows only one rank holds


def _train_saes(here: World) -> dict:
    set_quiet(True)
    results = {}
    for name, (kw, make) in SAE_CASES.items():
        cfg = SAEConfig(d_in=D, d_sae=F, n_samples=128 * 20, batch_size=128, lr=1e-3, **kw)
        batches = make(20, seed=0)
        result = train_sae(cfg, iter(batches), make(4, seed=1)[0], world=here)
        results[name] = {"state": result.sae.state_dict(), "history": result.history, "scale": result.input_scale}
        if name in RANK_ROWS_CASES:  # each rank passed only its rows of each batch, as a per-rank reader gives them
            mine = [here.local_part(x_BD) for x_BD in batches]
            result = train_sae(cfg, iter(mine), make(4, seed=1)[0], world=here, rank_rows=True)
            results[f"{name}, rank rows"] = {
                "state": result.sae.state_dict(),
                "history": result.history,
                "scale": result.input_scale,
            }
    return results


def _assert_same_sae(a: dict, b: dict) -> None:
    assert a["scale"] == pytest.approx(b["scale"], rel=1e-6)
    for key, tensor in a["state"].items():
        torch.testing.assert_close(tensor, b["state"][key], rtol=1e-4, atol=1e-5, msg=key)
    for key in ("loss", "l0", "auxk", "resampled"):
        assert [i for i, h in enumerate(a["history"]) if key in h] == [
            i for i, h in enumerate(b["history"]) if key in h
        ]
        logged = [h[key] for h in a["history"] if key in h]
        assert logged == pytest.approx([h[key] for h in b["history"] if key in h], rel=1e-4)


def test_sae_data_parallel_training_equals_one_process(tmp_path):
    one = _train_saes(SINGLE)
    ranks = spawn_world(_train_saes)
    # the cases exercise what needs synchronising: AuxK on dead latents, BatchTopK's threshold, resampling
    assert any("auxk" in h for h in one["topk"]["history"])
    assert any("auxk" in h for h in one["batchtopk"]["history"])
    assert one["batchtopk"]["state"]["threshold"] > 0
    assert [h["resampled"] for h in one["standard"]["history"] if "resampled" in h][0] > 5
    for name in SAE_CASES:
        _assert_same_sae(ranks[0][name], one[name])
        _assert_same_sae(ranks[1][name], one[name])
    for name in RANK_ROWS_CASES:
        for rank in ranks:
            _assert_same_sae(rank[f"{name}, rank rows"], one[name])


# ---------------------------------------------------------------- the world itself


def test_world_of_one_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert world() == SINGLE
    with session(torch.device("cpu")) as here:
        assert here.size == 1 and not torch.distributed.is_initialized()
        x = torch.arange(4.0)
        assert here.all_reduce_(x) is x and here.all_gather(x) is x and here.local_part(x) is x


def test_bad_launch_settings_are_one_line_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(UserError, match="start the run with torchrun"):
        world()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE='two': not an integer"):
        world()
    monkeypatch.setenv("MONOSEMANTIC_DIST_BACKEND", "nccl")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="NCCL needs CUDA"):
            backend_for(torch.device("cpu"))
    monkeypatch.setenv("MONOSEMANTIC_DIST_BACKEND", "mpi")
    with pytest.raises(UserError, match="must be gloo or nccl"):
        backend_for(torch.device("cpu"))
    with pytest.raises(UserError, match="sae.batch_size=129: not divisible by the world size 2"):
        World(0, 2).check_divides(129, "sae.batch_size")


# ---------------------------------------------------------------- LM, DistributedDataParallel


def _train_lm(here: World, tokens_dir: Path, checkpoint: Path, batch_size: int = 8) -> dict:
    from monosemantic.config import load_config
    from monosemantic.lm.train import train_lm

    set_quiet(True)
    cfg = load_config("tiny").lm.model_copy(
        update={"n_steps": 3, "warmup_steps": 1, "eval_every": 3, "batch_size": batch_size, "grad_parts": batch_size}
    )
    model, figures = train_lm(cfg, tokens_dir, checkpoint, "cpu", here)
    return {"state": model.state_dict(), "train_loss": figures["train_loss"]}


def test_lm_data_parallel_steps_are_one_process_steps_bit_for_bit(tiny_run, tmp_path):
    """Each rank backpropagates its 4 of the 8 parts; the hook adds the two subtree sums as one process does."""
    one = _train_lm(SINGLE, tiny_run / "tokens", tmp_path / "one.pt")
    ranks = spawn_world(_train_lm, tiny_run / "tokens", tmp_path / "two.pt")
    for rank in ranks:
        assert rank["train_loss"] == one["train_loss"]
        assert rank["state"].keys() == one["state"].keys()
        for key, tensor in one["state"].items():
            assert torch.equal(rank["state"][key], tensor), key
    initial = _initial_lm_state(tiny_run)
    moved = max((one["state"][k] - v).abs().max().item() for k, v in initial.items() if v.is_floating_point())
    assert moved > 1e-3  # the steps changed the weights: the comparison is not of two untrained models


def test_lm_data_parallel_over_4_ranks_is_bit_equal_and_over_3_close(tiny_run, tmp_path):
    """4 ranks of 2 parts: the hook's tree over the ranks, (S_0 + S_1) + (S_2 + S_3), is the one-process
    tree. 3 ranks of 2 of 6 parts are not subtrees of that tree: the same sum in another order."""
    one = _train_lm(SINGLE, tiny_run / "tokens", tmp_path / "one.pt")
    for rank in spawn_world(_train_lm, tiny_run / "tokens", tmp_path / "four.pt", size=4):
        assert all(torch.equal(rank["state"][key], tensor) for key, tensor in one["state"].items())
    one = _train_lm(SINGLE, tiny_run / "tokens", tmp_path / "one6.pt", 6)
    ranks = spawn_world(_train_lm, tiny_run / "tokens", tmp_path / "three.pt", 6, size=3)
    for rank in ranks:
        assert rank["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        for key, tensor in one["state"].items():
            if key.endswith("attn.b_K"):  # its true gradient is 0 (softmax ignores a shift): Adam steps by the noise
                continue
            torch.testing.assert_close(rank["state"][key], tensor, rtol=1e-4, atol=1e-5, msg=key)


def _initial_lm_state(tiny_run: Path) -> dict:
    from monosemantic.config import load_config
    from monosemantic.corpus.shards import TokenShards
    from monosemantic.lm.model import build_lm

    cfg = load_config("tiny").lm
    torch.manual_seed(cfg.seed)
    return build_lm(cfg, TokenShards(tiny_run / "tokens", "train").vocab_size).state_dict()


# ---------------------------------------------------------------- faults


def _die_mid_training(here: World) -> dict:
    set_quiet(True)

    def batches():
        for i, x_BD in enumerate(_sparse_batches(20, seed=0)):
            if i == 5 and here.rank == 1:
                os._exit(1)  # a rank dies without a word
            yield x_BD

    cfg = SAEConfig(variant="topk", d_in=D, d_sae=F, k=4, n_samples=128 * 20, batch_size=128)
    train_sae(cfg, batches(), _sparse_batches(4, seed=1)[0], world=here)
    return {"finished": True}


def test_a_dying_rank_stops_the_others_with_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MONOSEMANTIC_DIST_TIMEOUT", "20")  # inherited by the spawned ranks
    started = time.monotonic()
    survivor, dead = spawn_world(_die_mid_training)
    assert dead is None
    assert survivor["error"].startswith("rank 0 of 2: ") and "another rank died" in survivor["error"]
    assert "\n" not in survivor["error"]
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------- torchrun, end to end


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_torchrun_tiny_run_killed_and_resumed_matches_one_process(analysed_run, tmp_path):
    """``torchrun --nproc_per_node 2 … run --preset tiny``, SIGKILLed (torchrun and its ranks) once
    model B's SAE checkpoint is on disk (the universality stage's second run, its lm and harvest
    done), then run again: it resumes, model B's lm and harvest are current, every stage finishes,
    and it measures what the 1-process run measured, universality's figures included."""
    import shutil

    from monosemantic import pipeline

    reference, cfg = analysed_run
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "monosemantic",
        "-q",
        "run",
        "--preset",
        "tiny",
        "--corpus",
        cfg.corpus.corpus,
        "--out",
        str(run),
        "--set",
        "corpus.val_fraction=0.2",
    ]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MONOSEMANTIC_DIST_TIMEOUT": "60"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while first.poll() is None and time.monotonic() < deadline:
        if any(run.glob("model_b/saes/.checkpoint-*/checkpoint.pt")):
            for pid in [*_children(first.pid), first.pid]:  # torchrun starts each rank in a session of its own
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, first.stderr.read().decode()[-2000:]
    killed_b = json.loads((run / "model_b/run.json").read_text())["stages"]
    assert list(killed_b) == ["corpus", "lm", "harvest"]
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, [line for line in resumed.stderr.splitlines() if "error" in line]
    assert "monosemantic run" in resumed.stdout  # rank 0's summary, once
    assert resumed.stdout.count("Manifest:") == 1
    ours, theirs = json.loads((run / "run.json").read_text()), json.loads((reference / "run.json").read_text())
    assert {stage: ours[stage]["world_size"] for stage in ("corpus", "lm", "harvest", "sae", "analysis")} == {
        "corpus": 1,
        "lm": 2,
        "harvest": 2,
        "sae": 2,
        "analysis": 2,
    }
    assert ours["lm"]["val_loss"] == pytest.approx(theirs["lm"]["val_loss"], rel=1e-3)
    for mine, one in zip(ours["sae"]["saes"], theirs["sae"]["saes"], strict=True):
        for key in ("fvu", "l0", "loss_recovered", "dead_frac"):
            assert mine[key] == pytest.approx(one[key], rel=1e-3, abs=1e-6), (mine["name"], key)
    assert not any(run.glob("saes/.checkpoint-*")) and not any(run.glob("model_b/saes/.checkpoint-*"))
    model_b = json.loads((run / "model_b/run.json").read_text())
    assert {stage: model_b["stages"][stage] for stage in ("lm", "harvest")} == {
        stage: killed_b[stage] for stage in ("lm", "harvest")
    }  # kept from the killed run, not trained again
    assert [model_b[stage]["world_size"] for stage in ("lm", "harvest", "sae")] == [2, 2, 2]
    assert json.loads((run / "sae_reseed/run.json").read_text())["sae"]["world_size"] == 2
    shutil.copytree(reference, tmp_path / "one")
    set_quiet(True)
    pipeline.run(cfg, tmp_path / "one", "universality")
    ours_u, theirs_u = ours["universality"], json.loads((tmp_path / "one/run.json").read_text())["universality"]
    assert ours_u["world_size"] == 2 and ours_u["n_tokens"] == theirs_u["n_tokens"] == 1024
    for key in ("median_feature_corr", "median_neuron_corr", "median_feature_corr_same_model", "lm_b_val_loss"):
        assert ours_u[key] == pytest.approx(theirs_u[key], rel=1e-3), key
    ours, theirs = _top_examples(run / "features.sqlite"), _top_examples(reference / "features.sqlite")
    assert len(ours) == len(theirs) > 100
    assert sum(ours[unit] == theirs[unit] for unit in theirs) >= 0.99 * len(theirs)  # the bar


def test_bad_input_under_torchrun_is_one_error_line_from_rank_0(tmp_path):
    """Every rank meets the bad ``--set``; rank 0 alone prints it, and torchrun's own failure report
    (which cannot be turned off; torchrun exits with 1) names it as the root cause, with exit code 2."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "monosemantic", "run", "--preset", "tiny", "--out", str(tmp_path / "run"), "--set", "sae.bogus=1"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    line = "error: config sae.bogus: Extra inputs are not permitted"
    assert failed.returncode == 1
    assert [text for text in failed.stderr.splitlines() if text.startswith("error:")] == [line]
    root_cause = failed.stderr.split("Root Cause")[1]
    assert "rank      : 0" in root_cause and "exitcode  : 2" in root_cause and f"traceback : {line}" in root_cause
    assert not (tmp_path / "run").exists()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_ranks_end_with_a_launcher_killed_by_sigkill_and_free_the_run_lock(tiny_run, tmp_path):
    import fcntl

    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "monosemantic", "-q", "run", "--preset", "tiny", "--out", str(run)]
    command += ["--corpus", str(tiny_run.parent / "corpus.txt")]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (run / "tokens").exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the ranks have joined the process group; rank 0 holds the lock in the lm stage
        ranks = _children(launcher.pid)
        assert len(ranks) == 2 and launcher.poll() is None
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in ranks)
    finally:
        for pid in [launcher.pid, *ranks]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    # A rank's main thread shows as a zombie while its other threads may still be exiting, holding
    # the lock's file; the lock must be free within a bounded time once they have.
    deadline = time.monotonic() + 20
    with open(run / ".lock", "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no rank outlived the launcher
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _top_examples(store: Path) -> dict[tuple, list[int]]:
    """Each unit's top-activating example rows, in rank order, from a feature store."""
    import sqlite3

    with closing(sqlite3.connect(store)) as db:
        rows = db.execute("SELECT dict, unit, row FROM examples WHERE kind = 'top' ORDER BY dict, unit, rank")
        found: dict[tuple, list[int]] = {}
        for dictionary, unit, row in rows:
            found.setdefault((dictionary, unit), []).append(row)
    return found


def _topk_with_checkpoints(here: World, checkpoint_dir: Path, die_at: int | None, shard: str = "batch") -> dict:
    set_quiet(True)
    data = _sparse_batches(20, seed=0)

    def batches(start: int):
        for i in range(start, len(data)):
            if i == die_at and here.rank == 1:
                os._exit(1)
            yield data[i]

    cfg = SAEConfig(**{**SHARD_CFG, "n_samples": 128 * 20, "batch_size": 128, "dead_window": 0.1})
    result = train_sae(cfg, batches, _sparse_batches(4, seed=1)[0], checkpoint_dir, world=here, shard=shard)
    return {"state": result.sae.state_dict(), "history": result.history, "scale": result.input_scale}


def test_a_world_of_2_killed_mid_training_resumes_at_world_size_1(tmp_path):
    survivor, _ = spawn_world(_topk_with_checkpoints, tmp_path / "ckpt", 13)
    assert "error" in survivor and (tmp_path / "ckpt/checkpoint.pt").exists()
    state = torch.load(tmp_path / "ckpt/checkpoint.pt", weights_only=True)["state"]
    assert 0 < state["steps"] < 20  # saved by rank 0 before the other rank died
    resumed = _topk_with_checkpoints(SINGLE, tmp_path / "ckpt", None)
    _assert_same_sae(resumed, _topk_with_checkpoints(SINGLE, tmp_path / "fresh", None))


# ---------------------------------------------------------------- harvest


def _harvest(here: World, run: Path, out: Path) -> dict:
    from monosemantic.activations.harvest import harvest_activations
    from monosemantic.corpus.shards import TokenShards
    from monosemantic.lm.model import load_lm

    set_quiet(True)
    model = load_lm(run / "lm", "cpu")
    shards = TokenShards(run / "tokens", "val")
    return harvest_activations(model, shards, "blocks.0.mlp.hook_post", 7 * 32, 32, 2, out, world=here)


def test_harvest_by_2_ranks_holds_the_1_rank_rows_in_order(tiny_run, tmp_path):
    from monosemantic.activations import ActivationStore

    _harvest(SINGLE, tiny_run, tmp_path / "one")
    spawn_world(_harvest, tiny_run, tmp_path / "two")
    one, two = ActivationStore(tmp_path / "one"), ActivationStore(tmp_path / "two")
    assert two.n_shards == 2 and two.n_rows == one.n_rows == 7 * 32  # 7 windows: ranks record 3 and 4
    rows = np.arange(one.n_rows)
    torch.testing.assert_close(two.rows(rows), one.rows(rows), rtol=1e-5, atol=1e-6)
    for column, values in one.origin(rows).items():
        np.testing.assert_array_equal(two.origin(rows)[column], values, err_msg=column)
    files = {p.name for p in (tmp_path / "two").iterdir()}
    assert files == {p.name for p in (tmp_path / "one").iterdir()} | {"acts_00001.bin", "origin_00001.bin"}


# ---------------------------------------------------------------- SAE, dictionary-parallel


def _dead_F() -> torch.Tensor:
    return torch.arange(F) % 5 == 0  # 13 dead latents, more than aux_k: AuxK picks among them


def _step(sae, x_BD: torch.Tensor, dead_F: torch.Tensor) -> dict:
    out = sae.training_output(x_BD, dead_F, 1.0)
    out.loss.backward()
    return {"loss": out.loss.item(), "l0": out.l0.item(), "auxk": out.terms["auxk"].item(), "fired": out.fired_F}


def _sharded_step(here: World, folder: Path) -> dict:
    from monosemantic.sae.io import save_sae
    from monosemantic.sae.sharded import ShardedTopKSAE

    cfg = SAEConfig(**SHARD_CFG)
    sae = ShardedTopKSAE(cfg, here)
    part = slice(sae.first, sae.first + sae.cfg.d_sae)
    result = _step(sae, _sparse_batches(1, seed=3, batch=64)[0], _dead_F()[part])
    result["fired"] = here.all_gather(result["fired"])
    result["grads"] = {
        "W_enc": here.all_gather(sae.W_enc.grad.T.contiguous()).T,
        "b_enc": here.all_gather(sae.b_enc.grad),
        "W_dec": here.all_gather(sae.W_dec.grad),
        "b_dec": sae.b_dec.grad,
    }
    whole = sae.gathered()
    if here.is_main:
        save_sae(whole, cfg, folder)
    return result


def test_dictionary_parallel_topk_equals_the_unsharded_sae(tmp_path):
    from monosemantic.sae import build_sae
    from monosemantic.sae.io import load_sae, save_sae

    cfg = SAEConfig(**SHARD_CFG)
    sae = build_sae(cfg)
    one = _step(sae, _sparse_batches(1, seed=3, batch=64)[0], _dead_F())
    save_sae(sae, cfg, tmp_path / "one")
    ranks = spawn_world(_sharded_step, tmp_path / "two")
    assert one["auxk"] > 0 and one["fired"].sum() > 0
    for rank in ranks:
        assert [rank[k] for k in ("loss", "l0", "auxk")] == pytest.approx([one[k] for k in ("loss", "l0", "auxk")])
        assert torch.equal(rank["fired"], one["fired"])
        for name, grad in rank["grads"].items():
            torch.testing.assert_close(grad, getattr(sae, name).grad, rtol=1e-5, atol=1e-7, msg=name)
    saved, whole = load_sae(tmp_path / "two"), load_sae(tmp_path / "one")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(saved, name), getattr(whole, name)), name


def test_dictionary_parallel_needs_a_world_that_divides_the_dictionary():
    from monosemantic.sae.sharded import ShardedTopKSAE

    with pytest.raises(UserError, match="sae.d_sae=64: not divisible by the world size 3"):
        ShardedTopKSAE(SAEConfig(**SHARD_CFG), World(0, 3))


def test_dictionary_parallel_training_equals_unsharded_and_resumes_at_world_size_1(tmp_path):
    unsharded = _topk_with_checkpoints(SINGLE, tmp_path / "fresh", None)
    assert any("auxk" in h for h in unsharded["history"])
    sharded = spawn_world(_topk_with_checkpoints, tmp_path / "ckpt-whole", None, "latents")
    for rank in sharded:
        _assert_same_sae(rank, unsharded)
    survivor, _ = spawn_world(_topk_with_checkpoints, tmp_path / "ckpt", 13, "latents")
    assert "error" in survivor
    assert torch.load(tmp_path / "ckpt/checkpoint.pt", weights_only=True)["sae"]["W_dec"].shape == (F, D)
    _assert_same_sae(_topk_with_checkpoints(SINGLE, tmp_path / "ckpt", None), unsharded)  # resumed unsharded


# ---------------------------------------------------------------- a sweep spread over the ranks


def _sae_stage(here: World, run: Path, corpus: str) -> dict:
    from monosemantic import pipeline
    from monosemantic.config import load_config

    set_quiet(True)
    overrides = ["corpus.val_fraction=0.2", f"corpus.corpus={corpus}", "sae.shard=sizes"]
    pipeline.run(load_config("tiny", overrides=overrides), run, "sae", force=True)
    return json.loads((run / "run.json").read_text())["sae"] if here.is_main else {}


def test_a_sweep_spread_one_size_per_rank_trains_the_same_saes(analysed_run, tmp_path):
    import shutil

    reference, cfg = analysed_run
    shutil.copytree(reference, tmp_path / "run")
    figures, _ = spawn_world(_sae_stage, tmp_path / "run", cfg.corpus.corpus)
    theirs = json.loads((reference / "run.json").read_text())["sae"]
    assert (
        [e["name"] for e in figures["saes"]] == [e["name"] for e in theirs["saes"]] == ["standard-64", "standard-128"]
    )
    for mine, one in zip(figures["saes"], theirs["saes"]):
        for key in ("fvu", "l0", "loss_recovered", "dead_frac"):
            assert mine[key] == pytest.approx(one[key], rel=1e-5), (mine["name"], key)
    assert figures["world_size"] == 2


# ---------------------------------------------------------------- streamed activations


def _streamed_sae_stage(here: World, run: Path, corpus: str) -> dict:
    from monosemantic import pipeline
    from monosemantic.config import load_config
    from monosemantic.sae.io import load_sae

    set_quiet(True)
    overrides = ["corpus.val_fraction=0.2", f"corpus.corpus={corpus}", "harvest.stream_train=true"]
    overrides += ["sae.sizes=[64]", "sae.n_samples=4096", "sae.buffer_rows=1024"]  # 8 batches over 4 groups
    pipeline.run(load_config("tiny", overrides=overrides), run, "sae")
    if not here.is_main:
        return {}
    return {"sae": json.loads((run / "run.json").read_text())["sae"], "W_dec": load_sae(run / "saes/standard-64").W_dec}


def test_a_world_of_2_streaming_its_parts_trains_the_sae_one_process_trains(analysed_run, tmp_path):
    """Each rank runs the LM only for its rows of each streamed batch; the SAE is one process's."""
    import shutil

    reference, cfg = analysed_run
    for name in ("one", "two"):
        shutil.copytree(reference, tmp_path / name)
    one = _streamed_sae_stage(SINGLE, tmp_path / "one", cfg.corpus.corpus)
    two, _ = spawn_world(_streamed_sae_stage, tmp_path / "two", cfg.corpus.corpus)
    assert two["sae"]["train_source"] == "streamed from the LM" and two["sae"]["world_size"] == 2
    for key in ("fvu", "l0", "loss_recovered", "dead_frac", "samples"):
        assert two["sae"]["saes"][0][key] == pytest.approx(one["sae"]["saes"][0][key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(two["W_dec"], one["W_dec"], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- analysis


STATS_D, STATS_CTX = 7, 8


def _stats_store(path: Path) -> None:
    """Sparse non-negative activations of 12 windows, documents that change every 5 rows."""
    from monosemantic.activations import ActivationWriter

    rng = np.random.default_rng(0)
    n = 12 * STATS_CTX
    acts = (rng.exponential(1.0, (n, STATS_D)) * (rng.random((n, STATS_D)) < 0.4)).astype(np.float32)
    with ActivationWriter(path, STATS_D, "blocks.0.mlp.hook_post", meta={"ctx": STATS_CTX}, rows_per_shard=40) as w:
        w.append(acts, rng.integers(0, 11, n), np.arange(n) // 5, np.arange(n), np.zeros(n, dtype=int))


def _unit_stats_split_and_whole(here: World, store_path: Path) -> dict:
    """This rank's parts of three bases joined on rank 0, and one process's statistics of them, with the
    sparse count matrices, merged every few chunks, and a co-firing budget that runs out mid-way."""
    from dataclasses import fields

    import scipy.sparse as sp

    from monosemantic.activations import ActivationStore
    from monosemantic.analysis import stats as stats_module
    from monosemantic.analysis.sampling import GroupedBottomK
    from monosemantic.sae import SAEConfig, build_sae

    set_quiet(True)
    stats_module.DENSE_ENTRIES, stats_module.MERGE_ENTRIES, stats_module.MAX_COFIRE_PAIRS = 0, 40, 150
    store = ActivationStore(store_path)
    n_rows, ctx = stats_module.analysed_rows(store, store.n_rows)
    text = stats_module.read_token_context(store, n_rows, ctx)
    topk = build_sae(SAEConfig(variant="topk", d_in=STATS_D, d_sae=45, k=2, seed=0))  # 2 of 45 fire: sparse
    bases = [
        stats_module.Basis("neurons", "neuron", STATS_D, lambda x: x),  # dense: co-firing by matmul
        stats_module.Basis("topk", "feature", 45, topk.encode),  # each unit's activation depends on all units
        stats_module.Basis("one", "feature", 1, lambda x: x.sum(1, keepdim=True)),  # rank 1 holds no unit
    ]
    cfg = stats_module.StatsConfig(
        n_rows=n_rows, top_k=4, doc_cap=1, n_intervals=3, per_interval=2, n_random=5, left=2, right=1, chunk_windows=1
    )
    parts = stats_module.compute_unit_stats(store, bases, text, 11, cfg, world=here)
    gathered = here.gather_to_main(parts)
    if not here.is_main:
        return {}
    joined = [stats_module.join_unit_stats(list(p)) for p in zip(*gathered)]
    whole = stats_module.compute_unit_stats(store, bases, text, 11, cfg)

    def same(a, b) -> bool:
        if isinstance(a, GroupedBottomK):
            return all(same(getattr(a, k), getattr(b, k)) for k in ("key", "row", "doc", "value", "payload"))
        if sp.issparse(a):
            return a.shape == b.shape and (a != b).nnz == 0
        return np.array_equal(a, b, equal_nan=True) if isinstance(a, np.ndarray) else a == b

    return {
        "differ": [
            f"{w.name}.{f.name}"
            for j, w in zip(joined, whole)
            for f in fields(w)
            if not same(getattr(j, f.name), getattr(w, f.name))
        ],
        "part_units": [[p.n_units for p in parts] for parts in zip(*gathered)],
        "cofire_rows": [w.cofire_rows for w in whole],
        "cofire_pairs": [w.cofire_UU.nnz for w in whole],
        "n_rows": n_rows,
    }


def test_analysis_statistics_split_by_units_join_into_one_process_statistics(tmp_path):
    """Each of 2 ranks keeps the statistics of its range of every basis's units (7, 45 and 1 units: the
    ranges differ in length, one is empty); joined, every field equals one process's exactly, for a
    TopK encoder too, with the co-firing budget stopping at the same chunk as one process."""
    _stats_store(tmp_path / "store")
    result, _ = spawn_world(_unit_stats_split_and_whole, tmp_path / "store")
    assert result["differ"] == []
    assert result["part_units"] == [[4, 3], [23, 22], [1, 0]]
    assert result["cofire_rows"] == [result["n_rows"], 80, result["n_rows"]]  # TopK's budget ran out mid-way
    assert result["cofire_pairs"] == [49, 106, 1]


def _analysis_stage(here: World, run: Path, corpus: str) -> dict:
    from monosemantic import pipeline
    from monosemantic.config import load_config

    set_quiet(True)
    overrides = ["corpus.val_fraction=0.2", f"corpus.corpus={corpus}"]
    pipeline.run(load_config("tiny", overrides=overrides), run, "analysis", force=True)
    return json.loads((run / "run.json").read_text())["analysis"] if here.is_main else {}


def _store_tables(store: Path) -> dict[str, list[tuple]]:
    """Every table of a feature store, its rows in the order written."""
    import sqlite3

    with closing(sqlite3.connect(store)) as db:
        names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {name: db.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall() for name in names}


def test_analysis_by_2_ranks_writes_the_1_rank_feature_store(analysed_run, tmp_path):
    """Each rank computes the statistics of, and scores, its half of every basis's units (neurons and
    both SAEs); rank 0 joins them, and its store equals, table by table and row by row, the store one
    process wrote (floats within 1e-5)."""
    import shutil

    reference, cfg = analysed_run
    shutil.copytree(reference, tmp_path / "run")
    figures, _ = spawn_world(_analysis_stage, tmp_path / "run", cfg.corpus.corpus)
    assert figures["world_size"] == 2
    ours, theirs = _store_tables(tmp_path / "run/features.sqlite"), _store_tables(reference / "features.sqlite")
    assert ours.keys() == theirs.keys() and len(theirs["units"]) > 100
    for table, rows in theirs.items():
        assert len(ours[table]) == len(rows), table
        for mine, one in zip(ours[table], rows):
            assert mine == pytest.approx(one, rel=1e-5, abs=1e-6, nan_ok=True), (table, one)
