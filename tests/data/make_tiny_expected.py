"""Regenerates tests/data/tiny_expected.pt: the original DDPM network's outputs on tiny.ckpt, for test_reference.py.

What it produces: a dict {t: {"sigma", "x", "eps", "denoised"}} for the steps t in {0, 99, 499, 999} of the linear
beta schedule (1e-4 to 0.02, 1000 steps; sigma_t = sqrt((1 - abar_t) / abar_t), float64), where
  x0 = 2 U[0, 1) - 1 and n ~ N(0, 1), both (2, 3, 32, 32) and drawn once (seed 1, x0 first),
  x = x0 + sigma_t n                    (the variance-exploding form, float32),
  eps = network(sqrt(abar_t) x, t)      (the VP input x / sqrt(1 + sigma_t^2); the step as the time),
  denoised = x - sigma_t eps.
The network is the original DDPM architecture (Ho et al. 2020, as in the DDIM PyTorch port SDEdit released),
written out below in its own state-dict layout so that tiny.ckpt (config tiny.yml) loads strictly into it; it is an
independent reference for sdedit's own network, which maps those keys onto another layout.

Run (CPU, deterministic, a few seconds), from the repository root:
    python tests/data/make_tiny_expected.py /tmp/tiny_expected.pt
    python tests/data/make_tiny_expected.py --check   # rebuild in a temporary folder, compare with the committed file
It rebuilds the committed file bit for bit (every tensor and the file's bytes; torch 2.13 on a 2-core AMD EPYC).
The network runs on THREADS CPU threads: the convolutions' float32 rounding depends on how the work is split, and
one thread gives eps about 3e-6 away from the committed values (another CPU or torch build may differ likewise).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn import functional as F

DATA = Path(__file__).resolve().parent
STEPS = (0, 99, 499, 999)
SHAPE = (2, 3, 32, 32)
SEED = 1
THREADS = 2  # the thread count the committed file was computed with


def swish(x: torch.Tensor) -> torch.Tensor:
    """The original network's nonlinearity, x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups, eps 1e-6, affine, as in the original network."""
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the step: [sin | cos] of t * 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(nn.Module):
    """norm, swish, conv, + step projection, norm, swish, conv; a 1x1 conv on the skip when widths differ."""

    def __init__(self, c_in: int, c_out: int, temb: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = nn.Linear(temb, c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(swish(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels with 1x1 convolutions for q, k, v and the output."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)
        k = self.k(h).reshape(b, c, hh * ww)
        weights = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # (b, query, key)
        out = torch.bmm(self.v(h).reshape(b, c, hh * ww), weights.permute(0, 2, 1))
        return x + self.proj_out(out.reshape(b, c, hh, ww))


class Down(nn.Module):
    """Stride-2 3x3 convolution after padding one pixel on the right and bottom."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    """Nearest-neighbour doubling, then a 3x3 convolution."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DDPM(nn.Module):
    """The original DDPM UNet (resamp_with_conv, no dropout at inference) in its released state-dict layout."""

    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, attn_resolutions: list[int],
                 resolution: int, in_channels: int, out_ch: int):
        super().__init__()
        self.ch, self.levels, self.num_res_blocks = ch, len(ch_mult), num_res_blocks
        temb = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb), nn.Linear(temb, temb)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch * m for m in ch_mult]
        res, c = resolution, ch
        self.down = nn.ModuleList()
        skips = [ch]
        for i, width in enumerate(widths):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResBlock(c, width, temb))
                c = width
                if res in attn_resolutions:
                    level.attn.append(Attention(c))
                skips.append(c)
            if i != self.levels - 1:
                level.downsample = Down(c)
                res //= 2
                skips.append(c)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResBlock(c, c, temb), Attention(c), ResBlock(c, c, temb)
        ups = []
        for i in reversed(range(self.levels)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResBlock(c + skips.pop(), widths[i], temb))
                c = widths[i]
                if res in attn_resolutions:
                    level.attn.append(Attention(c))
            if i != 0:
                level.upsample = Up(c)
                res *= 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out, self.conv_out = group_norm(c), nn.Conv2d(c, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb.dense[1](swish(self.temb.dense[0](step_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for i, level in enumerate(self.down):
            for j in range(self.num_res_blocks):
                h = level.block[j](hs[-1], temb)
                hs.append(level.attn[j](h) if len(level.attn) else h)
            if i != self.levels - 1:
                hs.append(level.downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(self.levels)):
            level = self.up[i]
            for j in range(self.num_res_blocks + 1):
                h = level.block[j](torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def load_network(ckpt: Path, config: Path) -> DDPM:
    """The original network of a released config, with a checkpoint's weights loaded strictly."""
    cfg = yaml.safe_load(config.read_text())
    m, d = cfg["model"], cfg["data"]
    net = DDPM(m["ch"], list(m["ch_mult"]), m["num_res_blocks"], list(m["attn_resolutions"]), d["image_size"],
               m["in_channels"], m["out_ch"])
    net.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
    return net.eval()


def expected(net: DDPM) -> dict[int, dict[str, object]]:
    """The reference record: sigma, x, eps and denoised for each step in STEPS."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, dim=0)
    gen = torch.Generator().manual_seed(SEED)  # the same draws as torch.manual_seed(SEED)
    x0 = torch.rand(SHAPE, generator=gen) * 2 - 1
    noise = torch.randn(SHAPE, generator=gen)
    out: dict[int, dict[str, object]] = {}
    for t in STEPS:
        sigma = ((1 - abar[t]) / abar[t]).sqrt().item()
        x = x0 + sigma * noise
        with torch.no_grad():
            eps = net(x * abar[t].sqrt().item(), torch.full((SHAPE[0],), float(t)))
        out[t] = {"sigma": sigma, "x": x, "eps": eps, "denoised": x - sigma * eps}
    return out


def compare(made: Path, committed: Path) -> bool:
    """Print how a rebuilt file differs from the committed one, tensor by tensor; True when bit for bit."""
    a, b = torch.load(made, weights_only=True), torch.load(committed, weights_only=True)
    same = sorted(a) == sorted(b)
    for t in sorted(b):
        for key, want in b[t].items():
            got = a.get(t, {}).get(key)
            if isinstance(want, torch.Tensor):
                equal = isinstance(got, torch.Tensor) and torch.equal(got, want)
                gap = (got - want).abs().max().item() if isinstance(got, torch.Tensor) else float("nan")
            else:
                equal, gap = got == want, abs(got - want) if isinstance(got, float) else float("nan")
            same &= equal
            print(f"t={t:4d} {key:9s} {'identical' if equal else f'differs by up to {gap:.3g}'}")
    print("bytes " + ("identical" if made.read_bytes() == committed.read_bytes() else "differ"))
    return same


def main(argv: list[str] | None = None) -> int:
    """Write the reference file to the given path, or rebuild it and compare with --check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, help="where to write the file (refused if it exists)")
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder, compare, write nothing")
    args = parser.parse_args(argv)
    if args.check == (args.output is not None):
        parser.error("give an output path or --check")
    torch.set_num_threads(THREADS)
    net = load_network(DATA / "tiny.ckpt", DATA / "tiny.yml")
    with tempfile.TemporaryDirectory() as tmp:
        # torch.save names the archive's folder after the file: the committed file was saved as tiny_ddpm_expected.pt
        made = Path(tmp) / "tiny_ddpm_expected.pt"
        torch.save(expected(net), made)
        if args.check:
            return 0 if compare(made, DATA / "tiny_expected.pt") else 1
        if args.output.exists():
            parser.error(f"{args.output} exists; not overwritten")
        args.output.write_bytes(made.read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
