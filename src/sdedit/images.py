"""Image and mask I/O: validation, the resize/crop policy, tensors, grids and PNGs with settings in their metadata."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import InputError
from .files import printable, write_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# The decoders an input may reach, whatever its name says: the formats of IMAGE_SUFFIXES and nothing else (no EPS
# handed to Ghostscript, no PCX, SGI or TGA read because Pillow recognised its bytes).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")  # JPEG opens multi-picture (MPO) files too
MAX_PIXELS = 50_000_000  # refuse larger images before decoding them (decompression bombs)
Fit = Literal["crop", "stretch"]
ImageLike = str | os.PathLike[str] | Image.Image | torch.Tensor | np.ndarray


def open_image(path: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS,
               name: str = "image") -> Image.Image:
    """Open and fully decode an image file (or its bytes, called `name` in messages), EXIF orientation applied;
    InputError for anything unreadable or too large."""
    if isinstance(path, bytes):
        source: Path | io.BytesIO = io.BytesIO(path)
        what: object = name
    else:
        source = what = Path(path)
        if not source.is_file():
            raise InputError(f"image not found: {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source, formats=IMAGE_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"{what}: {w}x{h} pixels is over the limit of {max_pixels:,} pixels")
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{what}: not a readable image ({type(e).__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{what}: corrupt or truncated image ({e})") from None
    return ImageOps.exif_transpose(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any mode: transparency composited on white, 16-bit and float scaled down, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise InputError("the image holds NaN or infinite values (a floating-point file): nothing to read there")
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def to_gray(img: Image.Image) -> Image.Image:
    """Single-channel mask view: 16-bit scaled, alpha ignored."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb(img).convert("L")
    return img.convert("L") if img.mode != "L" else img


