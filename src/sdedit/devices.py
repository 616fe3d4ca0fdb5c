"""Choosing the device a model runs on."""

from __future__ import annotations

import torch

from .errors import InputError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {str(device)!r} (use cpu, cuda, cuda:N, mps or auto)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} requested but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {str(device)!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {str(device)!r} requested but MPS is not available")
    return dev


