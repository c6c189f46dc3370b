"""Device choice: CPU by default, CUDA when asked for or when ``auto`` finds one."""

from __future__ import annotations

import torch

from monosemantic.errors import UserError


def resolve_device(name: str = "cpu") -> torch.device:
    """Map ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` to a torch device, checking it exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: not a device name ({err})") from None
