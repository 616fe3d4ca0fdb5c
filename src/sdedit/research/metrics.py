"""Faithfulness and realism the SDEdit paper's way: L2 to the guide, and KID between feature sets.

KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets; its std over subsets is the error bar.
Features come from a fixed, seeded random-weight CNN (`RandomConvFeatures`) that runs
offline: random convolutional networks capture texture and colour statistics (Ustyuzhaninov
et al., ICLR 2017 workshop, "What does it take to generate natural textures?"), which is what
separates a blurry or flat image from a realistic one; it is not Inception's KID, so its
numbers are comparable only with each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..control_images import canny_edges
from ..errors import InputError


def l2_distance(outputs: list[Image.Image], guides: list[Image.Image]) -> np.ndarray:
    """Per image: the Euclidean norm of (output - guide) over all pixels and channels, images in [0, 1]."""
    out = []
    for o, g in zip(outputs, guides, strict=True):
        if o.size != g.size:
            g = g.resize(o.size, Image.Resampling.LANCZOS)
        a = np.asarray(o.convert("RGB"), np.float64) / 255.0
        b = np.asarray(g.convert("RGB"), np.float64) / 255.0
        out.append(float(np.sqrt(((a - b) ** 2).sum())))
    return np.array(out)


def _grey(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), np.float64)


def _grey_3x3(img: Image.Image, score: str) -> np.ndarray:
    """The greyscale image for a 3x3-stencil score; ValueError when it is smaller than 3x3."""
    if min(img.size) < 3:
        raise ValueError(f"{score} needs images of at least 3x3 pixels, got {img.size[0]}x{img.size[1]}")
    return _grey(img)


def layout_correlation(outputs: list[Image.Image], guides: list[Image.Image], cells: int = 8) -> np.ndarray:
    """Per image: Pearson correlation of the cells x cells greyscale layouts (box averages) of output and guide.

    What a stroke painting fixes is where its large light and dark shapes are (peaks, sky, sun);
    an 8x8 box average keeps exactly that at 64 px (8 px cells) and drops texture, and a correlation
    ignores a global shift in brightness or contrast, which SDEdit may legitimately make.
    """
    out = []
    for o, g in zip(outputs, guides, strict=True):
        a = _grey(o.resize((cells, cells), Image.Resampling.BOX)).ravel()
        b = _grey(g.resize((cells, cells), Image.Resampling.BOX)).ravel()
        a, b = a - a.mean(), b - b.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        out.append(float((a * b).sum() / denom) if denom > 0 else 0.0)
    return np.array(out)


def sharpness(images: list[Image.Image]) -> np.ndarray:
    """Per image: mean absolute 4-neighbour Laplacian of the greyscale image (0-255 units): edges and texture.

    A soft (blurred) image has a small Laplacian everywhere; compare it with real images' own value.
    """
    out = []
    for img in images:
        g = _grey_3x3(img, "sharpness")
        lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        out.append(float(np.abs(lap).mean()))
    return np.array(out)


EDGE_SHARE = 0.05  # edge_sharpness averages the strongest 5% of the gradient


def edge_sharpness(images: list[Image.Image]) -> np.ndarray:
    """Per image: mean Sobel gradient magnitude (0-255 units per pixel) of its strongest 5% of pixels: its edges.

    Unlike `sharpness`, pixel noise hardly moves it (at a strong edge noise adds to the gradient only in
    quadrature; on 64 px landscapes 2 grey levels of noise add 0.1%), while blur lowers it (a 0.5 px Gaussian by
    about 12%): it scores how steep the edges are, not how noisy the flat areas are.
    """
    out = []
    for img in images:
        p = np.pad(_grey_3x3(img, "edge_sharpness"), 1, mode="edge")
        gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
        gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
        magnitude = np.sort(np.hypot(gx, gy).ravel() / 8)  # /8: a unit-per-pixel ramp has gradient 1
        out.append(float(magnitude[-math.ceil(EDGE_SHARE * magnitude.size):].mean()))
    return np.array(out)


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1) square (a max filter), r >= 0."""
    out = m.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _gradient(img: Image.Image) -> np.ndarray:
    """|grad| of an RGB image (forward differences, channels summed in quadrature), 0-255 units, HxW."""
    a = np.asarray(img.convert("RGB"), np.float64)
    gx = np.zeros_like(a)
    gy = np.zeros_like(a)
    gx[:, :-1] = a[:, 1:] - a[:, :-1]
    gy[:-1] = a[1:] - a[:-1]
    return np.sqrt((gx**2 + gy**2).sum(-1))