def _from_array(a: torch.Tensor | np.ndarray, what: str) -> Image.Image:
    """A PIL image from a CxHxW / HxWxC / HxW array: floats in [0, 1], or uint8."""
    t = torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
        t = t.permute(1, 2, 0)
    if t.ndim == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim not in (2, 3) or (t.ndim == 3 and t.shape[-1] != 3):
        raise InputError(f"{what}: expected a 3xHxW, HxWx3 or HxW array, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        arr = t.numpy()
    else:
        t = t.float()
        if not torch.isfinite(t).all() or t.min() < 0.0 or t.max() > 1.0:
            raise InputError(f"{what}: float arrays must hold values in [0, 1]")
        arr = (t * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def as_pil(src: ImageLike, what: str, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A PIL image from a path, PIL image or array."""
    if isinstance(src, Image.Image):
        return ImageOps.exif_transpose(src)
    if isinstance(src, (torch.Tensor, np.ndarray)):
        return _from_array(src, what)
    return open_image(src, max_pixels=max_pixels)


def fit_box(size: tuple[int, int], fit: Fit) -> tuple[int, int, int, int]:
    """The part of a (w, h) image that maps onto the square model input: centre square for crop, all for stretch."""
    w, h = size
    if fit == "stretch":
        return 0, 0, w, h
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def to_model_size(img: Image.Image, resolution: int, fit: Fit, resample: int = Image.Resampling.LANCZOS) -> Image.Image:
    """The resize policy: centre square crop (or stretch), then resize to resolution x resolution."""
    region = img.crop(fit_box(img.size, fit))  # crop first: the filter must not see pixels outside the box
    if region.size == (resolution, resolution):
        return region
    return region.resize((resolution, resolution), resample=resample)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """1x3xHxW float tensor in [-1, 1] from an RGB image."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return (arr / 127.5 - 1.0)[None]


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """1x1xHxW float tensor in [0, 1] from a grayscale mask (1 = edit)."""
    return (torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()).float() / 255.0)[None, None]


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """RGB images from a Bx3xHxW tensor in [-1, 1] (rounded, clipped)."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]


def load_guide(image: ImageLike, mask: ImageLike | None, what: str = "mask") -> tuple[Image.Image, Image.Image | None]:
    """The guide as RGB and the mask (or strength map) as L, refusing one of another size."""
    full = to_rgb(as_pil(image, "image"))
    if mask is None:
        return full, None
    full_mask = to_gray(as_pil(mask, what))
    if full_mask.size != full.size:
        turned = full_mask.size == full.size[::-1] and full.size[0] != full.size[1]
        hint = (" (the image is shown turned by its EXIF orientation, as every viewer shows it: paint the "
                f"{what} on the image as displayed)") if turned else ""
        raise InputError(f"{what} is {full_mask.size[0]}x{full_mask.size[1]} but the image is "
                         f"{full.size[0]}x{full.size[1]}; they must be the same size{hint}")
    return full, full_mask


def paste_kept(out: Image.Image, guide: Image.Image, mask: Image.Image, *, blend: bool = True) -> Image.Image:
    """Blend by the mask, m out + (1 - m) guide: where m is 0 the guide's own pixels, bit for bit; a soft
    (feathered) band blends the edit into the photo without a seam; where m is 1, the edit.
    blend=False: only the exact paste where m is 0 (a strength map's grey is an amount of noise, not a blend)."""
    m = np.asarray(mask, np.float32)[..., None] / 255.0
    g = np.asarray(guide)
    if not blend:
        return Image.fromarray(np.where(m == 0.0, g, np.asarray(out)).astype(np.uint8))
    blended = np.rint(m * np.asarray(out, np.float32) + (1.0 - m) * g).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.where(m == 0.0, g, blended))


MAX_GROW = 256  # pixels; mask grow and feather beyond this are refused


def _max_filter_1d(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Running maximum over windows of k (odd, centred) along an axis, in O(n) whatever k (van Herk / Gil-Werman)."""
    a = np.moveaxis(a, axis, -1)
    n, r = a.shape[-1], k // 2
    padded = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(r, r + (-(n + 2 * r)) % k)], constant_values=0)
    blocks = padded.reshape(*a.shape[:-1], -1, k)
    forward = np.maximum.accumulate(blocks, axis=-1).reshape(*a.shape[:-1], -1)
    backward = np.maximum.accumulate(blocks[..., ::-1], axis=-1)[..., ::-1].reshape(*a.shape[:-1], -1)
    out = np.maximum(backward[..., :n], forward[..., k - 1:k - 1 + n])
    return np.moveaxis(out, -1, axis)


def _max_filter(a: np.ndarray, k: int) -> np.ndarray:
    """Pillow's MaxFilter(k) (a k x k square), separable and linear in the image size whatever k."""
    return _max_filter_1d(_max_filter_1d(a, k, 0), k, 1)


def check_grow(grow: object, feather: object) -> None:
    """The mask grow and feather rule: whole pixels from 0 to MAX_GROW."""
    for value, what in ((grow, "mask grow"), (feather, "mask feather")):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GROW:
            raise InputError(f"{what} must be a whole number of pixels from 0 to {MAX_GROW}, got {value!r}")


def grow_and_feather(mask: Image.Image, grow: int = 0, feather: int = 0) -> Image.Image:
    """A mask grown by `grow` px (max filter) and feathered outward by `feather` px (blur, never below the mask)."""
    check_grow(grow, feather)
    m = mask
    if grow > 0:
        m = Image.fromarray(_max_filter(np.asarray(m), 2 * grow + 1))
    if feather > 0:
        # blur outward only: what was masked stays fully edited, the soft edge falls off outside it
        soft = np.asarray(m.filter(ImageFilter.GaussianBlur(feather)), np.float32)
        m = Image.fromarray(np.maximum(soft * 2.0, np.asarray(m, np.float32)).clip(0, 255).astype(np.uint8))
    return m


def grid(images: list[Image.Image], ncols: int = 8, pad: int = 2) -> Image.Image:
    """Images tiled in rows of ncols on a black background with pad pixels between them."""
    w, h = images[0].size
    cols = min(ncols, len(images))
    rows = (len(images) + cols - 1) // cols
    out = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad))
    for i, im in enumerate(images):
        out.paste(im, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return out


def png_info(settings: dict[str, Any]) -> PngImagePlugin.PngInfo:
    """PNG text chunks: 'sdedit' with all settings as JSON, plus 'parameters' in one readable line."""
    info = PngImagePlugin.PngInfo()
    info.add_text("sdedit", json.dumps(settings, sort_keys=True))
    info.add_text("parameters", ", ".join(f"{k}: {v}" for k, v in settings.items()))
    return info


def read_settings(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings an sdedit PNG carries in its metadata."""
    with Image.open(path) as img:
        return json.loads(img.text["sdedit"])  # type: ignore[attr-defined]


def save_png(img: Image.Image, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save as PNG through the safe writer, with img.info['sdedit'] in the metadata; a taken name gets a suffix."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise InputError(f"{printable(target)}: PNG files are written; give a name ending in .png")
    data = png_bytes(img)
    return write_file(target, lambda f: f.write(data), overwrite=overwrite)


def png_bytes(img: Image.Image) -> bytes:
    """The PNG file save_png writes, in memory (its bytes can be hashed before they are published)."""
    settings = img.info.get("sdedit")
    pnginfo = png_info(json.loads(settings)) if isinstance(settings, str) else None
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", pnginfo=pnginfo)
    return buffer.getvalue()


def folder_images(folder: str | os.PathLike[str], count: int | None, size: int) -> list[Image.Image]:
    """Up to count images of a folder (recursively, sorted by path), centre-cropped and resized to size x size."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if count is not None:
        paths = paths[:count]
    return [to_model_size(to_rgb(open_image(p)), size, "crop") for p in paths]
