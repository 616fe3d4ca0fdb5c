"""Single-file Stable Diffusion checkpoints in the original (LDM) layout: which parts a file holds, read from its
header, and its networks through diffusers' from_single_file, configured by a local diffusers folder, offline."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..files import printable
from .checkpoints import LOAD_ERRORS, check_materialized, first_line

# Key prefixes of the original layout: what each part of a Stable Diffusion checkpoint is saved under.
UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = {
    "sd1": ("cond_stage_model.transformer.",),  # CLIP ViT-L, transformers' layout
    "sd2": ("cond_stage_model.model.",),  # OpenCLIP ViT-H
    "sdxl": ("conditioner.embedders.0.", "conditioner.embedders.1."),  # CLIP ViT-L, OpenCLIP ViT-bigG
}


def ldm_version(keys: list[str]) -> str | None:
    """'sd1', 'sd2' or 'sdxl' for a file whose keys are in the original Stable Diffusion layout, else None."""
    if not any(k.startswith(UNET) for k in keys):
        return None
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    return "sd2" if any(k.startswith(TEXT["sd2"]) for k in keys) else "sd1"


def check_parts(path: Path, keys: list[str], version: str) -> None:
    """InputError naming the first part (UNet, VAE, text encoders) the file holds no tensors for."""
    for what, prefix in (("UNet", UNET), ("VAE", VAE), *(("text encoder", p) for p in TEXT[version])):
        if not any(k.startswith(prefix) for k in keys):
            raise InputError(f"{printable(path)}: holds no {what} ({prefix}*); a single-file checkpoint must hold "
                             f"the UNet, the VAE and the text encoder(s)")


def ldm_networks(path: Path, config: Path, xl: bool) -> dict[str, nn.Module]:
    """unet, vae, text_encoder (and SDXL's text_encoder_2) from one file, in fp32; nothing fetched, none left empty."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
    pipeline = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    try:
        pipe = pipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                         torch_dtype=torch.float32, feature_extractor=None, image_encoder=None,
                                         **extra)
    except (*LOAD_ERRORS, SingleFileComponentError) as e:
        raise InputError(f"{printable(path)}: cannot load it with the config {printable(config)}: "
                         f"{first_line(e)}") from None
    parts = ("unet", "vae", "text_encoder", "text_encoder_2") if xl else ("unet", "vae", "text_encoder")
    nets = {name: getattr(pipe, name) for name in parts}
    for name, net in nets.items():
        check_materialized(net, f"{printable(path)} ({name})")
    return nets