def seam_metrics(output: Image.Image, reference: Image.Image, mask: Image.Image, band: int = 4) -> tuple[float, float]:
    """(seam jump, colour shift) of a masked edit against the unedited image, both in 0-255 units.

    seam jump: the mean gradient magnitude of the output on the mask's boundary (a 2-pixel ring
    straddling it) minus the reference's own there, i.e. how much edge the edit adds along its
    border (0: no visible seam beyond the image's own).  colour shift: the length of the mean RGB
    difference between output and reference in a band of `band` pixels just outside the mask,
    i.e. how far the edit bled into what should stay.
    """
    m = np.asarray(mask.convert("L")) >= 128
    ring = _dilate(m, 1) & _dilate(~m, 1)  # pixels within one pixel of both sides
    outside = _dilate(m, band) & ~m
    jump = float(_gradient(output)[ring].mean() - _gradient(reference)[ring].mean()) if ring.any() else 0.0
    return jump, colour_shift(output, reference, outside)


def colour_shift(output: Image.Image, reference: Image.Image, region: np.ndarray | None = None) -> float:
    """The length of the mean RGB difference between output and reference (0-255 units) over a region (bool HxW;
    None: every pixel): how far an edit moved the colours; 0 for an empty region."""
    a = np.asarray(output.convert("RGB"), np.float64)
    b = np.asarray(reference.convert("RGB"), np.float64)
    if region is not None:
        if not region.any():
            return 0.0
        a, b = a[region], b[region]
    return float(np.linalg.norm(a.reshape(-1, 3).mean(0) - b.reshape(-1, 3).mean(0)))


def tile_seam_ratio(image: Image.Image, tile: int, overlap: int) -> tuple[float, float]:
    """(columns, rows): the mean jump between neighbouring columns (rows) where a tile of a tiled edit starts or
    ends, over the mean jump between all other neighbours (0-255 units, RGB): 1 = no grid, above 1 = visible."""
    from ..engine.tiles import tile_starts

    a = np.asarray(image.convert("RGB"), np.float64)
    ratios = []
    for axis, length in ((1, a.shape[1]), (0, a.shape[0])):
        jumps = np.abs(np.diff(a, axis=axis)).mean(axis=(0, 2) if axis == 1 else (1, 2))  # k: between k and k + 1
        side = min(tile, length)
        borders = {e - 1 for s in tile_starts(length, side, overlap) for e in (s, s + side) if 0 < e < length}
        at = np.zeros(len(jumps), bool)
        at[sorted(borders)] = True
        ratios.append(float(jumps[at].mean() / max(jumps[~at].mean(), 1e-9)) if at.any() and (~at).any() else 1.0)
    return ratios[0], ratios[1]


def _edge_map(img: Image.Image) -> np.ndarray:
    """Bool HxW Canny edges (thresholds 100 and 200, as for canny control images) of an image's greyscale."""
    return canny_edges(np.asarray(img.convert("L")))


