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
