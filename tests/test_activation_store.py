"""The activation store: round-trips, origins, shuffled reading, memory bound, and bad input."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from monosemantic.activations import ORIGIN_COLUMNS, ActivationStore, ActivationWriter
from monosemantic.errors import UserError

HOOK = "blocks.0.mlp.hook_post"


def write_store(path: Path, n_rows: int, d_in: int, *, dtype="float32", rows_per_shard=7, chunk=10, seed=0):
    """A store whose row i has acts[i, 0] == i (so shuffled batches can be traced back); returns its data."""
    rng = np.random.default_rng(seed)
    acts_ND = rng.standard_normal((n_rows, d_in)).astype(np.float32)
    acts_ND[:, 0] = np.arange(n_rows)
    token_N, doc_N = rng.integers(0, 50_000, n_rows), np.arange(n_rows) // 5
    pos_N, source_N = np.arange(n_rows) % 5, np.arange(n_rows) // 20
    with ActivationWriter(path, d_in, HOOK, dtype=dtype, rows_per_shard=rows_per_shard, meta={"model": "A"}) as w:
        for s in range(0, n_rows, chunk):
            w.append(
                acts_ND[s : s + chunk],
                token_N[s : s + chunk],
                doc_N[s : s + chunk],
                pos_N[s : s + chunk],
                source_N[s : s + chunk],
            )
    return acts_ND, {"token": token_N, "doc": doc_N, "pos": pos_N, "source_shard": source_N}


def row_ids(batch_BD: torch.Tensor) -> np.ndarray:
    return batch_BD[:, 0].numpy().astype(np.int64)


def test_round_trip_across_shards(tmp_path):
    acts_ND, origin = write_store(tmp_path / "s", 53, 6)
    store = ActivationStore(tmp_path / "s")
    assert (len(store), store.d_in, store.hook_name, store.meta) == (53, 6, HOOK, {"model": "A"})
    assert store.n_shards == 8 and store.shard_rows.tolist() == [7] * 7 + [4]
    manifest = json.loads((tmp_path / "s" / "store.json").read_text())
    assert manifest["shards"][0] == {
        "acts": "acts_00000.bin",
        "origin": "origin_00000.bin",
        "rows": 7,
        "acts_bytes": 7 * 6 * 4,
        "origin_bytes": 7 * 4 * 8,
    }
    idx_N = np.array([52, 0, 7, 6, 30, 30, 13])
    rows_ND = store.rows(idx_N)
    assert rows_ND.dtype == torch.float32 and torch.equal(rows_ND, torch.from_numpy(acts_ND[idx_N]))
    got = store.origin(idx_N)
    assert list(got) == list(ORIGIN_COLUMNS)
    for name in ORIGIN_COLUMNS:
        np.testing.assert_array_equal(got[name], origin[name][idx_N])
    chunks = list(store.iter_chunks(10))
    assert [start for start, _ in chunks] == [0, 10, 20, 30, 40, 50] and len(chunks[-1][1]) == 3
    assert torch.equal(torch.cat([c for _, c in chunks]), torch.from_numpy(acts_ND))
    parts = [list(store.iter_chunks(10, part=(r, 3))) for r in range(3)]  # rows [0, 17), [17, 35), [35, 53)
    assert [[start for start, _ in part] for part in parts] == [[0, 10], [17, 27], [35, 45]]
    assert torch.equal(torch.cat([c for part in parts for _, c in part]), torch.from_numpy(acts_ND))
    torch.testing.assert_close(store.mean(chunk_rows=9), torch.from_numpy(acts_ND.astype(np.float64).mean(0)).float())


def test_float16_and_torch_input(tmp_path):
    acts_ND = torch.randn(30, 4, dtype=torch.bfloat16)
    with ActivationWriter(tmp_path / "h", 4, HOOK, dtype="float16", rows_per_shard=100) as w:
        w.append(acts_ND, np.zeros(30), np.zeros(30), np.arange(30), np.zeros(30))
    store = ActivationStore(tmp_path / "h")
    assert (tmp_path / "h" / "acts_00000.bin").stat().st_size == 30 * 4 * 2
    assert torch.equal(store.rows(np.arange(30)), acts_ND.float().half().float())
    assert next(store.shuffled_batches(8, seed=0)).dtype == torch.float32


@pytest.mark.parametrize("buffer_rows", [1000, 64])  # whole store in RAM; streamed in groups of blocks
def test_every_row_exactly_once_per_epoch(tmp_path, buffer_rows):
    write_store(tmp_path / "s", 300, 3, rows_per_shard=37)
    store = ActivationStore(tmp_path / "s")
    one_epoch = list(store.shuffled_batches(32, seed=1, buffer_rows=buffer_rows))
    assert [len(b) for b in one_epoch] == [32] * 9 + [12]
    ids = np.concatenate([row_ids(b) for b in one_epoch])
    assert sorted(ids) == list(range(300)) and not np.array_equal(ids, np.arange(300))
    stream = np.concatenate(
        [row_ids(b) for b in store.shuffled_batches(32, seed=1, buffer_rows=buffer_rows, n_batches=30)]
    )
    assert len(stream) == 960
    epochs = [stream[e * 300 : (e + 1) * 300] for e in range(3)]
    assert all(sorted(e) == list(range(300)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # each epoch has its own order
    assert sorted(stream[900:]) == sorted(set(stream[900:]))


def test_same_seed_same_batches(tmp_path):
    write_store(tmp_path / "s", 500, 3, rows_per_shard=64)
    store = ActivationStore(tmp_path / "s")

    def stream(seed):
        return np.concatenate([row_ids(b) for b in store.shuffled_batches(50, seed, buffer_rows=100, n_batches=25)])

    assert np.array_equal(stream(3), stream(3))
    assert not np.array_equal(stream(3), stream(4))


def test_streamed_batches_mix_the_whole_store(tmp_path):
    write_store(tmp_path / "s", 20_000, 2, rows_per_shard=3000, chunk=5000)
    store = ActivationStore(tmp_path / "s")
    batch = row_ids(next(store.shuffled_batches(256, seed=0, buffer_rows=2560)))  # groups of 256 blocks of 10 rows
    assert len(np.unique(batch // 10)) > 150  # rows come from many distinct blocks…
    assert batch.max() - batch.min() > 15_000  # …spread over the whole store


def test_memory_bounded_by_buffer(tmp_path):
    write_store(tmp_path / "s", 40_000, 64, rows_per_shard=10_000, chunk=10_000)  # 10 MB of activations
    store = ActivationStore(tmp_path / "s")
    tracemalloc.start()
    try:
        n = sum(len(b) for b in store.shuffled_batches(100, seed=0, buffer_rows=1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 40_000
    assert peak < 4 * 1024 * 64 * 4  # two buffers of 256 KB, batches and permutations — not the 10 MB store


def test_stopping_early_ends_the_reader_thread(tmp_path):
    write_store(tmp_path / "s", 2000, 2, rows_per_shard=500, chunk=500)
    store = ActivationStore(tmp_path / "s")
    batches = store.shuffled_batches(10, seed=0, buffer_rows=100, n_batches=1000, device="cpu")
    next(batches)
    assert any(t.name == "activation-reader" for t in threading.enumerate())
    batches.close()
    assert not any(t.name == "activation-reader" for t in threading.enumerate())


@pytest.mark.parametrize(
    "acts, origin_len, message",
    [
        (np.zeros((4, 5)), 4, r"shape \(4, 5\), expected \[N, 6\]"),
        (np.full((4, 6), np.nan), 4, "4 of 4 rows hold NaN/inf"),
        (np.array([[0, 0, 0, 0, 0, np.inf]] + [[0] * 6] * 3), 4, "1 of 4 rows hold NaN/inf"),
        (np.zeros((4, 6)), 3, r"origin 'token': shape \(3,\), expected \(4,\)"),
    ],
)
def test_bad_appends_leave_nothing(tmp_path, acts, origin_len, message):
    with pytest.raises(UserError, match=message):
        with ActivationWriter(tmp_path / "s", 6, HOOK) as w:
            w.append(np.zeros((3, 6)), *[np.zeros(3)] * 4)
            w.append(acts, np.zeros(origin_len), *[np.zeros(4)] * 3)
    assert list(tmp_path.iterdir()) == []


def test_float16_overflow_is_rejected(tmp_path):
    with pytest.raises(UserError, match="after rounding to float16"):
        with ActivationWriter(tmp_path / "s", 2, HOOK, dtype="float16") as w:
            w.append(np.array([[1e6, 0.0]]), *[np.zeros(1)] * 4)


def test_failure_keeps_the_old_store_and_empty_store_is_an_error(tmp_path):
    write_store(tmp_path / "s", 20, 3)
    with pytest.raises(RuntimeError, match="harvest crashed"):
        with ActivationWriter(tmp_path / "s", 3, HOOK) as w:
            w.append(np.ones((5, 3)), *[np.zeros(5)] * 4)
            raise RuntimeError("harvest crashed")
    assert len(ActivationStore(tmp_path / "s")) == 20
    with pytest.raises(UserError, match="no activations were recorded"):
        with ActivationWriter(tmp_path / "empty", 3, HOOK):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_bad_stores_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        ActivationStore(tmp_path / "missing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="not an activation store"):
        ActivationStore(tmp_path / "foreign")
    (tmp_path / "foreign" / "store.json").write_text('{"format": "something-else/2"}')
    with pytest.raises(UserError, match="format 'something-else/2'"):
        ActivationStore(tmp_path / "foreign")

    write_store(tmp_path / "s", 20, 3)
    acts = tmp_path / "s" / "acts_00001.bin"
    acts.write_bytes(acts.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"acts_00001.bin has 79 bytes, expected 84 \(truncated"):
        ActivationStore(tmp_path / "s")
    acts.unlink()
    with pytest.raises(UserError, match="acts_00001.bin is missing"):
        ActivationStore(tmp_path / "s")
    manifest = tmp_path / "s" / "store.json"
    manifest.write_text(manifest.read_text().replace('"n_rows": 20', '"n_rows": 21'))
    with pytest.raises(UserError, match="malformed"):
        ActivationStore(tmp_path / "s")


def test_bad_reader_options(tmp_path):
    write_store(tmp_path / "s", 20, 3)
    store = ActivationStore(tmp_path / "s")
    with pytest.raises(UserError, match="batch_size=0"):
        next(store.shuffled_batches(0, seed=0))
    with pytest.raises(UserError, match="d_in=0"):
        ActivationWriter(tmp_path / "x", 0, HOOK)
    with pytest.raises(UserError, match="dtype 'bfloat16'"):
        ActivationWriter(tmp_path / "x", 3, HOOK, dtype="bfloat16")
    with pytest.raises(IndexError):
        store.rows(np.array([20]))


@pytest.mark.parametrize("buffer_rows", [1000, 64])
def test_accelerator_path_gathers_on_the_device(tmp_path, buffer_rows):
    # No GPU in tests: the "meta" device runs the copy-group-then-gather-there path, shapes only.
    write_store(tmp_path / "s", 300, 3, dtype="float16", rows_per_shard=37)
    store = ActivationStore(tmp_path / "s")
    batches = list(store.shuffled_batches(32, seed=0, buffer_rows=buffer_rows, device="meta"))
    assert [tuple(b.shape) for b in batches] == [(32, 3)] * 9 + [(12, 3)]
    assert all(b.device.type == "meta" and b.dtype == torch.float32 for b in batches)


@pytest.mark.parametrize("buffer_rows", [1000, 64])
def test_start_batch_resumes_the_same_stream_without_reading_skipped_groups(tmp_path, buffer_rows):
    write_store(tmp_path / "s", 300, 3, rows_per_shard=37)
    store = ActivationStore(tmp_path / "s")
    full = [row_ids(b) for b in store.shuffled_batches(32, seed=5, buffer_rows=buffer_rows, n_batches=30)]
    for start in (1, 9, 12, 29):  # 12 batches = 384 rows: into the second epoch
        resumed = list(store.shuffled_batches(32, seed=5, buffer_rows=buffer_rows, n_batches=30, start_batch=start))
        assert len(resumed) == 30 - start
        assert all(np.array_equal(a, row_ids(b)) for a, b in zip(full[start:], resumed))
    epoch = [row_ids(b) for b in store.shuffled_batches(32, seed=5, buffer_rows=buffer_rows)]
    tail = [row_ids(b) for b in store.shuffled_batches(32, seed=5, buffer_rows=buffer_rows, start_batch=8)]
    assert [len(t) for t in tail] == [32, 12] and all(np.array_equal(a, b) for a, b in zip(epoch[8:], tail))

    read = []
    original = store.read_range
    store.read_range = lambda start, stop, out=None: read.append(stop - start) or original(start, stop, out)
    list(store.shuffled_batches(32, seed=5, buffer_rows=buffer_rows, n_batches=13, start_batch=12))
    assert sum(read) == 300 if buffer_rows == 1000 else sum(read) <= 2 * 64  # not the 384 rows skipped


@pytest.mark.parametrize("buffer_rows", [1000, 64])
def test_each_rank_reads_its_part_of_the_same_batches(tmp_path, buffer_rows):
    """``part=(r, N)``: rank r gets rows [r·B/N, (r+1)·B/N) of each batch of the one-process stream;
    streaming in groups, the N ranks together read each row of an epoch from disk once."""
    write_store(tmp_path / "s", 300, 3, rows_per_shard=37)
    store = ActivationStore(tmp_path / "s")
    for start in (0, 3):
        whole = list(store.shuffled_batches(32, seed=5, buffer_rows=buffer_rows, n_batches=30, start_batch=start))
        for size in (2, 4):
            parts = [
                list(store.shuffled_batches(32, 5, buffer_rows, n_batches=30, start_batch=start, part=(rank, size)))
                for rank in range(size)
            ]
            assert all(len(p) == 30 - start and all(b.shape == (32 // size, 3) for b in p) for p in parts)
            for b, batch_BD in enumerate(whole):
                assert torch.equal(torch.cat([p[b] for p in parts]), batch_BD)
    read: list[int] = []
    store.read_range = lambda start, stop, out=None, original=store.read_range: (
        read.append(stop - start) or original(start, stop, out)
    )
    store.read_rows = lambda idx, out=None, original=store.read_rows: read.append(len(idx)) or original(idx, out)
    for rank in range(4):  # one epoch (a prefetching reader may read past a given n_batches)
        list(store.shuffled_batches(32, 5, buffer_rows, part=(rank, 4)))
    assert sum(read) == (300 if buffer_rows == 64 else 4 * 300)  # a store within the buffer is read whole
    with pytest.raises(UserError, match="batch_size=32: cannot be split into part 0 of 3"):
        next(store.shuffled_batches(32, 5, part=(0, 3)))