def _drawn_edges(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Bool HxW edges of an edge map (white on black, binarised at half grey) at (w, h) size: a pixel of the new
    size is an edge when the area it covers holds one (a box reduction; nearest pixels when enlarging)."""
    drawn = Image.fromarray(((np.asarray(img.convert("L")) >= 128) * 255).astype(np.uint8))
    if drawn.size != size:
        drawn = drawn.resize(size, Image.Resampling.BOX)
    return np.asarray(drawn) > 0


def _near_share(edges: np.ndarray, other: np.ndarray, tolerance: int) -> float:
    """The share of `edges`' pixels within `tolerance` px (Euclidean) of a pixel of `other` (non-empty both)."""
    import cv2  # here, not at import: it costs about 0.5 s

    distance = cv2.distanceTransform((~other).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float((distance[edges] <= tolerance + 1e-6).mean())


def edge_f1(outputs: list[Image.Image], controls: list[Image.Image], tolerance: int = 2, *,
            control_is_edges: bool = False) -> np.ndarray:
    """Per image: the boundary F1 of the output's Canny edges against the control image's, with `tolerance` px slack.

    The boundary F-measure of the BSDS benchmark (Martin, Fowlkes and Malik, TPAMI 2004): precision is the share
    of the output's edge pixels within `tolerance` px (Euclidean) of a control edge, recall the share of control
    edge pixels within `tolerance` px of an output edge, F1 = 2PR / (P + R).  Unlike BSDS, pixels are not matched
    one to one (no assignment solver): a distance transform of each edge map tells each pixel how far the nearest
    edge of the other is, as the DAVIS boundary measure does with a dilation; so a double line near a single one
    scores as well as a single one.  Edges are Canny (100, 200) of the greyscale images, the control resized to
    the output's size first (Lanczos).  control_is_edges: the control is already an edge map (a canny or scribble
    conditioning image, white on black), used as drawn, binarised at half grey, not traced again; a scribble
    stroke wider than 2 * tolerance + 1 px cannot be wholly recalled by one-pixel output edges, so score scribbles
    with a tolerance of about half their stroke width.  Neither image with an edge: 1.0 (both agree there is no
    structure); exactly one without: 0.0; edges on both sides that never come within the tolerance: 0.0.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise InputError(f"the edge tolerance must be a whole number of pixels, 0 or more; got {tolerance!r}")
    out = []
    for o, c in zip(outputs, controls, strict=True):
        if control_is_edges:
            ce = _drawn_edges(c, o.size)
        else:
            ce = _edge_map(c if c.size == o.size else c.resize(o.size, Image.Resampling.LANCZOS))
        oe = _edge_map(o)
        if not oe.any() or not ce.any():
            out.append(1.0 if oe.any() == ce.any() else 0.0)
            continue
        precision, recall = _near_share(oe, ce, tolerance), _near_share(ce, oe, tolerance)
        out.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return np.array(out)


class RandomConvFeatures(nn.Module):
    """A seeded random-weight CNN: mean and std of ReLU maps at three scales, plus colour moments (902 numbers)."""

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers, c_in = [], 3
        for c in widths:
            conv = nn.Conv2d(c_in, c, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (9 * c_in)) ** 0.5)
                conv.bias.zero_()
            layers.append(conv)
            c_in = c
        self.convs = nn.ModuleList(layers).requires_grad_(False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch in [0, 1], Bx3xHxW."""
        feats = [x.mean((2, 3)), x.std((2, 3))]
        h = (x - 0.5) / 0.25
        for i, conv in enumerate(self.convs):
            h = torch.relu(conv(h))
            feats += [h.mean((2, 3)), h.std((2, 3))]
            if i < len(self.convs) - 1:
                h = nn.functional.avg_pool2d(h, 2)
        return torch.cat(feats, 1)


FeatureKind = Literal["auto", "inception", "random-cnn"]


class InceptionUnavailable(RuntimeError):
    """torch-fidelity or its Inception weights cannot be had here."""


def inception_extractor() -> Callable[[torch.Tensor], torch.Tensor]:
    """torch-fidelity's InceptionV3 pool features (2048) for uint8 batches; InceptionUnavailable when it cannot load."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise InceptionUnavailable(f"torch-fidelity is not installed ({e})") from None
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).eval()
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError: no weights and no network
        raise InceptionUnavailable(f"its Inception weights are not available offline ({e})") from None

    @torch.inference_mode()
    def extract(u8: torch.Tensor) -> torch.Tensor:
        return net(u8)[0].reshape(len(u8), -1)

    return extract


def feature_extractor(kind: FeatureKind = "auto") -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(name, function from uint8 Bx3xHxW batches to features): Inception when available for auto, else random-CNN."""
    if kind in ("auto", "inception"):
        try:
            return "inception", inception_extractor()
        except InceptionUnavailable:
            if kind == "inception":
                raise
    net = RandomConvFeatures()
    return "random-cnn", lambda u8: net(u8.float() / 255.0)


def image_features(images: list[Image.Image], extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   size: int | None = 64, batch: int = 64) -> torch.Tensor:
    """Features of PIL images (resized to size x size first unless size is None), random-CNN by default."""
    if extractor is None:
        extractor = feature_extractor("random-cnn")[1]
    rows = []
    for i in range(0, len(images), batch):
        ims = [im.convert("RGB") for im in images[i:i + batch]]
        if size is not None:
            ims = [im.resize((size, size), Image.Resampling.BICUBIC) for im in ims]
        arr = np.stack([np.asarray(im) for im in ims])
        rows.append(extractor(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()).double())
    return torch.cat(rows)


MIN_KID_REFERENCE = 20  # real images below which per-feature scales are too noisy for KID to mean anything
KID_MIN_IMAGES = 4  # images a side below which KID is not computed at all (subsets of half the set must differ)


KERNEL_ROWS_MAX = 2_000  # rows per side up to which whole kernel matrices are computed once (32 MB each at most)


def _kernel(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 between the rows of two feature sets."""
    return ((x @ y.T / x.shape[1] + 1) ** 3).numpy()


def kid(fa: torch.Tensor, fb: torch.Tensor, *, subsets: int = 100, subset_size: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """KID between two feature sets: mean and std over random subsets of the unbiased polynomial-kernel MMD^2.

    Subsets hold at most half of the smaller set, so that they differ and their std means something.  Sets of up
    to KERNEL_ROWS_MAX rows have their kernel matrices computed once and indexed (many tiny products are slow on a
    busy machine); larger ones per subset.
    """
    smaller = min(len(fa), len(fb))
    if smaller < KID_MIN_IMAGES:
        raise ValueError(f"KID needs at least {KID_MIN_IMAGES} images on each side")
    n = min(subset_size, smaller // 2)
    rng = np.random.default_rng(seed)
    whole = (_kernel(fa, fa), _kernel(fb, fb), _kernel(fa, fb)) if max(len(fa), len(fb)) <= KERNEL_ROWS_MAX else None
    vals = []
    for _ in range(subsets):
        ia = rng.choice(len(fa), n, replace=False)
        ib = rng.choice(len(fb), n, replace=False)
        if whole is not None:
            kaa, kbb, kab = whole[0][np.ix_(ia, ia)], whole[1][np.ix_(ib, ib)], whole[2][np.ix_(ia, ib)]
        else:
            a, b = fa[ia], fb[ib]
            kaa, kbb, kab = _kernel(a, a), _kernel(b, b), _kernel(a, b)
        off = n * (n - 1)
        mmd = (kaa.sum() - np.trace(kaa)) / off + (kbb.sum() - np.trace(kbb)) / off - 2 * kab.mean()
        vals.append(float(mmd))
    mean, std = float(np.mean(vals)), float(np.std(vals))
    if not (np.isfinite(mean) and np.isfinite(std)):
        raise ValueError("KID is not finite for these feature sets (degenerate features)")
    return mean, std


class KidScore(NamedTuple):
    """KID with its noise."""

    mean: float  # the mean over subsets of the unbiased MMD^2
    std: float  # its std over subsets: the spread of one subset's estimate
    se: float  # the standard error of the mean (kid_standard_error)


def _mmd_parts(fa: torch.Tensor, fb: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Kernel sums of the unbiased MMD^2: off-diagonal row sums within each set, and cross sums per row/column."""
    kaa, kbb, kab = _kernel(fa, fa), _kernel(fb, fb), _kernel(fa, fb)
    return kaa.sum(1) - kaa.diagonal(), kbb.sum(1) - kbb.diagonal(), kab.sum(1), kab.sum(0)


def kid_standard_error(fa: torch.Tensor, fb: torch.Tensor, *, seed: int = 0) -> float:
    """Jackknife standard error (Arvesen 1969) of the unbiased MMD^2 of the whole sets, the value that the mean over
    random subsets estimates: leave each row of either set out in turn, and add the two sides' variances.

    Sets over KERNEL_ROWS_MAX rows are subsampled to it and the variance scaled by KERNEL_ROWS_MAX / rows, its
    first-order rate (an overestimate when the sets come from one distribution, where it falls as 1 / rows^2).
    """
    rng = np.random.default_rng(seed)
    scales, sets = [], []
    for f in (fa, fb):
        if len(f) < 3:
            raise ValueError("KID's standard error needs at least 3 images on each side")
        scales.append(min(1.0, KERNEL_ROWS_MAX / len(f)))
        sets.append(f[rng.choice(len(f), KERNEL_ROWS_MAX, replace=False)] if len(f) > KERNEL_ROWS_MAX else f)
    ra, rb, ca, cb = _mmd_parts(*sets)
    n, m = len(ra), len(rb)
    saa, sbb, sab = ra.sum(), rb.sum(), ca.sum()
    without_a = (saa - 2 * ra) / ((n - 1) * (n - 2)) + sbb / (m * (m - 1)) - 2 * (sab - ca) / ((n - 1) * m)
    without_b = saa / (n * (n - 1)) + (sbb - 2 * rb) / ((m - 1) * (m - 2)) - 2 * (sab - cb) / (n * (m - 1))
    var = sum(scale * (k - 1) / k * float(((x - x.mean()) ** 2).sum())
              for scale, k, x in ((scales[0], n, without_a), (scales[1], m, without_b)))
    return math.sqrt(var)


def kid_score(fa: torch.Tensor, fb: torch.Tensor, *, subsets: int = 100, subset_size: int = 100,
              seed: int = 0) -> KidScore:
    """KID (kid) with its standard error: the jackknife's over the whole sets and the subsets' own sampling error."""
    mean, std = kid(fa, fb, subsets=subsets, subset_size=subset_size, seed=seed)
    se = math.sqrt(kid_standard_error(fa, fb, seed=seed) ** 2 + std**2 / subsets)
    if not math.isfinite(se):
        raise ValueError("KID's standard error is not finite for these feature sets (degenerate features)")
    return KidScore(mean, std, se)


# Images a side below which KID is mostly noise.  Real against real landscapes (random-CNN features, three disjoint
# draws; README 'KID and its noise'): standard error 0.07-0.19 at 100 a side, 0.08-0.20 at 50 and up to 2.5 at 20,
# against a KID of 0.46-0.81 for stroke paintings: from 100 a side a KID ranks what differs clearly.
MIN_KID_SAMPLES = 100


def kid_caution(generated: int, real: int) -> str | None:
    """A warning when either set is below MIN_KID_SAMPLES images (README 'KID and its noise'), else None."""
    if min(generated, real) >= MIN_KID_SAMPLES:
        return None
    return (f"warning: KID from {generated} generated and {real} real images is mostly noise (its standard "
            f"error is printed beside it); below {MIN_KID_SAMPLES} images a side it ranks nothing reliably")


def standardize(reference: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Scale every feature set by the reference set's per-feature mean and std, so no feature dominates the kernel.

    Features (nearly) constant over the reference set have no scale to divide by: dividing by their
    tiny std would blow any difference up to ~1e30, so they are left out.
    """
    if len(reference) < MIN_KID_REFERENCE:
        raise ValueError(f"KID needs at least {MIN_KID_REFERENCE} real images to scale its features by "
                         f"(got {len(reference)}): reported as undefined")
    mu, sd = reference.mean(0), reference.std(0)
    keep = sd > 1e-3 * sd.median().clamp_min(1e-12)
    if not bool(keep.any()):
        raise ValueError("the reference images are all alike (no feature varies): KID is undefined")
    return [((f - mu) / sd)[:, keep] for f in (reference, *others)]
