"""Device choice: CPU by default, CUDA when asked for or when ``auto`` finds one."""

from __future__ import annotations

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
