"""Small files for input tests: images of every mode and hostile files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny PNG file whose header declares width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def random_image(size: tuple[int, int] = (40, 32), seed: int = 0) -> Image.Image:
    """A random RGB image of (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def stroke_png(path: Path, size: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    """A random RGB image, saved."""
    random_image(size, seed).save(path)
    return path


def mask_png(path: Path, size: tuple[int, int] = (40, 32)) -> Path:
    """White (edit) left half, black (keep) right half."""
    m = np.zeros((size[1], size[0]), np.uint8)
    m[:, : size[0] // 2] = 255
    Image.fromarray(m).save(path)
    return path


def ddim_on_grid(model, img: Image.Image, sigmas, settings, controls=()) -> np.ndarray:
    """Our side of a parity test: the guide encoded and perturbed in diffusers' order (control images' latents if
    any, posterior draw, then noise, one generator seeded 0), `ddim` over the given VE sigmas, decoded as diffusers
    decodes: HxWx3 in [0, 1]."""
    import functools

    import torch

    from sdedit.engine.samplers import SAMPLERS
    from sdedit.families.control import control_to_tensor
    from sdedit.images import image_to_tensor

    gen = torch.Generator().manual_seed(0)
    condition = model.control_condition([control_to_tensor(c) for c in controls], [gen]) if controls else None
    z_g = model.encode(image_to_tensor(img), [gen])
    z = z_g + sigmas[0] * torch.randn(z_g.shape, generator=gen)
    denoiser = model.denoiser(settings)
    if condition is not None:
        denoiser = functools.partial(denoiser, condition=condition)
    with torch.inference_mode():
        return decode_as_diffusers(model, SAMPLERS["ddim"](denoiser, z, sigmas), sigmas[-1])


def decode_as_diffusers(model, z, last_sigma) -> np.ndarray:
    """A latent sampled down to `last_sigma` (VE), decoded as a diffusers pipeline decodes its own: HxWx3 in [0, 1].

    A pipeline's latent is ours in the model's scale at the grid's last sigma: VP grids end at alphas_cumprod[0]
    (sigma 0.029 for SD), where diffusers decodes x / sqrt(1 + sigma^2), a latent 0.04 % smaller than the VE x;
    flow grids end at t = 0, where the two agree."""
    import torch

    from sdedit.engine.denoisers import flow_input, vp_input

    s = torch.as_tensor(last_sigma, dtype=torch.float64)
    with torch.inference_mode():
        if model.schedule.kind == "vp":
            z = vp_input(z.double(), s).float()
        elif model.schedule.kind == "flow":
            z = flow_input(z.double(), s)[0].float()
        return ((model.decode(z) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def flow_sigmas(flow):
    """A flow-matching scheduler's times t (ending at 0, a tensor) as the VE sigmas t / (1 - t)."""
    flow = flow.double()
    return (flow / (1 - flow)).float()


def transformer_lora(pipe, path: Path, seed: int = 3) -> Path:
    """A random-weight LoRA (PEFT, rank 4, on the attention projections) for a pipeline's transformer, saved as
    diffusers does (keys prefixed 'transformer.')."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    transformer = type(pipe.transformer).from_config(pipe.transformer.config)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                       init_lora_weights=False))
    save_file({f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(transformer).items()},
              str(path))
    return path


def blocks_picture(size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    """Two flat blocks of seeded colours: a layout for a ControlNet or an IP-Adapter to follow."""
    rng = np.random.default_rng(seed)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, : size[0] // 2] = rng.integers(0, 256, 3)
    a[size[1] // 3:, size[0] // 4: 3 * size[0] // 4] = rng.integers(0, 256, 3)
    return Image.fromarray(a)
