"""Freed CPU memory kept in the process during training: large blocks from the heap, kept for
reuse, and glibc's defaults back afterwards."""

from __future__ import annotations

import contextlib
import ctypes
import platform

import pytest
import torch

import monosemantic.sae.trainer as trainer
from monosemantic.cpu_memory import retained_cpu_memory
from monosemantic.progress import set_quiet
from monosemantic.sae import SAEConfig, train_sae

set_quiet(True)

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _mmapped_mb_with_a_64mb_tensor() -> float:
    """MB that malloc holds in ``mmap``-ed blocks while a 64 MB tensor is alive."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    held = torch.ones(16 * 2**20)
    mb = libc.mallinfo2().hblkhd / 2**20
    del held
    return mb


@pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc ≥ 2.33's malloc")
def test_large_blocks_come_from_the_kept_heap_inside_and_from_mmap_after(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with retained_cpu_memory() as changed:
        with retained_cpu_memory():  # nested: leaving the inner block keeps the outer one's setting
            pass
        inside = _mmapped_mb_with_a_64mb_tensor()
    outside = _mmapped_mb_with_a_64mb_tensor()
    assert changed
    assert inside < 64 <= outside


def test_a_user_tuned_or_foreign_malloc_is_left_alone(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    with retained_cpu_memory() as changed:
        assert not changed
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", ""))
    monkeypatch.delenv("GLIBC_TUNABLES")
    with retained_cpu_memory() as changed:
        assert not changed


def test_training_with_memory_kept_gives_the_same_sae(monkeypatch):
    """The trainer keeps freed memory on CPU; the SAE it trains is bit-identical to one trained
    with glibc's defaults (what the memory holds is never read before it is written)."""
    cfg = SAEConfig(variant="topk", d_in=16, d_sae=64, k=4, n_samples=128 * 10, batch_size=128, seed=3)
    rows = torch.randn(128 * 10, 16, generator=torch.Generator().manual_seed(0)).relu()
    entered = []

    def recording():
        entered.append(True)
        return retained_cpu_memory()

    monkeypatch.setattr(trainer, "retained_cpu_memory", recording)
    kept = train_sae(cfg, rows.split(128), rows[:512]).sae
    monkeypatch.setattr(trainer, "retained_cpu_memory", contextlib.nullcontext)
    default = train_sae(cfg, rows.split(128), rows[:512]).sae
    assert entered == [True]
    for name, tensor in kept.state_dict().items():
        assert torch.equal(tensor, default.state_dict()[name]), name
