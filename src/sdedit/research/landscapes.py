"""Procedural landscape images: the built-in training and evaluation data (no data set is reachable offline).

`landscape(seed, size)` is deterministic in its seed: sky gradients for several times of day,
sun or moon, clouds, layered fractal mountain ridges hazing towards the horizon, snow caps,
lakes that mirror the scene, grass, fields, forest, snow or sand, and trees.  Drawn at twice
the size and box-filtered down, in a few milliseconds at 64x64.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Time of day -> (sky top, sky horizon, light colour, haze colour), RGB in [0, 1].
SKIES = {
    "day": ((0.25, 0.45, 0.85), (0.70, 0.82, 0.95), (1.00, 0.98, 0.90), (0.72, 0.80, 0.90)),
    "golden": ((0.35, 0.50, 0.80), (0.98, 0.80, 0.55), (1.00, 0.85, 0.55), (0.90, 0.78, 0.65)),
    "sunset": ((0.30, 0.25, 0.55), (1.00, 0.50, 0.30), (1.00, 0.60, 0.30), (0.80, 0.50, 0.45)),
    "dusk": ((0.10, 0.12, 0.30), (0.55, 0.40, 0.55), (0.90, 0.70, 0.70), (0.45, 0.38, 0.50)),
    "night": ((0.02, 0.03, 0.10), (0.10, 0.14, 0.28), (0.85, 0.88, 1.00), (0.12, 0.15, 0.25)),
    "overcast": ((0.55, 0.58, 0.62), (0.78, 0.80, 0.82), (0.90, 0.90, 0.90), (0.75, 0.77, 0.80)),
}
# Ground kinds -> (base colour, texture colour).
GROUNDS = {
    "grass": ((0.30, 0.55, 0.20), (0.18, 0.40, 0.12)),
    "field": ((0.75, 0.65, 0.30), (0.55, 0.50, 0.20)),
    "forest": ((0.10, 0.28, 0.12), (0.05, 0.18, 0.07)),
    "snow": ((0.90, 0.92, 0.96), (0.70, 0.76, 0.86)),
    "sand": ((0.85, 0.72, 0.50), (0.70, 0.55, 0.35)),
}
ROCK = ((0.42, 0.40, 0.42), (0.35, 0.30, 0.28), (0.30, 0.33, 0.38), (0.45, 0.38, 0.30))


def _noise2d(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1]: octaves of bicubically upsampled random grids."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = cells * 2**o
        grid = rng.random((c + 1, c + 1)).astype(np.float32)
        out += amp * np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))
        total += amp
        amp *= 0.5
    return np.clip(out / total, 0.0, 1.0)


def _ridge(rng: np.random.Generator, w: int, roughness: float) -> np.ndarray:
    """A 1-D fractal outline in roughly [-1, 1] (octaves of interpolated random heights)."""
    x = np.linspace(0.0, 1.0, w)
    out = np.zeros(w)
    amp = 1.0
    for o in range(6):
        n = 2 + 2 ** (o + 1)
        out += amp * np.interp(x, np.linspace(0, 1, n), rng.uniform(-1, 1, n))
        amp *= roughness
    return out / 1.6


def _mix(a: np.ndarray, b, t: np.ndarray | float) -> np.ndarray:
    t = np.asarray(t, np.float32)
    if t.ndim == 2:
        t = t[..., None]
    return a * (1 - t) + np.asarray(b, np.float32) * t


def landscape(seed: int, size: int = 64) -> Image.Image:
    """One landscape, fully determined by seed."""
    rng = np.random.default_rng(seed)
    s = size * 2  # draw at twice the size, then box-filter down
    yy = np.linspace(0.0, 1.0, s, dtype=np.float32)[:, None] * np.ones((1, s), np.float32)
    xx = np.linspace(0.0, 1.0, s, dtype=np.float32)[None, :] * np.ones((s, 1), np.float32)
    tod = rng.choice(list(SKIES), p=[0.35, 0.15, 0.15, 0.1, 0.1, 0.15])
    top, horizon_c, light, haze = (np.array(c, np.float32) * rng.uniform(0.9, 1.1, 3) for c in SKIES[tod])
    horizon = rng.uniform(0.45, 0.7)  # where the land starts, as a fraction of height

    # Sky: vertical gradient.
    t = np.clip(yy / horizon, 0, 1) ** rng.uniform(0.7, 1.6)
    img = _mix(np.broadcast_to(top, (s, s, 3)).copy(), horizon_c, t)

    # Stars at night.
    if tod in ("night", "dusk"):
        stars = rng.random((s, s)) > (0.997 if tod == "night" else 0.999)
        img[stars & (yy < horizon)] = 0.9

    # Sun or moon with a glow.
    if tod != "overcast" and rng.random() < 0.8:
        cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.08, horizon * (0.95 if tod in ("sunset", "golden") else 0.6))
        r = rng.uniform(0.03, 0.07)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        img = _mix(img, light, np.clip(0.5 * np.exp(-((d / (r * 4)) ** 2)), 0, 1))
        img = _mix(img, light, np.clip((r - d) / (r * 0.15), 0, 1))

    # Clouds: stretched fractal noise above a threshold.
    cover = {"overcast": 0.35, "day": 0.55}.get(tod, 0.6) + rng.uniform(-0.1, 0.15)
    n = _noise2d(rng, s, s, cells=3, octaves=4)
    n = np.asarray(Image.fromarray(n).resize((s * 2, s // 2)).resize((s, s)), np.float32)
    clouds = np.clip((n - cover) * 5, 0, 1) * np.clip((horizon - yy) / horizon * 2, 0, 1)
    cloud_col = _mix(light[None, None].repeat(s, 0).repeat(s, 1), haze, 0.4 + 0.3 * (tod == "overcast"))
    img = img * (1 - clouds[..., None] * 0.85) + cloud_col * clouds[..., None] * 0.85

    # Mountain ridges, far to near: higher and hazier in the back, darker and lower in front.
    layers = rng.integers(2, 5)
    rock = np.array(ROCK[rng.integers(len(ROCK))], np.float32)
    if tod in ("night", "dusk"):
        rock = rock * 0.5
    snowy = rng.random() < 0.45
    for k in range(layers):
        depth = k / max(layers - 1, 1)  # 0 far, 1 near
        base = horizon - rng.uniform(0.0, 0.06) * (1 - depth)
        amp = rng.uniform(0.08, 0.4) * (1.1 - 0.6 * depth)
        profile = np.clip((_ridge(rng, s, rng.uniform(0.45, 0.65)) + 1) / 2, 0, 1) ** rng.uniform(1.0, 2.0)
        line = base - amp * profile
        inside = yy >= line[None, :]
        shade = _noise2d(rng, s, s, cells=4 + 2 * k, octaves=3)
        col = _mix(np.broadcast_to(rock, (s, s, 3)).copy(), rock * 0.6, shade)
        if snowy and k < layers - 1:
            cap = line.min() + (horizon - line.min()) * rng.uniform(0.2, 0.45)
            col = _mix(col, (0.92, 0.93, 0.97), np.clip((cap - yy) * 60 + (shade - 0.5), 0, 1))
        col = _mix(col, haze, 0.65 * (1 - depth) ** 1.5)  # aerial perspective
        img = np.where(inside[..., None], col, img)

    # Ground below the horizon line (wavy), textured by kind.
    kind = rng.choice(list(GROUNDS))
    if tod == "night":
        dim = 0.35
    elif tod in ("dusk", "sunset"):
        dim = 0.7
    else:
        dim = 1.0
    g0, g1 = (np.array(c, np.float32) * dim for c in GROUNDS[kind])
    ground_line = horizon + 0.02 * _ridge(rng, s, 0.4)
    ground = yy >= ground_line[None, :]
    tex = _noise2d(rng, s, s, cells=6, octaves=4)
    if kind == "field":  # furrows that converge with distance
        tex = 0.5 + 0.5 * np.sin((xx - 0.5) * 60 / np.maximum(yy - horizon + 0.05, 0.05) * 0.3 + tex * 3)
    gcol = _mix(np.broadcast_to(g0, (s, s, 3)).copy(), g1, tex)
    gcol = _mix(gcol, haze, np.clip((horizon + 0.12 - yy) / 0.12, 0, 1) * 0.5)
    img = np.where(ground[..., None], gcol, img)

    # A lake that mirrors what is above it, with ripples.
    if rng.random() < 0.4:
        top_w = horizon + rng.uniform(0.0, 0.05)
        bottom_w = min(top_w + rng.uniform(0.15, 0.35), 0.98)
        shore = _ridge(rng, s, 0.5) * 0.02
        water = (yy >= top_w + shore[None, :]) & (yy <= bottom_w + shore[None, :])
        rows = np.clip((2 * top_w - yy) * (s - 1), 0, s - 1).astype(int)
        ripple = (np.sin(yy * 400 + xx * 20) * 1.5).astype(int)
        cols = np.clip(np.arange(s)[None, :] + ripple, 0, s - 1)
        mirror = img[rows, cols] * 0.75 + np.array((0.05, 0.1, 0.18), np.float32)
        img = np.where(water[..., None], mirror, img)

    # Trees in the foreground: conifers or round crowns on trunks.
    trees = rng.integers(0, 7) if kind in ("grass", "field", "snow", "forest") else 0
    tree_col = np.array((0.08, 0.25, 0.10), np.float32) * dim * rng.uniform(0.8, 1.2)
    for _ in range(trees):
        tx, ty = rng.uniform(0, 1), rng.uniform(horizon + 0.08, 1.0)
        h = 0.08 + 0.25 * (ty - horizon)
        if rng.random() < 0.6:
            cone = (yy <= ty) & (yy >= ty - h) & (np.abs(xx - tx) <= (yy - (ty - h)) * 0.35)
            img = np.where(cone[..., None], tree_col, img)
        else:
            crown = (xx - tx) ** 2 + ((yy - (ty - h * 0.7)) * 1.2) ** 2 <= (h * 0.35) ** 2
            trunk = (np.abs(xx - tx) <= h * 0.05) & (yy <= ty) & (yy >= ty - h * 0.5)
            img = np.where(trunk[..., None], np.array((0.3, 0.2, 0.1), np.float32) * dim, img)
            img = np.where(crown[..., None], tree_col * 1.3, img)

    arr = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.Resampling.BOX)


def landscapes(start: int, count: int, size: int = 64) -> np.ndarray:
    """count landscapes with seeds start .. start + count - 1, as a uint8 array (count, size, size, 3)."""
    return np.stack([np.asarray(landscape(start + i, size)) for i in range(count)])


# Seeds from here on are never used for training: held-out images for examples and evaluation.
HELD_OUT_START = 10_000_000
