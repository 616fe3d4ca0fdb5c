"""Tiled SDEdit's settings: the tile size and overlap a model takes, in input pixels, checked once.

A tiled edit works on the whole input at its own size (engine.tiles blends the network's D over tiles),
so the tile decides the network's memory; the canvas decides time and the sampler's own tensors.  Tiles sit on the sampler's grid (latent cells
of `latent_factor` pixels), with sides the main network takes, and at least half the model's resolution: a
smaller tile shows the network less than a quarter of the picture it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InputError

AUTO_TILE = "auto"  # --tile auto: the model's own resolution
TileSize = int | str


@dataclass(frozen=True)
class Tiling:
    """A checked tiling: tile side and overlap in input pixels, both multiples of the model's latent factor."""

    size: int
    overlap: int

    def cells(self, factor: int) -> tuple[int, int]:
        """(tile, overlap) in cells of the sampler's grid."""
        return self.size // factor, self.overlap // factor

    def metadata(self) -> dict[str, Any]:
        return {"tile": self.size, "tile_overlap": self.overlap}


def tile_multiple(model: Any) -> int:
    """Pixels a tile side must be a multiple of: latent cells the main network halves evenly."""
    return int(model.latent_factor) * int(model.size_multiple)


def min_tile(model: Any) -> int:
    """The smallest tile: half the model's resolution, rounded up to the tile multiple."""
    m = tile_multiple(model)
    return max(m, -(-int(model.resolution) // 2 // m) * m)


def default_overlap(size: int, factor: int) -> int:
    """A quarter of the tile, on the latent grid (16 px for the bundled model's 64 px tiles)."""
    return size // 4 // factor * factor


def check_tiling(model: Any, size: TileSize, overlap: int | None = None) -> Tiling:
    """The tile rule for this model: `auto` or a whole number of pixels that is a multiple of tile_multiple and
    at least min_tile; an overlap (default: default_overlap) from 0 to half the tile, on the latent grid (at half,
    neighbours are half a tile apart: each cell is blended from about 4 tiles, and the network runs about 4 times
    the canvas; near the tile, it would run (tile / (tile - overlap))^2 times the canvas)."""
    m, factor = tile_multiple(model), int(model.latent_factor)
    if isinstance(size, str) and size.strip().lower() == AUTO_TILE:
        size = -(-int(model.resolution) // m) * m
    if isinstance(size, bool) or not isinstance(size, int):
        raise InputError(f"tile must be 'auto' or a whole number of pixels, got {size!r:.40}")
    least = min_tile(model)
    if size < least:
        raise InputError(f"tile {size} px is below {model.name}'s minimum of {least} px (half its "
                         f"{model.resolution} px resolution)")
    if size % m:
        raise InputError(f"tile {size} px is not a multiple of {m} px, the sides {model.name}'s network takes "
                         f"(try {size // m * m} or {size // m * m + m})")
    if overlap is None:
        overlap = default_overlap(size, factor)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= size // 2:
        raise InputError(f"tile overlap must be a whole number of pixels from 0 to half the tile ({size // 2}), well "
                         f"below the tile ({size}): more only multiplies the network calls; got {overlap!r:.40}")
    if overlap % factor:
        raise InputError(f"tile overlap {overlap} px is not a multiple of {factor} px, the size of {model.name}'s "
                         f"latent cells")
    return Tiling(size, overlap)


def tiling_of(model: Any, size: TileSize | None, overlap: int | None = None) -> Tiling | None:
    """The tiling asked for (check_tiling), or None for an untiled edit; an overlap needs a tile."""
    if size is None:
        if overlap is not None:
            raise InputError("a tile overlap needs a tile size: give --tile too")
        return None
    return check_tiling(model, size, overlap)
