"""Reading checkpoint files safely and strictly: never unpickling code, naming the file and tensor that is wrong.

Weights come from safetensors or torch.load(weights_only=True) only.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import InputError

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")


def load_plain(path: str | Path) -> Any:
    """torch.load or safetensors without running pickled code; InputError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused below anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, zipfile.BadZipFile, EOFError, RuntimeError, OSError,
            ValueError, UnicodeDecodeError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a plain tensor file (pickled code is refused): {first[:200]}") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never running pickled code; wrappers (DDIM's list, 'state_dict', 'module.') removed."""
    return _unwrap(load_plain(path), Path(path))


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside the containers training scripts save."""
    if isinstance(obj, (list, tuple)) and obj:
        # DDIM's ckpt.pth: [model, optimizer, epoch, step, ema]; prefer the EMA weights.
        obj = obj[4] if len(obj) >= 5 and isinstance(obj[4], dict) else obj[0]
    if isinstance(obj, dict):
        for key in ("ema", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: no state dict of tensors found in this file")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def strict_load(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with an error naming the first bad tensor."""
    target = net.state_dict()
    for key, value in state.items():
        if key not in target:
            raise InputError(f"{source}: unexpected tensor {key!r} (not part of the configured network)")
        if tuple(value.shape) != tuple(target[key].shape):
            raise InputError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, "
                             f"the configured network needs {tuple(target[key].shape)}")
    missing = [k for k in target if k not in state]
    if missing:
        raise InputError(f"{source}: missing {len(missing)} tensor(s), first {missing[0]!r}")
    net.load_state_dict(state, strict=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def scheduler_config(root: Path) -> dict[str, Any]:
    for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if p.is_file():
            return read_json(p)
    return {}


