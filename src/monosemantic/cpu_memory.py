"""Keeping freed CPU memory inside the process while a training loop runs.

glibc's ``malloc`` takes a large block (over the mmap threshold: 128 KiB at first, rising with the
blocks freed, but never above 32 MiB) from a fresh ``mmap`` and gives it back with ``munmap`` when it
is freed, and returns a free heap top beyond the trim threshold to the system. A training step that
allocates the same large tensors every step (gradients, the ranking product, temporaries: ~260 MB
per step for a TopK SAE at d = 1,536, F = 6,144, batch 1,024) then pays a page fault and the
kernel's zeroing of every 4 KiB page of them, every step: 64,000 faults, 40 % of that step
(``benchmarks/sae_step_levers.py``). Inside ``retained_cpu_memory`` malloc takes no block from
``mmap`` and trims nothing, so after the first step the same pages serve every step (what CUDA's
caching allocator does on a GPU); on leaving it, glibc's defaults come back and the kept memory is
returned to the system (``malloc_trim``). The numbers computed are unchanged: only where memory
comes from changes. The price is fragmentation: freed blocks that do not fit the next request stay
in the process, ~20 % above the default's peak resident memory for that SAE over 40 steps.

Elsewhere than glibc, or when the user tuned malloc themselves (``GLIBC_TUNABLES`` naming
``glibc.malloc``), it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from contextlib import contextmanager
from typing import Iterator

# mallopt parameters and glibc's defaults for them (malloc/malloc.c)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_ALL = 2**31 - 1  # the largest trim threshold mallopt takes (an int)

_lock = threading.Lock()
_depth = 0  # nested or concurrent users: the last one out restores the defaults


def _glibc() -> ctypes.CDLL | None:
    """This process's C library, when it is glibc and the user has not tuned its malloc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    return ctypes.CDLL(None)


@contextmanager
def retained_cpu_memory() -> Iterator[bool]:
    """Within the block, freed CPU memory stays in the process for reuse (see the module
    docstring). Yields whether the allocator was changed (False: not glibc, or tuned by the user)."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
