"""Device choice: CPU by default, CUDA when asked for or when ``auto`` finds one; and the numerics
settings that go with the device (TF32 on CUDA, deterministic kernels for training on the CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from monosemantic.errors import UserError


def resolve_device(name: str = "cpu") -> torch.device:
    """Map ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` to a torch device, checking it exists
    here (before any stage runs, not when the first tensor lands on it)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: not a device name ({' '.join(str(err).split())})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: Apple MPS is not available on this machine (use cpu or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: not a device that can train (use cpu, cuda, mps or auto)")
    if device.type == "cuda":
        # TF32 matmuls (relative error ~3e-4): far below the noise of SAE and LM training, 5-8x faster
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


@contextmanager
def reproducible_kernels(device: torch.device | str) -> Iterator[None]:
    """On the CPU, torch's deterministic kernels for the duration (restored after). A few backward
    kernels otherwise sum float partials in whichever order their threads finish: an embedding's
    (a token repeated in the batch) and JumpReLU's. With 2 threads two identical backward passes
    of the demo LM gave W_E gradients ~1e-10 apart, and two demo runs of one seed ended at
    validation losses 4.2084 and 4.2072. Measured free (benchmarks/deterministic_kernels.py: the
    demo LM's step and the TopK, L1 and JumpReLU SAE steps within 0.92–1.05× either way). CUDA
    keeps its fast kernels; the same-numbers promise is the CPU's."""
    if torch.device(device).type != "cpu":
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
