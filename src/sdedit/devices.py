"""Choosing the device a model runs on."""

from __future__ import annotations

from typing import Literal

import torch

from .errors import InputError

Offload = Literal["none", "model", "sequential"]
OFFLOADS: tuple[Offload, ...] = ("none", "model", "sequential")  # diffusers' names: enable_model/sequential_cpu_offload


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


def native_bf16(device: torch.device) -> bool:
    """Whether the device runs bf16 matrix products natively: CUDA compute capability >= 8.0 (Ampere and later),
    or a CPU with AMX or AVX-512 BF16, detected at run time (CPUs differ between machines of one kind)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        if any(p is not None for p in probes):
            return any(bool(p()) for p in probes if p is not None)
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the hardware runs it natively, else 'fp32'; other names stay as they are."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"

def offload_device(offload: str, device: str | torch.device | None) -> torch.device:
    """The execution device of an offloaded model: the requested accelerator; the CPU is refused (nothing to save)."""
    if offload not in OFFLOADS:
        raise InputError(f"offload must be one of {', '.join(OFFLOADS)}, got {offload!r}")
    dev = pick_device(device)
    if offload != "none" and dev.type == "cpu":
        raise InputError(f"--offload {offload} keeps the networks in CPU memory and runs them on a GPU, "
                         f"but the device is the CPU{'' if torch.cuda.is_available() else ' (no CUDA device here)'}")
    return dev
