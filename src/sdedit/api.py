"""`edit()`: SDEdit from images to images, the public entry point over editing.sdedit."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .editing import sdedit
from .errors import InputError, SamplingError
from .images import Fit, ImageLike, fit_box, image_to_tensor, load_guide, mask_to_tensor, paste_kept, \
    tensor_to_images, to_model_size
from .latent import LatentModel, latent_edit
from .model import SDEModel
from .run_settings import DEFAULT_SAMPLER, checked_run

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
    if fit not in ("crop", "stretch"):
        raise InputError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    steps, seed = checked_run(sampler, t0, steps, repeats, num_samples, seed, batch_size)

    full, full_mask = load_guide(image, mask)
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
            out = paste_kept(out, guide, small_mask)
        if original_size:
            out = _to_original(out, full, full_mask, fit)
        out.info["sdedit"] = json.dumps({**base, "seed": seed + j, "sample": j})
        results.append(out)
    return results


def _to_original(out: Image.Image, full: Image.Image, full_mask: Image.Image | None, fit: Fit) -> Image.Image:
    """Scale an output back to the input's cropped (or whole) area; kept pixels come from the input at full size."""
    box = fit_box(full.size, fit)
    region = full.crop(box)
    big = out.resize(region.size, Image.Resampling.LANCZOS)
    if full_mask is None:
        return big
    return paste_kept(big, region, full_mask.crop(box))
