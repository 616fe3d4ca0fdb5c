"""IP-Adapters (Ye et al. 2023: an image as a prompt) for Stable Diffusion 1.x/2.x and SDXL UNets, named as
`MODEL[:SCALE]`: a safetensors file of adapter weights (flat `image_proj.*` / `ip_adapter.*` keys, the layout
diffusers' `load_ip_adapter` reads) with its CLIP image encoder folder, or a control preset.  The weights go into the
UNet through diffusers' own conversion (decoupled cross-attention processors and an image projection); the reference
image is embedded once, at load time, and the encoder is then dropped.  Safetensors only; nothing is unpickled."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..control_images import load_control_image
from ..errors import InputError
from ..files import printable
from ..images import ImageLike
from .checkpoints import LOAD_ERRORS, check_regular_files, check_weights_fit, first_line, plan_network, \
    read_safetensors, safetensors_shapes
from .hub import hub_control_snapshot
from .lora import split_scale
from .presets import CONTROL_PRESETS, control_preset

IMAGE_TOKENS = 4  # image tokens of the base IP-Adapter's projection (diffusers' ImageProjection for "proj.weight")
MAX_ENCODER_SIDE = 1024  # a CLIP image encoder's image_size (224 or 336 in practice): bounds the reference's resize
ENCODER_FOLDER = "image_encoder"  # a local adapter file's encoder: this folder beside it (diffusers' default)


@dataclass(frozen=True)
class IPAdapterSpec:
    """One IP-Adapter: its weights, how strongly it acts (0 = as if absent), and its reference image."""

    source: str  # a .safetensors file of IP-Adapter weights, or a control preset's name (kind "ip-adapter")
    scale: float = 1.0
    image: ImageLike | None = None  # the reference image (a path, PIL image or array)
    image_encoder: str | None = None  # a local file's CLIP image encoder folder (default: image_encoder/ beside it)

    @classmethod
    def parse(cls, text: str, image: ImageLike | None = None) -> IPAdapterSpec:
        """'MODEL' or 'MODEL:SCALE' (lora.split_scale's rule)."""
        source, scale = split_scale(text, "--ip-adapter")
        return cls(source, image=image) if scale is None else cls(source, scale, image)

    @property
    def label(self) -> str:
        """How outputs record it."""
        return f"{self.source}:{self.scale:g}"

    @property
    def image_name(self) -> str:
        """How outputs record its reference image: the file's name, or 'image' for one given in memory."""
        return Path(self.image).name if isinstance(self.image, (str, os.PathLike)) else "image"


def ip_adapter_files(spec: IPAdapterSpec, family: str | None = None) -> tuple[Path, Path]:
    """The adapter's weight file and its image encoder folder (a preset is checked against the model's family and
    found in the Hugging Face cache, or fetched)."""
    path = Path(spec.source).expanduser()
    if spec.source in CONTROL_PRESETS and not path.exists():
        preset = control_preset(spec.source, family)
        if preset.kind != "ip-adapter":
            raise InputError(f"{spec.source} is a ControlNet: give it with --controlnet")
        folder = hub_control_snapshot(preset)
        return folder / preset.subfolder / preset.weight_name, folder / preset.image_encoder
    if not path.is_file():
        names = ", ".join(n for n, p in CONTROL_PRESETS.items() if p.kind == "ip-adapter")
        raise InputError(f"IP-Adapter not found: {printable(spec.source)} (a .safetensors file with an "
                         f"{ENCODER_FOLDER}/ folder beside it, or a preset: {names})")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"{printable(path)}: IP-Adapter weights are read from .safetensors files only (pickled files "
                         f"can hold code)")
    encoder = Path(spec.image_encoder).expanduser() if spec.image_encoder else path.parent / ENCODER_FOLDER
    return path, encoder


def cross_attention_layers(unet: nn.Module) -> dict[str, int]:
    """The UNet's cross-attention processors in diffusers' order, each with its hidden width (the rule of diffusers'
    `_convert_ip_adapter_attn_to_diffusers`); the adapter's keys number them 1, 3, 5, ..."""
    cfg, layers = unet.config, {}
    channels = list(cfg.block_out_channels)
    for name in unet.attn_processors:  # type: ignore[attr-defined]
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        if name.startswith("mid_block"):
            width = channels[-1]
        elif name.startswith("up_blocks"):
            width = channels[::-1][int(name.split(".")[1])]
        else:
            width = channels[int(name.split(".")[1])]
        layers[name] = int(width)
    return layers


