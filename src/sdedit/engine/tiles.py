"""Tiled denoising (MultiDiffusion, Bar-Tal et al. 2023): D of a canvas from D on overlapping tiles, blended.

At every evaluation the denoiser runs on tiles of the canvas (in the sampler's space: pixels or latent cells),
several per network call, and the canvas' D is the per-cell weighted mean of the tiles' D, with weights that
ramp smoothly to near 0 across each overlap.  The sampler sees that blended D as it would see the network's,
so noise, t0, masks and repeats are untouched.  Each cell's sum is taken in tile order, whatever the batching.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

Box = tuple[int, int, int, int]  # (top, left, height, width) in cells


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest `tile`-long tiles covering [0, length) with neighbours overlapping by at least
    `overlap`, spread evenly (the first at 0, the last flush with the end); one tile when it covers it all."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def ramp(length: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """A tile's 1-D weights: 1 inside, sin^2 ramps over `overlap` cells at the ends that meet another tile (always
    above 0, so every cell has weight)."""
    w = torch.ones(length, dtype=torch.float64)
    n = min(overlap, length)
    if n:
        edge = torch.sin(math.pi / 2 * (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** 2
        if rise:
            w[:n] = torch.minimum(w[:n], edge)
        if fall:
            w[length - n:] = torch.minimum(w[length - n:], edge.flip(0))
    return w


@dataclass(frozen=True)
class TileLayout:
    """The tiles of one canvas size and their blending weights, normalised so that each cell's sum is 1."""

    height: int
    width: int
    tile: int  # tile side in cells (clipped to the canvas)
    overlap: int  # at least this many cells shared by neighbours

    @cached_property
    def boxes(self) -> list[Box]:
        th, tw = min(self.tile, self.height), min(self.tile, self.width)
        return [(y, x, th, tw) for y in tile_starts(self.height, th, self.overlap)
                for x in tile_starts(self.width, tw, self.overlap)]

    @cached_property
    def weights(self) -> list[torch.Tensor]:
        """Each tile's (1, h, w) share of its cells: its ramps over the sum of every tile's ramps there (a lone tile:
        exactly 1, since w / w is 1 in floating point)."""
        raw = []
        for y, x, h, w in self.boxes:
            rows = ramp(h, self.overlap, y > 0, y + h < self.height)
            cols = ramp(w, self.overlap, x > 0, x + w < self.width)
            raw.append(rows[:, None] * cols[None, :])
        total = torch.zeros(self.height, self.width, dtype=torch.float64)
        for (y, x, h, w), r in zip(self.boxes, raw, strict=True):
            total[y:y + h, x:x + w] += r
        return [(r / total[y:y + h, x:x + w]).float()[None] for (y, x, h, w), r in zip(self.boxes, raw, strict=True)]


class TiledDenoiser:
    """D(x, sigma) of a canvas from `denoiser` on its tiles, `batch` tiles per call (of any of x's rows), blended.

    condition: the canvas' extra network input (inpainting channels, control images) on the same grid, cut like x.
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], tile: int, overlap: int, batch: int,
                 condition: torch.Tensor | None = None):
        if not 0 <= overlap < tile:
            raise ValueError(f"tile overlap must be from 0 to below the tile ({tile}), got {overlap}")
        self.denoiser, self.tile, self.overlap, self.batch = denoiser, tile, overlap, max(1, batch)
        self.condition = condition
        self._layouts: dict[tuple[int, int], TileLayout] = {}

    def layout(self, height: int, width: int) -> TileLayout:
        """The tiles of a canvas of this size (made once per size)."""
        key = (height, width)
        if key not in self._layouts:
            self._layouts[key] = TileLayout(height, width, self.tile, self.overlap)
        return self._layouts[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        layout = self.layout(*x.shape[-2:])
        sigma = sigma.reshape(-1).expand(x.shape[0])
        weights = [w.to(x.device) for w in layout.weights]
        jobs = [(row, k) for row in range(x.shape[0]) for k in range(len(layout.boxes))]
        out: torch.Tensor | None = None
        for start in range(0, len(jobs), self.batch):
            chunk = jobs[start:start + self.batch]
            x_t, s_t, c_t = self._cut(x, sigma, layout, chunk)
            d = self.denoiser(x_t, s_t) if c_t is None else self.denoiser(x_t, s_t, condition=c_t)
            if out is None:
                out = torch.zeros(x.shape, dtype=d.dtype, device=d.device)
            for (row, k), d_tile in zip(chunk, d, strict=True):  # in (row, tile) order, whatever the chunks
                y, x0, h, w = layout.boxes[k]
                out[row, :, y:y + h, x0:x0 + w] += weights[k] * d_tile
        assert out is not None
        return out

    def _cut(self, x: torch.Tensor, sigma: torch.Tensor, layout: TileLayout, chunk: list[tuple[int, int]]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The chunk's tiles of x, their sigmas and (when there is one) their condition."""
        def cut(t: torch.Tensor) -> torch.Tensor:
            parts = []
            for row, k in chunk:
                y, x0, h, w = layout.boxes[k]
                parts.append(t[row:row + 1, :, y:y + h, x0:x0 + w])
            return torch.cat(parts)

        rows = torch.tensor([row for row, _ in chunk], device=sigma.device)
        return cut(x), sigma[rows], None if self.condition is None else cut(self.condition)
