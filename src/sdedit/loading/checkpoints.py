"""Reading checkpoint files safely and strictly: never unpickling code, naming the file and tensor that is wrong.

Weights come from safetensors or torch.load(weights_only=True) only.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from safetensors import SafetensorError, safe_open

from ..errors import InputError
from ..files import printable

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")


def first_line(e: BaseException) -> str:
    """An exception's first line, short, without PyTorch's advice to unpickle code."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "weights_only" not in ln]
    return (lines[0] if lines else type(e).__name__)[:200]


LOAD_ERRORS = (pickle.UnpicklingError, SafetensorError, zipfile.BadZipFile, EOFError, RuntimeError, OSError,
                ValueError, UnicodeDecodeError, AttributeError, TypeError, KeyError, IndexError, MemoryError)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; InputError naming the file for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {printable(path)}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except LOAD_ERRORS as e:
        raise InputError(f"{printable(path)}: not a valid safetensors file (truncated or corrupt?): "
                         f"{first_line(e)}") from None


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header, without reading any tensor data."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except LOAD_ERRORS as e:
        raise InputError(f"{printable(path)}: not a valid safetensors file (truncated or corrupt?): "
                         f"{first_line(e)}") from None


def load_plain(path: str | Path) -> Any:
    """torch.load or safetensors without running pickled code; InputError for anything else."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    if not path.is_file():
        raise InputError(f"file not found: {printable(path)}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused below anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            raise InputError(f"{printable(path)}: holds pickled objects other than tensors; pickled code is refused "
                             f"and nothing in it was run") from None
        raise InputError(f"{printable(path)}: not a readable checkpoint (corrupt pickle): {first_line(e)}") from None
    except LOAD_ERRORS as e:
        raise InputError(f"{printable(path)}: not a readable checkpoint (truncated or corrupt?): "
                         f"{first_line(e)}") from None


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


def strict_load(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str, *, assign: bool = False) -> None:
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
    net.load_state_dict(state, strict=True, assign=assign)


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


# Limits on what a config may ask for, checked on the meta device before any memory is allocated.
DEFAULT_MAX_PARAMETERS = 40_000_000_000  # per network: FLUX.1 12B, Qwen-Image 20B, FLUX.2 dev 32B; above is refused
MAX_SAMPLE_SIZE = 4096  # a network's input side, in its own units


def _max_parameters() -> int:
    text = os.environ.get("SDEDIT_MAX_PARAMETERS", "")
    try:
        return int(float(text)) if text else DEFAULT_MAX_PARAMETERS
    except ValueError:
        raise InputError(f"SDEDIT_MAX_PARAMETERS must be a number, got {text!r}") from None


def check_sample_size(value: Any, source: str) -> int:
    """A config's sample_size: a whole number from 1 to MAX_SAMPLE_SIZE (a list takes its first side)."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SAMPLE_SIZE:
        raise InputError(f"{source}: sample_size must be a whole number from 1 to {MAX_SAMPLE_SIZE}, got {value!r}")
    return value


def plan_network(factory: Callable[[], nn.Module], source: str) -> nn.Module:
    """Build a network from its config on the meta device: no memory, config errors and size limits as InputError."""
    try:
        with torch.device("meta"):
            net = factory()
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError, RuntimeError,
            AssertionError, OverflowError) as e:
        raise InputError(f"{source}: not a valid network config: {first_line(e)}") from None
    check_parameter_count(sum(p.numel() for p in net.parameters()), source, "the config describes")
    return net


def plan_components(root: Path, parts: dict[str, Any]) -> None:
    """Each component folder's config built on the meta device before any weights load (diffusers classes through
    from_config, transformers classes through their config class): config errors and size limits as InputError."""
    for part, cls in parts.items():
        config_file = root / part / "config.json"
        cfg = read_json(config_file)
        if hasattr(cls, "from_config"):
            def factory(c: dict[str, Any] = cfg, k: Any = cls) -> nn.Module:
                return k.from_config({n: v for n, v in c.items() if not n.startswith("_")})
        else:
            def factory(c: dict[str, Any] = cfg, k: Any = cls) -> nn.Module:
                return k(k.config_class.from_dict(c))
        check_sample_size(cfg.get("sample_size", 64) or 64, str(config_file))
        plan_network(factory, str(config_file))


def check_parameter_count(count: int, source: str, what: str = "it holds") -> None:
    """InputError when a network or file has more parameters than SDEDIT_MAX_PARAMETERS allows."""
    limit = _max_parameters()
    if count > limit:
        raise InputError(f"{source}: {what} {count / 1e9:.1f} billion parameters, over the limit of "
                         f"{limit / 1e9:.1f} billion (set SDEDIT_MAX_PARAMETERS to allow more)")


def check_materialized(net: nn.Module, source: str) -> None:
    """InputError naming the first parameter or buffer that no tensor filled (still on the meta device)."""
    left = [n for n, t in (*net.named_parameters(), *net.named_buffers()) if t.is_meta]
    if left:
        raise InputError(f"{source}: no tensor for {left[0]!r}")


WEIGHT_ALIGNMENT = 64  # bytes; CPU kernels choose their code path (and so their rounding) by the weights' alignment


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """The tensor in storage of its own at an aligned address (a safetensors file's tensors may sit at any offset),
    so that the same weights give the same outputs however they were stored."""
    return t.clone() if t.data_ptr() % WEIGHT_ALIGNMENT else t


def materialize(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """A meta-device network with the checked tensors of a state dict as its own (strict; nothing else allocated)."""
    dtypes = {k: t.dtype for k, t in net.state_dict().items()}
    state = {k: _aligned(v.to(dtypes[k]) if k in dtypes and v.is_floating_point() else v) for k, v in state.items()}
    strict_load(net, state, source, assign=True)
    check_materialized(net, source)
    return net


def schedule_from(factory: Callable[[], Any], source: str | Path) -> Any:
    """A noise schedule from config values; bad values (types, ranges) as an InputError naming the source."""
    try:
        return factory()
    except (TypeError, ValueError, OverflowError) as e:
        raise InputError(f"{printable(source)}: bad scheduler settings: {first_line(e)}") from None