def check_adapter(unet: nn.Module, path: Path) -> int:
    """The width of image embeddings a base IP-Adapter file takes; InputError in one line when its header is not one
    for this UNet (another model's, e.g. SDXL's on SD 1.5, or a Plus/FaceID variant).  No tensor is read."""
    shapes = safetensors_shapes(path)
    where = printable(path)
    if not any(k.startswith("image_proj.") for k in shapes) or not any(k.startswith("ip_adapter.") for k in shapes):
        raise InputError(f"{where}: not an IP-Adapter (no image_proj.* and ip_adapter.* tensors)")
    if "image_proj.proj.weight" not in shapes or "image_proj.norm.weight" not in shapes:
        raise InputError(f"{where}: an IP-Adapter Plus, Full or FaceID variant; only the base IP-Adapter (one image "
                         f"embedding, {IMAGE_TOKENS} image tokens) is supported")
    cross, width = int(unet.config.cross_attention_dim), shapes["image_proj.proj.weight"][-1]
    want = {"image_proj.proj.weight": (IMAGE_TOKENS * cross, width), "image_proj.norm.weight": (cross,)}
    layers = list(cross_attention_layers(unet).values())
    for i, hidden in enumerate(layers):
        for part in ("to_k_ip", "to_v_ip"):
            want[f"ip_adapter.{2 * i + 1}.{part}.weight"] = (hidden, cross)
    for key, shape in want.items():
        if shapes.get(key) != shape:
            got = "no such tensor" if key not in shapes else f"shape {shapes[key]}"
            raise InputError(f"{where}: an IP-Adapter for another model ({key}: {got}; this UNet takes {shape})")
    extra = sorted(k for k in shapes if k.startswith("ip_adapter.") and k not in want)
    if extra:
        raise InputError(f"{where}: an IP-Adapter for another model ({extra[0]}: this UNet has {len(layers)} "
                         f"cross-attention layers)")
    return int(width)


def encoder_width(folder: Path) -> int:
    """The projection width of a CLIP image encoder folder, from its config (checked, nothing loaded)."""
    from transformers import CLIPVisionConfig

    if not (folder / "config.json").is_file():
        raise InputError(f"{printable(folder)}: no CLIP image encoder here (config.json and model.safetensors of a "
                         f"CLIPVisionModelWithProjection)")
    check_regular_files(folder)
    try:
        config = CLIPVisionConfig.from_pretrained(folder)
    except LOAD_ERRORS as e:
        raise InputError(f"{printable(folder)}: not a CLIP image encoder config: {first_line(e)}") from None
    if not 1 <= int(config.image_size) <= MAX_ENCODER_SIDE:
        raise InputError(f"{printable(folder)}: image_size {config.image_size} (CLIP encoders take 224 or 336 px; at "
                         f"most {MAX_ENCODER_SIDE})")
    return int(config.projection_dim)


def load_image_encoder(folder: Path, device: torch.device) -> nn.Module:
    """A CLIPVisionModelWithProjection from a folder (safetensors only, its config checked against the weights' shapes
    before they load), in float32 and inference mode."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if not any(folder.glob("*.safetensors")):
        raise InputError(f"{printable(folder)}: no .safetensors weights for the image encoder (pickled .bin files can "
                         f"hold code)")
    config = CLIPVisionConfig.from_pretrained(folder)
    planned = plan_network(lambda: CLIPVisionModelWithProjection(config), str(folder / "config.json"))
    check_weights_fit(planned, folder, str(folder / "config.json"))
    try:
        net = CLIPVisionModelWithProjection.from_pretrained(folder, use_safetensors=True)
    except LOAD_ERRORS as e:
        raise InputError(f"{printable(folder)}: cannot load the image encoder: {first_line(e)}") from None
    return net.float().to(device).eval().requires_grad_(False)  # fp16 files too: embedded once, in float32


@torch.inference_mode()
def image_embedding(encoder: nn.Module, image: Any) -> torch.Tensor:
    """The reference image's CLIP image embedding (1, 1, width) as diffusers' `encode_image` makes it for a base
    IP-Adapter: a CLIPImageProcessor at the encoder's side (resize, centre crop, CLIP's normalisation), then the
    projected embedding."""
    from transformers import CLIPImageProcessor

    side = int(encoder.config.image_size)
    pixels = CLIPImageProcessor(size=side, crop_size=side)(image, return_tensors="pt").pixel_values
    param = next(encoder.parameters())
    return encoder(pixels.to(param.device, param.dtype)).image_embeds.float()[None]


def read_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The file's tensors split as diffusers' loader splits them: {"image_proj": ..., "ip_adapter": ...}."""
    tensors, _ = read_safetensors(path)
    parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        if head in parts:
            parts[head][rest] = value
    return parts


