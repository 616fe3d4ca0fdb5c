"""Loading models: presets from the Hub cache, diffusers folders and original .ckpt files, safely and strictly.

Nothing here ever unpickles code: weights come from safetensors or torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .denoisers import EpsDenoiser, ScoreDenoiser
from .errors import InputError, ModelUnavailableError

if TYPE_CHECKING:
    from .latent import LatentModel
from .model import SDEModel
from .original import DDPMArch, convert_state_dict, read_config
from .presets import BUNDLED, PRESETS, Preset
from .schedules import DiscreteVPSchedule, VESchedule

_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but no CUDA device is available")
    return dev


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


def _strict_load(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
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


def _finish(unet: torch.nn.Module, schedule: DiscreteVPSchedule | VESchedule, resolution: int, name: str,
            info: dict[str, Any], device: str | torch.device | None) -> SDEModel:
    unet.eval().requires_grad_(False)
    dev = pick_device(device)
    if dev.type == "cpu":
        unet.to(memory_format=torch.channels_last)
    denoiser = EpsDenoiser(unet, schedule) if isinstance(schedule, DiscreteVPSchedule) else ScoreDenoiser(unet, schedule)
    info = {"family": schedule.kind, "params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3), **info}
    return SDEModel(denoiser, schedule, resolution, name, info).to(dev)


def load_original(path: str | Path, config: str | Path, *, device: str | torch.device | None = None,
                  name: str | None = None) -> SDEModel:
    """An original SDEdit / DDIM checkpoint with its YAML config (or a preset name for the architecture)."""
    from diffusers import UNet2DModel

    arch, schedule = _arch_for(config)
    state = read_state_dict(path)
    unet = UNet2DModel(**arch.unet_config())
    mapped = convert_state_dict(state, unet.state_dict(), len(arch.ch_mult), str(path))
    unet.load_state_dict(mapped, strict=True)
    return _finish(unet, schedule, arch.image_size, name or str(path), {"source": str(path), "format": "original"},
                   device)


def _arch_for(config: str | Path) -> tuple[DDPMArch, DiscreteVPSchedule]:
    if str(config) in PRESETS:
        preset = PRESETS[str(config)]
        if preset.arch is None:
            raise InputError(f"preset {preset.name!r} is an NCSN++ model; original .ckpt files are DDPM networks")
        return preset.arch, DiscreteVPSchedule()
    if not Path(config).is_file():
        raise InputError(f"config not found: {config} (give a released YAML config or one of: "
                         f"{', '.join(n for n, p in PRESETS.items() if p.arch)})")
    return read_config(config)


def load_diffusers(folder: str | Path, *, device: str | torch.device | None = None, name: str | None = None,
                   preset: Preset | None = None) -> SDEModel:
    """A diffusers-format unconditional UNet2DModel folder (DDPM epsilon or NCSN++ score network)."""
    from diffusers import UNet2DModel

    root = Path(folder)
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    cfg = _read_json(unet_dir / "config.json")
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise InputError(f"{root}: a {cfg.get('_class_name')} is not an unconditional UNet2DModel")
    weights = next((unet_dir / f"diffusion_pytorch_model{s}" for s in (".safetensors", ".bin")
                    if (unet_dir / f"diffusion_pytorch_model{s}").is_file()), None)
    if weights is None:
        raise InputError(f"{root}: no diffusion_pytorch_model.safetensors or .bin in {unet_dir}")
    try:
        unet = UNet2DModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    except (TypeError, ValueError) as e:
        raise InputError(f"{unet_dir / 'config.json'}: not a valid UNet2DModel config: {e}") from None
    _strict_load(unet, read_state_dict(weights), str(weights))
    sched = _scheduler_config(root)
    size = cfg.get("sample_size") or (preset.resolution if preset else None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    if size is None:
        raise InputError(f"{unet_dir / 'config.json'}: no sample_size given")
    if cfg.get("time_embedding_type") == "fourier":
        sigma_max = sched.get("sigma_max", preset.sigma_max if preset else None)
        if sigma_max is None:
            raise InputError(f"{root}: an NCSN++ score model needs scheduler_config.json with sigma_max")
        schedule: DiscreteVPSchedule | VESchedule = VESchedule(float(sched.get("sigma_min", 0.01)), float(sigma_max), 1.0)
    else:
        if sched.get("prediction_type", "epsilon") != "epsilon":
            raise InputError(f"{root}: prediction_type {sched['prediction_type']!r} is not supported (epsilon only)")
        schedule = DiscreteVPSchedule(float(sched.get("beta_start", 1e-4)), float(sched.get("beta_end", 0.02)),
                                      int(sched.get("num_train_timesteps", 1000)),
                                      str(sched.get("beta_schedule", "linear")))
    return _finish(unet, schedule, int(size), name or str(folder), {"source": str(folder), "format": "diffusers"},
                   device)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _scheduler_config(root: Path) -> dict[str, Any]:
    for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if p.is_file():
            return _read_json(p)
    return {}


def hub_snapshot(repo_id: str, *, what: str) -> Path:
    """Download (or find in huggingface_hub's cache) the files of a diffusers UNet2DModel repo; its local folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    def fetch(*names: str) -> Path | None:
        # The first of the alternatives that exists; offline, one that is cached.
        unreachable: LocalEntryNotFoundError | None = None
        for n in names:
            try:
                return Path(hf_hub_download(repo_id, n))
            except LocalEntryNotFoundError as e:
                unreachable = e
            except EntryNotFoundError:
                continue
        if unreachable is not None:
            raise unreachable
        return None

    try:
        config = fetch("unet/config.json", "config.json")
        if config is None:
            raise InputError(f"{what}: {repo_id} has no UNet2DModel config.json")
        sub = "unet/" if config.parent.name == "unet" else ""
        fetch(f"{sub}diffusion_pytorch_model.safetensors", f"{sub}diffusion_pytorch_model.bin")
        fetch("scheduler/scheduler_config.json", "scheduler_config.json")
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(
            f"{what} ({repo_id}) is not in the Hugging Face cache and the Hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if os.environ.get('HF_HUB_OFFLINE') else ''}; "
            f"run `sdedit download {what}` once with network access, or use a local checkpoint (sdedit: --model PATH, main.py: --ckpt PATH)"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(f"{what}: no such model repository on the Hub: {repo_id}") from None
    return config.parent.parent if sub else config.parent


PIPELINE_FILES = ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                  "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                  "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
                  "tokenizer/*"]


def hub_pipeline_snapshot(repo_id: str) -> Path | None:
    """The local folder of a Stable Diffusion-style Hub repo (safetensors weights only), or None if it is not one."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        hf_hub_download(repo_id, "model_index.json")
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError):
        return None  # not a pipeline, or unreachable: hub_snapshot reports which
    return Path(snapshot_download(repo_id, allow_patterns=PIPELINE_FILES))


def is_cached(repo_id: str) -> bool:
    """Whether a repo's UNet config is in huggingface_hub's cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, n), str) for n in ("unet/config.json", "config.json"))


