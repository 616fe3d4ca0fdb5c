"""Function-preserving widening of a DDPM UNet2DModel (Net2WiderNet, Chen et al. 2016, adapted to GroupNorm).

Every feature channel c of the source becomes k channels k*c .. k*c + k - 1 holding the same value
(outgoing weights split among the copies by random fractions that sum to 1, which breaks the copies'
symmetry without changing the output). Copies sit next to each other, so every GroupNorm group of the
wide network holds exactly one source group's channels, k times each: its mean and variance, and so the
whole network's output, are the source's. That holds through the up path's concatenations too,
because interleaving commutes with concatenation. The timestep embedding keeps its width and its
frequencies (the wide network's sinusoids include the source's when freq_shift is scaled by k), and
the single-head attention's queries are scaled by 1/sqrt(k) to undo its wider 1/sqrt(d) scaling.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# Config keys that must match between a source and its widened network (widths are the exception).
SAME_LAYOUT = ("sample_size", "in_channels", "out_channels", "layers_per_block", "down_block_types", "up_block_types",
               "norm_num_groups", "attention_head_dim", "flip_sin_to_cos")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def widening_factor(source: dict[str, Any], widths: list[int]) -> int | None:
    """k where widths are k times the source config's block_out_channels (k >= 2), else None."""
    old = source.get("block_out_channels")
    if not isinstance(old, list) or len(old) != len(widths) or not old or not all(_whole(w) and w > 0 for w in old) \
            or widths[0] % old[0]:
        return None
    k = widths[0] // old[0]
    return k if k >= 2 and all(w == k * o for w, o in zip(widths, old)) else None


def time_embedding(source: dict[str, Any]) -> tuple[int, int]:
    """(freq_shift, time_embedding_dim) of the source's timestep embedding; ValueError if they are not whole numbers."""
    shift, dim = source.get("freq_shift", 0), source.get("time_embedding_dim")
    widths = source.get("block_out_channels")
    if dim is None and isinstance(widths, list) and widths:
        dim = 4 * widths[0]  # diffusers' default
    if not (_whole(shift) and shift >= 0 and _whole(dim) and dim > 0):
        raise ValueError(f"its freq_shift ({shift!r}) and time embedding width ({dim!r}) must be whole numbers"
                         " (>= 0 and > 0)")
    return shift, dim


def widened_config(source: dict[str, Any], k: int) -> dict[str, Any]:
    """The UNet2DModel config of the source widened k times (same embedding of t, same output)."""
    shift, dim = time_embedding(source)
    return {**source, "block_out_channels": [k * w for w in source["block_out_channels"]],
            "freq_shift": k * shift, "time_embedding_dim": dim}


def _sinusoid_columns(old_in: int, k: int) -> torch.Tensor:
    """For each of the wide embedding's k*old_in sinusoid features, the source feature it equals (-1: none).

    Frequencies are exp(-ln(P) i / (half - shift)); with half and shift both k times the source's, the
    wide feature k*i has the source feature i's frequency, in each of the sin and cos halves."""
    half = old_in // 2
    index = torch.full((k * old_in,), -1, dtype=torch.long)
    for part in range(2):
        index[part * k * half + k * torch.arange(half)] = part * half + torch.arange(half)
    return index


def _split_fractions(shape: tuple[int, ...], dim: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Random positive fractions along dim that sum to 1 over each run of k copies (broadcastable to shape)."""
    size = [shape[d] if d <= dim else 1 for d in range(len(shape))]
    u = torch.rand(size, generator=generator) + 0.5  # in [0.5, 1.5): no copy gets a tiny or dominant share
    runs = u.unflatten(dim, (shape[dim] // k, k))
    return (runs / runs.sum(dim + 1, keepdim=True)).flatten(dim, dim + 1)


def widen_tensor(name: str, old: torch.Tensor, shape: tuple[int, ...], k: int,
                 generator: torch.Generator) -> torch.Tensor:
    """The wide network's tensor `name` (of `shape`) from the source's: copies on outputs, split inputs."""
    new = old
    for dim, (was, now) in enumerate(zip(old.shape, shape)):
        if now == was:
            continue
        if now != k * was:
            raise ValueError(f"{name}: dimension {dim} goes from {was} to {now}, not {k} times")
        if name == "time_embedding.linear_1.weight" and dim == 1:
            index = _sinusoid_columns(was, k)
            wide = torch.zeros(*new.shape[:1], now, *new.shape[2:], dtype=new.dtype)
            wide[:, index >= 0] = new[:, index[index >= 0]]
            new = wide
        elif dim == 0:
            new = new.repeat_interleave(k, dim=0)
        else:  # an input dimension: the copies' contributions must add up to the source's
            new = new.repeat_interleave(k, dim=dim)
            new = new * _split_fractions(tuple(new.shape), dim, k, generator).to(new.dtype)
    if name.endswith("to_q.weight") or name.endswith("to_q.bias"):
        new = new / math.sqrt(k)  # q.k over k copies is k times larger; 1/sqrt(k d) takes back only sqrt(k)
    if tuple(new.shape) != tuple(shape):
        raise ValueError(f"{name}: widened to {tuple(new.shape)}, the network wants {tuple(shape)}")
    return new.contiguous()


def widen_weights(weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], k: int,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of the k-times wider network (names and shapes in `shapes`) from the source's weights."""
    if weights.keys() != shapes.keys():
        raise ValueError("the source and the wide network have different tensors")
    generator = torch.Generator().manual_seed(seed)
    return {name: widen_tensor(name, weights[name], shapes[name], k, generator) for name in sorted(shapes)}