def attach_ip_adapters(unet: nn.Module, specs: list[IPAdapterSpec], family: str | None = None) -> list[torch.Tensor]:
    """Load the adapters of nonzero scale into the UNet (diffusers' attention processors and image projection, each
    processor's scale set per adapter) and return each one's reference embedding (1, 1, width), in order.  Every
    spec's image and header is checked before anything loads; an adapter of scale 0 is not loaded at all."""
    if getattr(unet.config, "encoder_hid_dim_type", None) is not None:
        raise InputError("this UNet already has IP-Adapters (or another hidden-state projection); give all "
                         "IP-Adapters at once")
    checked = []
    for spec in specs:
        if not math.isfinite(spec.scale):
            raise InputError(f"IP-Adapter {printable(spec.source)}: the scale must be a finite number")
        if spec.image is None:
            raise InputError(f"IP-Adapter {printable(spec.source)} needs a reference image (--ip-image)")
        image = load_control_image(spec.image, "IP-Adapter image")
        weights, encoder = ip_adapter_files(spec, family)
        width, given = check_adapter(unet, weights), encoder_width(encoder)
        if width != given:
            raise InputError(f"{printable(weights)}: takes image embeddings of width {width}; its image encoder "
                             f"{printable(encoder)} gives {given}")
        checked.append((spec, image, weights, encoder))
    active = [c for c in checked if c[0].scale != 0.0]
    if not active:
        return []
    device = next(unet.parameters()).device
    embeds, encoders = [], {}
    for _, image, _, folder in active:
        if folder not in encoders:
            encoders[folder] = load_image_encoder(folder, device)
        embeds.append(image_embedding(encoders[folder], image))
    encoders.clear()  # the encoders are not needed again: their memory goes now
    _load_into(unet, [read_adapter(w) for _, _, w, _ in active], [s.scale for s, _, _, _ in active])
    return embeds


def _load_into(unet: Any, state_dicts: list[dict[str, dict[str, torch.Tensor]]], scales: list[float]) -> None:
    """diffusers' `_load_ip_adapter_weights` and `set_ip_adapter_scale`, converted first and set after, so that a
    failure leaves the UNet as it was."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, \
        IPAdapterXFormersAttnProcessor
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    try:
        processors = unet._convert_ip_adapter_attn_to_diffusers(state_dicts, low_cpu_mem_usage=False)
        projections = [unet._convert_ip_adapter_image_proj_to_diffusers(sd["image_proj"], low_cpu_mem_usage=False)
                       for sd in state_dicts]
    except LOAD_ERRORS as e:
        raise InputError(f"cannot load the IP-Adapter weights into this UNet: {first_line(e)}") from None
    param = next(unet.parameters())
    unet.set_attn_processor(processors)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(projections).to(param.device, param.dtype)
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    for processor in unet.attn_processors.values():
        if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor)):
            processor.scale = list(scales)
            processor.to(param.device, param.dtype)  # where and as the UNet is (diffusers moves the whole UNet)


def add_ip_adapters(model: Any, specs: list[IPAdapterSpec]) -> None:
    """IP-Adapters onto a model (a families.base.Model) that takes them (Stable Diffusion 1.x/2.x and SDXL); one line
    for any other."""
    if not specs:
        return
    if not getattr(model, "takes_ip_adapters", False):
        raise InputError(f"{model.name}: IP-Adapters run with Stable Diffusion 1.x/2.x and SDXL models")
    model.add_ip_adapters(specs)
