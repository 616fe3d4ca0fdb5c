"""The DDPM network (Ho et al. 2020) for inference, reading diffusers' UNet2DModel configs and weights unchanged.

Why a second implementation: importing diffusers' model classes costs about 2.2 s (it imports
torch._dynamo and transformers), 45% of the main job's wall time on a 2-core CPU, while the DDPM
networks need five small layer types.  This module covers exactly the configurations of the
paper's DDPM models and of `sdedit train` (positional time embedding, DownBlock2D / AttnDownBlock2D /
UpBlock2D / AttnUpBlock2D, single-head attention, no class embedding); `fits` says whether a
config is one of them, and anything else loads through diffusers.  Parameter names equal
diffusers', so the same state dict loads strictly, and tests/test_ddpm_unet.py checks the
outputs against diffusers' UNet2DModel for several configs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_BLOCKS = {"DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"}
_DEFAULTS = {"in_channels": 3, "out_channels": 3, "center_input_sample": False, "time_embedding_type": "positional",
             "freq_shift": 0, "flip_sin_to_cos": True, "layers_per_block": 2, "mid_block_scale_factor": 1,
             "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
             "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
             "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
             "num_class_embeds": None, "num_train_timesteps": None, "time_embedding_dim": None}


def fits(config: dict[str, Any]) -> bool:
    """Whether a UNet2DModel config is one this module reproduces (else use diffusers' class)."""
    c = {**_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    widths = c.get("block_out_channels") or []
    return (c["time_embedding_type"] == "positional" and c["act_fn"] == "silu" and not c["center_input_sample"]
            and c["resnet_time_scale_shift"] == "default" and c["class_embed_type"] is None
            and c["num_class_embeds"] is None and c["downsample_type"] == "conv" and c["upsample_type"] == "conv"
            and c["attn_norm_num_groups"] is None and c["add_attention"]
            and c["attention_head_dim"] is None and c["mid_block_scale_factor"] == 1 and len(widths) >= 1
            and set(c.get("down_block_types", [])) | set(c.get("up_block_types", [])) <= _BLOCKS
            and len(c.get("down_block_types", [])) == len(widths) == len(c.get("up_block_types", [])))


class Resnet(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, and a 1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # In place where a fresh intermediate is overwritten (inference only): the same values, about 4%
        # faster at 256x256 on a 2-core CPU (benchmarks/auto_precision.py).
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h.add_(self.time_emb_proj(F.silu(emb))[:, :, None, None])
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(self.conv_shortcut(x) if self.conv_shortcut is not None else x)


class Attention(nn.Module):
    """Single-head self-attention over the pixels, with a GroupNorm before and the input added after."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(t)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # one head
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return out.add_(x)


class Resample(nn.Module):
    """A 3x3 convolution after nearest 2x upsampling, or with stride 2 for downsampling (padding as configured)."""

    def __init__(self, channels: int, *, up: bool, padding: int = 1):
        super().__init__()
        self.up, self.padding = up, padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=1 if up else padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # the original network's asymmetric padding
        return self.conv(x)


class Block(nn.Module):
    """One resolution level: resnets, each followed by attention when asked, then the resampler."""

    def __init__(self, resnets: list[Resnet], attentions: list[Attention] | None, sampler: Resample | None,
                 up: bool):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions is not None:
            self.attentions = nn.ModuleList(attentions)
        if sampler is not None:
            setattr(self, "upsamplers" if up else "downsamplers", nn.ModuleList([sampler]))


class DDPMUNet(nn.Module):
    """UNet2DModel's forward for the configs `fits` accepts; returns an object with `.sample`, like diffusers."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        c = {**_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
        self.config = c
        widths = list(c["block_out_channels"])
        groups, eps, layers = c["norm_num_groups"], c["norm_eps"], c["layers_per_block"]
        temb = c["time_embedding_dim"] or widths[0] * 4
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1 = nn.Linear(widths[0], temb)
        self.time_embedding.linear_2 = nn.Linear(temb, temb)
        self.conv_in = nn.Conv2d(c["in_channels"], widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        cin = widths[0]
        for i, (kind, cout) in enumerate(zip(c["down_block_types"], widths)):
            last = i == len(widths) - 1
            resnets = [Resnet(cin if j == 0 else cout, cout, temb, groups, eps) for j in range(layers)]
            attn = [Attention(cout, groups, eps) for _ in range(layers)] if kind.startswith("Attn") else None
            sampler = None if last else Resample(cout, up=False, padding=c["downsample_padding"])
            self.down_blocks.append(Block(resnets, attn, sampler, up=False))
            cin = cout
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([Resnet(widths[-1], widths[-1], temb, groups, eps) for _ in range(2)])
        self.mid_block.attentions = nn.ModuleList([Attention(widths[-1], groups, eps)])
        self.up_blocks = nn.ModuleList()
        rev = widths[::-1]
        prev = rev[0]
        for i, (kind, cout) in enumerate(zip(c["up_block_types"], rev)):
            skip_in = rev[min(i + 1, len(rev) - 1)]
            last = i == len(rev) - 1
            resnets = [Resnet((prev if j == 0 else cout) + (skip_in if j == layers else cout), cout, temb, groups, eps)
                       for j in range(layers + 1)]
            attn = [Attention(cout, groups, eps) for _ in range(layers + 1)] if kind.startswith("Attn") else None
            self.up_blocks.append(Block(resnets, attn, None if last else Resample(cout, up=True), up=True))
            prev = cout
        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=eps)
        self.conv_out = nn.Conv2d(widths[0], c["out_channels"], 3, padding=1)

    def time_features(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features of the (possibly fractional) step, as diffusers' Timesteps computes them."""
        c = self.config
        half = self.conv_in.out_channels // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=x.device) / (half - c["freq_shift"])
        args = t.reshape(-1).float().to(x.device)[:, None] * exponent.exp()[None]
        emb = torch.cat([args.sin(), args.cos()], dim=-1)
        if c["flip_sin_to_cos"]:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        return emb.expand(x.shape[0], -1).to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> Any:
        e = self.time_features(t, x)
        emb = self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(e)))
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            for j, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                if hasattr(block, "attentions"):
                    h = block.attentions[j](h)
                skips.append(h)
            if hasattr(block, "downsamplers"):
                h = block.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, emb)
        h = self.mid_block.attentions[0](h)
        h = self.mid_block.resnets[1](h, emb)
        for block in self.up_blocks:
            for j, resnet in enumerate(block.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
                if hasattr(block, "attentions"):
                    h = block.attentions[j](h)
            if hasattr(block, "upsamplers"):
                h = block.upsamplers[0](h)
        return _Output(self.conv_out(F.silu(self.conv_norm_out(h), inplace=True)))


class _Output:
    """The `.sample` attribute diffusers' models return."""

    def __init__(self, sample: torch.Tensor):
        self.sample = sample
