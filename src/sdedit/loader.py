"""`load_model`: the one entry point that turns a name, file, folder or Hub id into a model of the right family.

This is the only place that decides which family a source is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .devices import Offload, offload_device
from .errors import InputError, ModelUnavailableError
from .families.base import Model
from .families.pixel import load_diffusers_unet, load_original, recommended_t0
from .families.stable_diffusion import is_sd_folder, load_stable_diffusion
from .families.flux import is_flux_folder, load_flux
from .families.flux_kontext import is_flux_kontext_folder, load_flux_kontext
from .families.stable_diffusion_3 import is_sd3_folder, load_stable_diffusion_3
from .families.qwen_image import is_qwen_image_folder, load_qwen_image
from .files import printable
from .loading.checkpoints import WEIGHT_SUFFIXES, check_parameter_count, check_regular_files, read_json, \
    safetensors_shapes
from .loading.single_file import check_parts, ldm_version
from .loading.lora import LoraSpec, check_lora_files
from .loading.controlnets import ControlSpec, load_controlnet
from .loading.ip_adapter import IPAdapterSpec, add_ip_adapters
from .families.control import FULL_WINDOW, AttachedControl, check_window
from .loading.hub import hub_config_snapshot, hub_pipeline_snapshot, hub_snapshot, is_repo_id
from .loading.presets import BUNDLED_MODELS, PIPELINE_PRESETS, PRESETS, bundled_path
from .precision import autocast_dtype, offload_storage
from .settings import DEFAULT_PRECISION, DEFAULT_T0, PRECISIONS

def load_model(source: str | os.PathLike[str], *, config: str | os.PathLike[str] | None = None,
               device: str | torch.device | None = None, precision: str = DEFAULT_PRECISION,
               loras: Sequence[LoraSpec | str] = (), offload: Offload = "none",
               controlnets: Sequence[ControlSpec | str] = (), control_window: tuple[float, float] = FULL_WINDOW,
               ip_adapters: Sequence[IPAdapterSpec] = ()) -> Model:
    """Load a model by preset name, local checkpoint file, diffusers folder or Hub id; see README 'Models'.

    precision: the default of the model's runs (a run's own setting wins): 'auto' (the faster of fp32 and bf16,
    measured once per machine, network and shape; sdedit.precision), 'fp32', 'bf16' or 'fp16'.
    loras: LoRA files, folders or Hub ids, each with its scale ('path:0.7' or LoraSpec).
    controlnets: ControlNet folders, Hub ids, single files or control presets, each with its scale ('path:0.5' or
    ControlSpec), run beside the main network between the times control_window = (start, end) of its schedule.
    ip_adapters: IP-Adapters (SD 1.x/2.x, SDXL), each a .safetensors file with image_encoder/ beside it or a preset,
    its scale and its reference image (IPAdapterSpec); the references are embedded once, here.
    offload: 'model' or 'sequential' keeps a latent model's networks in CPU memory and runs them on the (GPU)
    device, whole networks or layer by layer; at bf16/fp16 their weights (the VAE's aside) are stored in it.
    """
    specs = [s if isinstance(s, LoraSpec) else LoraSpec.parse(s) for s in loras]
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_lora_files(specs)  # a missing or unreadable LoRA is reported before the model loads
    controls = [s if isinstance(s, ControlSpec) else ControlSpec.parse(s) for s in controlnets]
    start, end = check_window(*control_window)
    if offload == "none":
        model = _load(source, config, device)
        model.add_loras(specs)
        _add_controlnets(model, controls, start, end, model.device)
        add_ip_adapters(model, list(ip_adapters))
    else:
        run_on = offload_device(offload, device)  # checked before anything loads: an unknown mode, or no accelerator
        model = _load(source, config, "cpu")
        model.add_loras(specs)
        _add_controlnets(model, controls, start, end, torch.device("cpu"))
        add_ip_adapters(model, list(ip_adapters))
        model.offload(offload, run_on, autocast_dtype(offload_storage(precision, run_on)))
    model.info["precision"] = precision
    return model


def _add_controlnets(model: Model, specs: list[ControlSpec], start: float, end: float, device: torch.device) -> None:
    """Load each ControlNet (after the model, so a model that takes none is refused first) onto the model's device."""
    if not specs:
        return
    if not model.takes_controlnets:  # refused before any ControlNet loads
        raise InputError(f"{model.name} is a {model.info.get('family', 'pixel')} model: ControlNets run with Stable "
                         f"Diffusion 1.x/2.x, SDXL, SD3 and FLUX.1 dev/schnell models")
    attached = []
    for spec in specs:
        net, kind = load_controlnet(spec)
        attached.append(AttachedControl(net.to(device), spec, kind, start, end))
    model.add_controlnets(attached)
    if (start, end) != FULL_WINDOW:
        model.info["control_window"] = [start, end]


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
        check_regular_files(path)  # a FIFO or device among its files would hang the load
        if is_flux_kontext_folder(path):
            return load_flux_kontext(path, device=device, name=src)
        if is_flux_folder(path):
            return load_flux(path, device=device, name=src)
        if is_qwen_image_folder(path):
            return load_qwen_image(path, device=device, name=src)
        if is_sd3_folder(path):
            return load_stable_diffusion_3(path, device=device, name=src)
        if is_sd_folder(path):
            return load_stable_diffusion(path, device=device, name=src)
        return load_diffusers_unet(path, device=device, name=src)
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise InputError(f"{path}: not a checkpoint (expected one of {', '.join(WEIGHT_SUFFIXES)})")
        family = _single_file_family(path) if path.suffix == ".safetensors" else "ddpm"
        if family != "ddpm":
            return _load_single_file(path, family, config, device, src)
        if path.suffix != ".safetensors" and config is not None and _is_pipeline_config(config):
            raise InputError(f"{path}: Stable Diffusion single-file checkpoints are read from .safetensors only "
                             f"(a {path.suffix} file is a pickle, which can run code)")
        if config is None:
            beside = [path.with_suffix(s) for s in (".yml", ".yaml")]
            config = next((c for c in beside if c.is_file()), None)
            if config is None:
                raise InputError(f"{path}: an original checkpoint needs --config (its YAML file or a preset name "
                                 f"such as 'church')")
        return load_original(path, config, device=device, name=src)
    if is_repo_id(src):
        pipeline = hub_pipeline_snapshot(src)
        if pipeline is not None and is_flux_kontext_folder(pipeline):
            return load_flux_kontext(pipeline, device=device, name=src)
        if pipeline is not None and is_flux_folder(pipeline):
            return load_flux(pipeline, device=device, name=src)
        if pipeline is not None and is_qwen_image_folder(pipeline):
            return load_qwen_image(pipeline, device=device, name=src)
        if pipeline is not None and is_sd3_folder(pipeline):
            return load_stable_diffusion_3(pipeline, device=device, name=src)
        if pipeline is not None:
            return load_stable_diffusion(pipeline, device=device, name=src)
        return load_diffusers_unet(hub_snapshot(src, what=src), device=device, name=src)
    raise InputError(f"no such model: {src!r} (not a preset, a file, a folder or a Hub id); "
                     f"presets: {', '.join(PRESETS)}")


def _single_file_family(path: Path) -> str:
    """Which family a safetensors checkpoint is, from the tensor names in its header: 'sd1', 'sd2', 'sdxl' or 'ddpm'."""
    shapes = safetensors_shapes(path)
    keys = list(shapes)
    check_parameter_count(sum(math.prod(s) for s in shapes.values()), printable(path))
    for marker, family in (("joint_blocks.", "Stable Diffusion 3"), ("double_blocks.", "FLUX")):
        if any(k.removeprefix("model.diffusion_model.").startswith(marker) for k in keys):
            raise InputError(f"{printable(path)}: a {family} single-file checkpoint; load its diffusers folder or "
                             f"Hub id instead (single files are read for Stable Diffusion 1.x/2.x and SDXL)")
    version = ldm_version(keys)
    if version is not None:
        check_parts(path, keys, version)
        return version
    if any(k.removeprefix("module.").startswith("temb.dense.") for k in keys):
        return "ddpm"  # the paper's original DDPM layout, read with its YAML config
    raise InputError(f"{printable(path)}: its tensors match no known checkpoint layout (Stable Diffusion 1.x/2.x/XL "
                     f"'model.diffusion_model.*', or the original DDPM 'temb.dense.*'); first tensor "
                     f"{printable(keys[0]) if keys else 'none'!r}")


_SINGLE_FILE = {"sd1": ("Stable Diffusion 1.x", "sd1.5"), "sd2": ("Stable Diffusion 2.x", "sd2.1"),
                "sdxl": ("SDXL", "sdxl")}


def _is_pipeline_config(config: str | os.PathLike[str]) -> bool:
    """Whether a --config names a diffusers pipeline (folder, pipeline preset or Hub id) rather than a YAML file."""
    text = str(config)
    return text in PIPELINE_PRESETS or Path(text).expanduser().is_dir() or (is_repo_id(text) and
                                                                            not Path(text).exists())


def _load_single_file(path: Path, version: str, config: str | os.PathLike[str] | None,
                      device: str | torch.device | None, name: str) -> Model:
    """A Stable Diffusion single file, configured by a local diffusers folder, or a pipeline preset's or Hub id's."""
    label, preset = _SINGLE_FILE[version]
    xl = version == "sdxl"
    if config is None or not _is_pipeline_config(config):
        given = "" if config is None else f" ({printable(str(config))} is not a folder, preset or Hub id)"
        raise InputError(f"{printable(path)}: a {label} single-file checkpoint needs --config{given}: a local "
                         f"diffusers folder of the same architecture (model_index.json, scheduler/, tokenizer(s) and "
                         f"the components' config.json; weights not needed), or --config {preset} (its configs from "
                         f"the Hugging Face cache)")
    text = str(config)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        if text in PIPELINE_PRESETS and PIPELINE_PRESETS[text].family not in ("stable-diffusion",
                                                                               "stable-diffusion-xl"):
            raise InputError(f"--config {text}: a {PIPELINE_PRESETS[text].family} pipeline cannot configure a "
                             f"{label} checkpoint")
        folder = hub_config_snapshot(PIPELINE_PRESETS[text].repo_id if text in PIPELINE_PRESETS else text)
    check_regular_files(folder)
    if not is_sd_folder(folder) or (folder / "text_encoder_2").is_dir() != xl:
        raise InputError(f"--config {printable(text)}: not a diffusers {label} pipeline folder (model_index.json, "
                         f"unet/ and vae/ configs{', text_encoder_2/' if xl else ', no text_encoder_2/'}) for "
                         f"{printable(path)}")
    return load_stable_diffusion(folder, device=device, name=name, single_file=path)


def is_text_conditioned(source: str | os.PathLike[str]) -> bool:
    """Whether a local source is a text-conditioned model, judged from its files without loading it."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        return ldm_version(list(safetensors_shapes(path))) is not None  # a Stable Diffusion single file
    return any(is_folder(path) for is_folder in (is_sd_folder, is_sd3_folder, is_flux_folder, is_qwen_image_folder))


def recommended_t0_of(source: str | os.PathLike[str]) -> float:
    """A source's recommended t0 read from its files without loading it (the default for other sources)."""
    src = str(source)
    folder = bundled_path(src) if src in BUNDLED_MODELS and not Path(src).exists() else Path(src).expanduser()
    config = folder / "config.json"
    if not folder.is_dir() or not config.is_file() or is_text_conditioned(folder):
        return DEFAULT_T0
    return recommended_t0(read_json(config), str(config))
