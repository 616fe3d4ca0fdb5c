"""Reading checkpoint files safely and strictly: never unpickling code, naming the file and tensor that is wrong.

Weights come from safetensors or torch.load(weights_only=True) only.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import stat
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
    check_zip_sizes(path)
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


MAX_ZIP_EXPANSION = 10  # a zip checkpoint's members may hold at most this times the archive's size (tensors hardly
# compress: torch.save stores them uncompressed, and deflate shrinks float weights by a few per cent)
ZIP_SLACK_BYTES = 1 << 20  # and 1 MiB more, for tiny archives whose small members compress well


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_zip_sizes(path: Path) -> None:
    """InputError when a zip-format checkpoint's members would expand far beyond the file (a zip bomb), judged from
    the sizes in the archive's central directory before any member is read."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
        size = path.stat().st_size
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise InputError(f"{printable(path)}: not a readable checkpoint (corrupt zip archive): "
                         f"{first_line(e)}") from None
    total = sum(m.file_size for m in members)
    if total > MAX_ZIP_EXPANSION * size + ZIP_SLACK_BYTES:
        biggest = max(members, key=lambda m: m.file_size)
        raise InputError(f"{printable(path)}: its zip members expand to {_megabytes(total)} from a "
                         f"{_megabytes(size)} file (member {printable(biggest.filename)!r} alone "
                         f"{_megabytes(biggest.file_size)}), more than {MAX_ZIP_EXPANSION}x; refused before "
                         f"decompressing (checkpoint tensors hardly compress)")


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


MAX_CONFIG_BYTES = 16_000_000  # a model's config.json or model_index.json is a few KB


def read_regular(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of a regular file (a symlink to one is fine, as in the Hub cache) of at most limit bytes; InputError
    for a FIFO, device or folder (opened without blocking, so a FIFO cannot hang the load) or a larger file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        what = "is not a regular file" if e.errno in (errno.ENXIO, errno.EISDIR) else f"cannot be read: {e.strerror}"
        raise InputError(f"{printable(path)} {what}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{printable(path)} is not a regular file (a FIFO or device); refusing to read it")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise InputError(f"{printable(path)} cannot be read: {e.strerror}") from None
    if len(data) > limit:
        raise InputError(f"{printable(path)} is over {limit // 1_000_000} MB; not a config")
    return data


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a regular file of bounded size; InputError naming the file otherwise."""
    try:
        data = json.loads(read_regular(path))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"cannot read {printable(path)}: {first_line(e) if str(e) else 'nested too deeply'}") from None
    if not isinstance(data, dict):
        raise InputError(f"{printable(path)}: expected a JSON object")
    return data


MAX_FOLDER_ENTRIES = 10_000  # entries looked at in a model folder and its subfolders (a diffusers folder has ~30)


def check_regular_files(root: Path) -> None:
    """InputError naming the first FIFO, device or socket in a model folder or its component subfolders (opening one
    would hang or never end); links are followed, dangling ones are left to the loader to report."""
    seen = 0
    folders = [root]
    for depth in range(2):
        subfolders = []
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError as e:
                raise InputError(f"cannot list {printable(folder)}: {e.strerror}") from None
            for entry in entries:
                seen += 1
                if seen > MAX_FOLDER_ENTRIES:
                    return
                try:
                    mode = os.stat(entry.path).st_mode
                except OSError:
                    continue
                if stat.S_ISDIR(mode):
                    subfolders.append(Path(entry.path))
                elif not stat.S_ISREG(mode):
                    raise InputError(f"{printable(entry.path)} is not a regular file (a FIFO, device or socket); "
                                     f"a model folder holds only files and folders")
        folders = subfolders


def scheduler_config(root: Path) -> dict[str, Any]:
    for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if p.is_file():
            return read_json(p)
    return {}


# Limits on what a config may ask for, checked on the meta device before any memory is allocated.
DEFAULT_MAX_PARAMETERS = 40_000_000_000  # per network: FLUX.1 12B, Qwen-Image 20B, FLUX.2 dev 32B; above is refused
MAX_SAMPLE_SIZE = 4096  # a network's input side, in its own units
# One evaluation of a pixel network on one image at its sample size, in TFLOPs: the paper's 256 px DDPM networks and
# the 1024 px NCSN++ take about 0.5; a 64 px network configured for 1024 px, with attention over 65536 pixels, 6.3.
DEFAULT_MAX_TFLOPS = 2.0


def env_limit(name: str, default: float, *, whole: bool) -> float:
    """A positive limit from the environment variable name (a whole number if whole), else default; InputError for
    anything else (inf, nan, 0, -1, words)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or (whole and value != int(value)):
        kind, example = ("a positive whole number", f"{default:.0f}") if whole else ("a positive number", f"{default:g}")
        raise InputError(f"{name} must be {kind} (such as {example}), got {printable(text)[:40]!r}")
    return int(value) if whole else value


def _max_parameters() -> int:
    return int(env_limit("SDEDIT_MAX_PARAMETERS", DEFAULT_MAX_PARAMETERS, whole=True))


def check_compute(flops: float, source: str, what: str) -> None:
    """InputError when one network evaluation of one image costs more than SDEDIT_MAX_TFLOPS allows."""
    limit = env_limit("SDEDIT_MAX_TFLOPS", DEFAULT_MAX_TFLOPS, whole=False)
    if flops > limit * 1e12:
        raise InputError(f"{source}: {what} costs about {flops / 1e12:.1f} TFLOPs per step for each image, over the "
                         f"limit of {limit:g} (the paper's 256 px and 1024 px networks take about 0.5; set "
                         f"SDEDIT_MAX_TFLOPS to allow more)")


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
        check_weights_fit(plan_network(factory, str(config_file)), root / part, str(config_file))


def check_weights_fit(net: nn.Module, folder: Path, config: str) -> None:
    """InputError naming the first tensor of the folder's safetensors files whose shape differs from the one the
    config describes (read from the files' headers; keys are matched with or without a leading 'text_model.')."""
    target = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for weights in sorted(folder.glob("*.safetensors")):
        for key, shape in safetensors_shapes(weights).items():
            for name in (key, key.removeprefix("text_model."), f"text_model.{key}"):
                if name in target:
                    want = target[name]
                    if shape != want and [d for d in shape if d != 1] != [d for d in want if d != 1]:
                        raise InputError(f"{printable(weights)}: tensor {printable(key)!r} has shape {shape}, but "
                                         f"{printable(config)} describes {want}: the config and the weights disagree")
                    break


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