def bundled_path(name: str) -> Path:
    """Folder of a model that ships inside the package."""
    from importlib import resources

    return Path(str(resources.files("sdedit") / "models" / name))


def load_model(source: str | os.PathLike[str], *, config: str | os.PathLike[str] | None = None,
               device: str | torch.device | None = None) -> SDEModel | LatentModel:
    """Load a model by preset name, local checkpoint file, diffusers folder or Hub id; see README 'Models'."""
    src = str(source)
    if src in BUNDLED and not Path(src).exists():
        folder = bundled_path(src)
        if not (folder / "config.json").is_file():
            raise ModelUnavailableError(f"the bundled model {src!r} is missing from this installation ({folder})")
        return load_diffusers(folder, device=device, name=src)
    if src in PRESETS and not Path(src).exists():
        preset = PRESETS[src]
        return load_diffusers(hub_snapshot(preset.repo_id, what=src), device=device, name=src, preset=preset)
    path = Path(src).expanduser()
    if path.is_dir():
        from .latent import is_latent_folder, load_latent

        if is_latent_folder(path):
            return load_latent(path, device=device, name=src)
        return load_diffusers(path, device=device, name=src)
    if path.is_file():
        if path.suffix not in _WEIGHT_SUFFIXES:
            raise InputError(f"{path}: not a checkpoint (expected one of {', '.join(_WEIGHT_SUFFIXES)})")
        if config is None:
            beside = [path.with_suffix(s) for s in (".yml", ".yaml")]
            config = next((c for c in beside if c.is_file()), None)
            if config is None:
                raise InputError(f"{path}: an original checkpoint needs --config (its YAML file or a preset name "
                                 f"such as 'church')")
        return load_original(path, config, device=device, name=src)
    if _HUB_ID.match(src) and not src.startswith((".", "/")):
        pipeline = hub_pipeline_snapshot(src)
        if pipeline is not None:
            from .latent import load_latent

            return load_latent(pipeline, device=device, name=src)
        return load_diffusers(hub_snapshot(src, what=src), device=device, name=src)
    raise InputError(f"no such model: {src!r} (not a preset, a file, a folder or a Hub id); "
                     f"presets: {', '.join(PRESETS)}")
