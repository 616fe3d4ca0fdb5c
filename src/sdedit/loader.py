"""`load_model`: the one entry point that turns a name, file, folder or Hub id into a model of the right family.

This is the only place that decides which family a source is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .devices import Offload, offload_device, resolve_precision
from .errors import InputError, ModelUnavailableError
from .families.base import AUTOCAST_DTYPES, Model
from .families.pixel import load_diffusers_unet, load_original, recommended_t0
from .families.stable_diffusion import is_sd_folder, load_stable_diffusion
from .families.flux import is_flux_folder, load_flux
from .families.stable_diffusion_3 import is_sd3_folder, load_stable_diffusion_3
from .loading.checkpoints import WEIGHT_SUFFIXES, read_json
from .loading.lora import LoraSpec
from .loading.hub import hub_pipeline_snapshot, hub_snapshot, is_repo_id
from .loading.presets import BUNDLED_MODELS, PIPELINE_PRESETS, PRESETS, bundled_path
from .settings import DEFAULT_PRECISION, DEFAULT_T0, PRECISIONS

def load_model(source: str | os.PathLike[str], *, config: str | os.PathLike[str] | None = None,
               device: str | torch.device | None = None, precision: str = DEFAULT_PRECISION,
               loras: Sequence[LoraSpec | str] = (), offload: Offload = "none") -> Model:
    """Load a model by preset name, local checkpoint file, diffusers folder or Hub id; see README 'Models'.

    precision: 'auto' (bf16 autocast where the hardware runs it natively, else fp32), 'fp32', 'bf16' or 'fp16'.
    loras: LoRA files, folders or Hub ids, each with its scale ('path:0.7' or LoraSpec).
    offload: 'model' or 'sequential' keeps a latent model's networks in CPU memory and runs them on the (GPU)
    device, whole networks or layer by layer; at bf16/fp16 their weights (the VAE's aside) are stored in it.
    """
    specs = [s if isinstance(s, LoraSpec) else LoraSpec.parse(s) for s in loras]
    if offload == "none":
        model = _load(source, config, device)
        model.add_loras(specs)
        return model.optimize(precision=precision)
    run_on = offload_device(offload, device)  # checked before anything loads: an unknown mode, or no accelerator
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    model = _load(source, config, "cpu")
    model.add_loras(specs)
    model.offload(offload, run_on, AUTOCAST_DTYPES[resolve_precision(precision, run_on)])
    return model.optimize(precision=precision)


def _load(source: str | os.PathLike[str], config: str | os.PathLike[str] | None,
          device: str | torch.device | None) -> Model:
    """The family's loader for a source."""
    src = str(source)
    if src in BUNDLED_MODELS and not Path(src).exists():
        folder = bundled_path(src)
        if not (folder / "config.json").is_file():
            raise ModelUnavailableError(f"the bundled model {src!r} is missing from this installation ({folder})")
        return load_diffusers_unet(folder, device=device, name=src)
    if src in PIPELINE_PRESETS and not Path(src).exists():
        return _load(PIPELINE_PRESETS[src].repo_id, None, device)
    if src in PRESETS and not Path(src).exists():
        preset = PRESETS[src]
        return load_diffusers_unet(hub_snapshot(preset.repo_id, what=src), device=device, name=src, preset=preset)
    path = Path(src).expanduser()
    if path.is_dir():
        if is_flux_folder(path):
            return load_flux(path, device=device, name=src)
        if is_sd3_folder(path):
            return load_stable_diffusion_3(path, device=device, name=src)
        if is_sd_folder(path):
            return load_stable_diffusion(path, device=device, name=src)
        return load_diffusers_unet(path, device=device, name=src)
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise InputError(f"{path}: not a checkpoint (expected one of {', '.join(WEIGHT_SUFFIXES)})")
        if config is None:
            beside = [path.with_suffix(s) for s in (".yml", ".yaml")]
            config = next((c for c in beside if c.is_file()), None)
            if config is None:
                raise InputError(f"{path}: an original checkpoint needs --config (its YAML file or a preset name "
                                 f"such as 'church')")
        return load_original(path, config, device=device, name=src)
    if is_repo_id(src):
        pipeline = hub_pipeline_snapshot(src)
        if pipeline is not None and is_flux_folder(pipeline):
            return load_flux(pipeline, device=device, name=src)
        if pipeline is not None and is_sd3_folder(pipeline):
            return load_stable_diffusion_3(pipeline, device=device, name=src)
        if pipeline is not None:
            return load_stable_diffusion(pipeline, device=device, name=src)
        return load_diffusers_unet(hub_snapshot(src, what=src), device=device, name=src)
    raise InputError(f"no such model: {src!r} (not a preset, a file, a folder or a Hub id); "
                     f"presets: {', '.join(PRESETS)}")


def is_text_conditioned(source: str | os.PathLike[str]) -> bool:
    """Whether a local source is a text-conditioned model, judged from its files without loading it."""
    path = Path(source).expanduser()
    return is_sd_folder(path) or is_sd3_folder(path) or is_flux_folder(path)


def recommended_t0_of(source: str | os.PathLike[str]) -> float:
    """A source's recommended t0 read from its files without loading it (the default for other sources)."""
    src = str(source)
    folder = bundled_path(src) if src in BUNDLED_MODELS and not Path(src).exists() else Path(src).expanduser()
    config = folder / "config.json"
    if not folder.is_dir() or not config.is_file() or is_text_conditioned(folder):
        return DEFAULT_T0
    return recommended_t0(read_json(config), str(config))
