"""`edit()`: SDEdit from images to images, the public entry point over editing.sdedit."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .editing import check_settings, sdedit
from .errors import InputError, SamplingError
from .images import Fit, ImageLike, as_pil, fit_box, image_to_tensor, mask_to_tensor, tensor_to_images, to_gray, \
    to_model_size, to_rgb
from .latent import LatentModel, latent_edit
from .model import SDEModel
from .samplers import SAMPLERS

DEFAULT_SAMPLER = "dpm++2m-sde"

# Steps per unit of t0 for each sampler, chosen from benchmarks/quality_per_cost.py (docs/quality-per-cost.md):
# at t0 = 0.5 on the bundled model, dpm++2m-sde with 10 steps matches the released recipe (ddpm, 500 steps):
# L2 11.63 vs 11.62, KID 0.119 vs 0.113 (+- 0.08).  The ODE samplers stop improving near 20 steps; the
# first-order stochastic ones need about 100 per unit of t0.
STEPS_PER_T0 = {"dpm++2m-sde": 20, "ddim": 40, "dpm++2m": 40, "ddpm": 100, "euler-maruyama": 100}
MIN_STEPS = {"dpm++2m-sde": 5, "ddim": 5, "dpm++2m": 5, "ddpm": 10, "euler-maruyama": 10}


def default_steps(sampler: str, t0: float) -> int:
    """Steps used when none are given: ceil(k * t0) per sampler (10 for dpm++2m-sde at t0 = 0.5), with a floor."""
    return max(MIN_STEPS.get(sampler, 10), math.ceil(STEPS_PER_T0.get(sampler, 100) * t0 - 1e-9))


def edit(model: SDEModel | LatentModel, image: ImageLike, *, mask: ImageLike | None = None, t0: float = 0.5,
         steps: int | None = None, repeats: int = 1, sampler: str | None = None, num_samples: int = 1,
         seed: int | None = None, progress: bool = True, batch_size: int | None = None, fit: Fit = "crop",
         original_size: bool = False, prompt: str | None = None, negative_prompt: str = "", guidance: float = 7.5,
         callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None) -> list[Image.Image]:
    """SDEdit (Meng et al. 2022) on one guide image: num_samples outputs, sample j seeded with seed + j.

    image/mask: paths, PIL images or arrays (floats in [0, 1]); mask white = edit, black =
    keep, soft values blend; none = edit everything.  Inputs are centre-cropped to a square
    (fit="crop") or stretched (fit="stretch") and resized to the model's resolution; with
    original_size the outputs are scaled back to the cropped/stretched input size, kept
    pixels pasted from the full-size input.  Each output's settings are in img.info["sdedit"].
    A text-conditioned (Stable Diffusion) model takes prompt, negative_prompt and guidance and
    works at the input's own size (latent.latent_edit); fit and original_size do not apply.
    """
    if isinstance(model, LatentModel):
        return latent_edit(model, image, prompt=prompt or "", negative_prompt=negative_prompt, guidance=guidance,
                           mask=mask, t0=t0, steps=steps, repeats=repeats, sampler=sampler or DEFAULT_SAMPLER,
                           num_samples=num_samples, seed=seed, progress=progress, batch_size=batch_size,
                           callback=callback)
    if prompt or negative_prompt:
        raise InputError(f"{model.name} is not text-conditioned: --prompt needs a Stable Diffusion-style model")
    sampler = sampler or DEFAULT_SAMPLER
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if fit not in ("crop", "stretch"):
        raise InputError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    if isinstance(t0, (int, float)) and steps is None and 0.0 < t0 <= 1.0:
        steps = default_steps(sampler, float(t0))
    try:
        check_settings(t0, steps, repeats)  # type: ignore[arg-type]
    except ValueError as e:
        raise InputError(str(e)) from None
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InputError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    seed = secrets.randbits(31) if seed is None else int(seed)
    if not 0 <= seed < 2**63 - num_samples:
        raise InputError(f"seed must be a non-negative integer, got {seed}")

    full = to_rgb(as_pil(image, "image"))
    full_mask = None
    if mask is not None:
        full_mask = to_gray(as_pil(mask, "mask"))
        if full_mask.size != full.size:
            raise InputError(f"mask is {full_mask.size[0]}x{full_mask.size[1]} but the image is "
                             f"{full.size[0]}x{full.size[1]}; they must be the same size")
    r = model.resolution
    guide = to_model_size(full, r, fit)
    small_mask = to_model_size(full_mask, r, fit, Image.Resampling.BILINEAR) if full_mask is not None else None

    device = model.device
    x_g = image_to_tensor(guide).to(device)
    m = mask_to_tensor(small_mask).to(device) if small_mask is not None else None
    batch = batch_size or min(num_samples, 8)
    outputs: list[Image.Image] = []
    bar = tqdm(total=math.ceil(num_samples / batch) * repeats * steps, desc="sdedit", unit="step", disable=not progress)

    def step_callback(i: int, sigma: float, x: torch.Tensor, denoised: torch.Tensor) -> None:
        bar.update(1)
        if callback is not None:
            callback(i, sigma, x, denoised)

    try:
        for start in range(0, num_samples, batch):
            n = min(batch, num_samples - start)
            generators = [torch.Generator().manual_seed(seed + start + j) for j in range(n)]
            try:
                x = sdedit(model.denoise, model.schedule, x_g.expand(n, -1, -1, -1), mask=m, t0=float(t0),
                           steps=steps, repeats=repeats, sampler=sampler, generator=generators,
                           callback=step_callback)
            except FloatingPointError as e:
                raise SamplingError(f"sampling diverged: {e}; no image written") from None
            if not torch.isfinite(x).all():
                raise SamplingError("sampling produced NaN or inf; no image written")
            outputs += tensor_to_images(x)
    finally:
        bar.close()

    base = {"model": model.name, "t0": float(t0), "steps": steps, "sampler": sampler, "repeats": repeats,
            "fit": fit, "resolution": r, "masked": mask is not None, "precision": model.info.get("precision", "fp32"),
            "device": str(device), "sdedit_version": __version__}
    results = []
    for j, out in enumerate(outputs):
        if small_mask is not None:
            out = _paste_kept(out, guide, small_mask)
        if original_size:
            out = _to_original(out, full, full_mask, fit)
        out.info["sdedit"] = json.dumps({**base, "seed": seed + j, "sample": j})
        results.append(out)
    return results


def _paste_kept(out: Image.Image, guide: Image.Image, mask: Image.Image) -> Image.Image:
    """Pixels whose mask is exactly 0 become the guide's own pixels, bit for bit."""
    keep = np.asarray(mask) == 0
    arr = np.where(keep[..., None], np.asarray(guide), np.asarray(out))
    return Image.fromarray(arr.astype(np.uint8))


def _to_original(out: Image.Image, full: Image.Image, full_mask: Image.Image | None, fit: Fit) -> Image.Image:
    """Scale an output back to the input's cropped (or whole) area; kept pixels come from the input at full size."""
    box = fit_box(full.size, fit)
    region = full.crop(box)
    big = out.resize(region.size, Image.Resampling.LANCZOS)
    if full_mask is None:
        return big
    return _paste_kept(big, region, full_mask.crop(box))
