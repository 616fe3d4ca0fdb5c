"""The `sdedit` command: the only module that reads argv.  Exit codes: 0 ok, 2 bad usage or input, 1 runtime failure.

Each subcommand parses its flags into a RunSettings (settings.py) and hands it on; the
rules of the settings are not repeated here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..control_images import CONTROL_PREPROCESS, DEFAULT_CONTROL_PREPROCESS
from ..crops import DEFAULT_CROP_PADDING
from ..engine.samplers import SAMPLERS
from ..engine.schedules import GRIDS
from ..errors import InputError, ModelUnavailableError
from ..files import printable
from ..loading.presets import BUNDLED_MODELS, CONTROL_PRESETS, DEFAULT_MODEL, PIPELINE_PRESETS, PRESETS, control_table
from ..devices import OFFLOADS, offload_device
from ..families.control import FULL_WINDOW, check_pairing, check_window
from ..loading.controlnets import ControlSpec, control_mode
from ..loading.ip_adapter import IPAdapterSpec
from ..images import open_image
from ..precision import PRECISION_ENV, requested
from ..research.evaluation import EVAL_IMAGES, MAX_EVAL_IMAGES
from ..research.metrics import KID_MIN_IMAGES, MIN_KID_SAMPLES
from ..research.strokes import MAX_COLORS, PAPER_KERNEL, PAPER_SIDE, WORK_AREA
from ..research.training import LIMITS as TRAIN_LIMITS, MAX_BATCH_PIXELS, MAX_LEVELS, MAX_WIDTH, PREVIEW_SHARE
from ..settings import DEFAULT_BATCH_SIZE, DEFAULT_FAITHFULNESS_RMS, DEFAULT_GRID, DEFAULT_GUIDANCE, DEFAULT_PRECISION, \
    DEFAULT_SAMPLER, DEFAULT_STRENGTH_LEVELS, DEFAULT_T0, MAX_FLOWEDIT_SAMPLES, MAX_STRENGTH_LEVELS, METHODS, PRECISIONS, \
    RunSettings, SettingError, check_t0, parse_t0
from .common import Parser, Writer, fit_for, hide_unactionable_warnings, quiet_libraries, quiet_stdout, run_guarded, say
from ..outpainting import DEFAULT_FILL, FILLS
from ..tiling import AUTO_TILE
from .sweep import GRID_SAMPLES, MAX_T0_VALUES, SWEEP_REALS


QUIET_HELP = "print nothing on success: no progress bars, no saved paths or summaries (errors still go to stderr)"


def _add_model(p: argparse.ArgumentParser, threads: bool = True) -> None:
    p.add_argument("--model", help=f"{DEFAULT_MODEL} (default, bundled), a preset ({', '.join(PRESETS)}), "
                                   "a checkpoint file, a diffusers folder or a Hub id")
    p.add_argument("--config", help="for a checkpoint file: the released YAML config or a preset name (DDPM), or for "
                   "a Stable Diffusion single file a diffusers config folder or a pipeline preset (sd1.5, sdxl)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA if present, else CPU)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH_OR_HUB_ID[:SCALE]",
                   help="apply a LoRA (safetensors file, folder or Hub id; scale 1 by default); repeatable")
    if threads:
        _add_threads(p)


def _add_threads(p: argparse.ArgumentParser, default: int | None = None,
                 text: str = "CPU threads for the network (default: one per core; on a busy machine fewer can be "
                             "faster, see README 'Threads')") -> None:
    """--threads N: the CPU threads torch computes with."""
    p.add_argument("--threads", type=int, default=default, help=text)


def check_threads(n: int) -> int:
    """The --threads rule: from 1 to this machine's cores."""
    cores = os.cpu_count() or 1
    if not 1 <= n <= cores:
        raise InputError(f"--threads must be from 1 to {cores} (this machine's cores), got {n}")
    return n


def _add_offload(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offload", choices=list(OFFLOADS), default="none",
                   help="latent models on a GPU short of memory: keep the networks in CPU memory and move each to "
                        "the GPU while it runs (model) or stream them layer by layer (sequential, slowest); "
                        "at bf16/fp16 the weights are stored in it (none)")


def _add_run(p: argparse.ArgumentParser, *, seed_help: str) -> None:
    """The flags of one SDEdit run (edit and batch)."""
    p.add_argument("--t0", type=_t0_arg, help="noise level in (0, 1] (default: the model's recommended t0, see "
                                             "'sdedit models'), or 'auto': per image the largest t0 within "
                                             "--faithfulness")
    p.add_argument("--faithfulness", type=float, metavar="L2",
                   help="--t0 auto's budget: L2 distance to the guide at the model's resolution, pixels in [0, 1] "
                        f"(default {DEFAULT_FAITHFULNESS_RMS} x sqrt(3 x width x height): 8.45 at 64x64)")
    p.add_argument("--steps", type=int, help="reverse steps from t0 to 0 (default: per sampler and t0; "
                                             f"10 for {DEFAULT_SAMPLER} at t0 = 0.5)")
    p.add_argument("--repeats", "-K", type=int, help="K: repeat noise-and-denoise (1)")
    p.add_argument("--sampler", choices=list(SAMPLERS), help=f"reverse sampler ({DEFAULT_SAMPLER})")
    p.add_argument("--schedule", choices=list(GRIDS),
                   help=f"spacing of the steps from t0: uniform in t or karras (rho 7) in sigma ({DEFAULT_GRID})")
    p.add_argument("-n", "--num", type=int, help="outputs per input (1)")
    p.add_argument("--seed", type=int, help=seed_help)
    p.add_argument("--batch-size", type=int, help=f"samples per network call ({DEFAULT_BATCH_SIZE})")
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="network precision: auto (default: the faster of fp32 and bf16 autocast, bf16 only if 1.1x "
                        "faster, timed once on this machine for the network and shape, then cached; see 'sdedit "
                        f"models'), fp32, bf16 or fp16; {PRECISION_ENV} sets the default")
    p.add_argument("--mask-grow", type=int, default=0, help="grow the mask by this many pixels (0)")
    p.add_argument("--mask-feather", type=int, default=0,
                   help="feather the mask outward by this many pixels: the band blends into the photo (0)")
    _add_crop(p)
    _add_tiles(p)
    p.add_argument("--color-match", action="store_true",
                   help="keep the guide's colour statistics (mean and spread per CIELAB channel, inside the edited "
                        "region) after each repeat: no colour drift in unmasked edits and -K loops")
    p.add_argument("--fit", choices=["crop", "stretch"],
                   help="non-square inputs to a square (pixel) model: centre-crop (default) or stretch; latent "
                        "models take the whole input")
    p.add_argument("--model-size", dest="original_size", action="store_false",
                   help="outputs at the size the model worked at (default: at the size of the input they edit)")
    p.add_argument("--original-size", dest="original_size", action="store_true",
                   help="outputs at the size of the input they edit (the default; kept for older scripts)")
    p.add_argument("--full-size", action="store_true",
                   help="latent models: work on an input over 4x the model's trained area at its own size (slow) "
                        "instead of at that area")
    p.add_argument("--prompt", help="text-conditioned (Stable Diffusion) models: what the result should show")
    p.add_argument("--negative-prompt", help="... and what it should not (the unconditional branch)")
    p.add_argument("--guidance", type=float, help=f"classifier-free guidance weight (the model's: {DEFAULT_GUIDANCE}, "
                                                        "3.5 for FLUX.1 dev's embedded guidance, 4 for Qwen-Image; "
                                                        "1 = none)")
    _add_method(p)
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)


def _add_method(p: argparse.ArgumentParser) -> None:
    """--method and FlowEdit's settings."""
    p.add_argument("--method", choices=list(METHODS),
                   help="sdedit (the default: noise the input to t0, denoise) or flowedit (flow models: move along "
                        "the difference of the --prompt and --source-prompt velocities, no noise added; Kulikov et "
                        "al. 2025)")
    p.add_argument("--source-prompt", help="FlowEdit: what the input shows (--prompt: what it should show)")
    p.add_argument("--source-guidance", type=float, help="FlowEdit: the source branch's guidance (the run's)")
    p.add_argument("--flowedit-samples", type=int, metavar="N",
                   help=f"FlowEdit: noise draws averaged per step, 2 network calls each (1; up to "
                        f"{MAX_FLOWEDIT_SAMPLES})")


def _add_control(p: argparse.ArgumentParser, images: bool = True) -> None:
    """ControlNet flags (latent families); images=False: each input steers its ControlNets itself."""
    p.add_argument("--controlnet", action="append", default=[], metavar="MODEL[:SCALE]",
                   help="run a ControlNet beside the network (diffusers folder, single .safetensors file, Hub id or "
                        "control preset, see 'sdedit models'; scale 1 by default); repeatable, their effects add")
    if images:
        p.add_argument("--control-image", action="append", default=[], type=Path, metavar="IMAGE",
                       help="the control image of each --controlnet, paired in order (default: the input itself "
                            "steers)")
    p.add_argument("--control-mode", action="append", default=[], metavar="TYPE",
                   help="union ControlNets: the control type of each --controlnet, paired in order (a name of its "
                        "preset, e.g. canny or depth, or an index)")
    p.add_argument("--control-preprocess", choices=list(CONTROL_PREPROCESS), default=DEFAULT_CONTROL_PREPROCESS,
                   help="make the control images into canny edges or scribbles first, without network weights "
                        f"({DEFAULT_CONTROL_PREPROCESS}: use them as they are, e.g. a depth or pose map)")
    p.add_argument("--control-start", type=float, default=FULL_WINDOW[0], metavar="T",
                   help="the ControlNets act from time t = T of the schedule (1 = pure noise; default 1: from the "
                        "first step), exactly, never snapped to a step")
    p.add_argument("--control-end", type=float, default=FULL_WINDOW[1], metavar="T",
                   help="... until time t = T (0 = the image; default 0: to the last step)")


def _add_ip_adapter(p: argparse.ArgumentParser) -> None:
    """IP-Adapter flags (Stable Diffusion 1.x/2.x and SDXL): an image as a prompt."""
    p.add_argument("--ip-adapter", action="append", default=[], metavar="MODEL[:SCALE]",
                   help="an IP-Adapter (SD 1.x/2.x, SDXL): a reference image as a prompt; a .safetensors file with "
                        "its CLIP image encoder in image_encoder/ beside it, or a preset (see 'sdedit models'); "
                        "scale 1 by default, lower keeps more of the text prompt; repeatable")
    p.add_argument("--ip-image", action="append", default=[], type=Path, metavar="IMAGE",
                   help="the reference image of each --ip-adapter, paired in order")


def ip_adapter_options(a: argparse.Namespace) -> dict[str, Any]:
    """load_model's IP-Adapter argument from the flags, the reference images read before any model loads."""
    if len(a.ip_image) != len(a.ip_adapter):
        raise InputError(f"{len(a.ip_image)} --ip-image for {len(a.ip_adapter)} --ip-adapter: give one reference "
                         f"image per IP-Adapter, in order")
    for path in a.ip_image:
        open_image(path)  # unreadable, too large or missing: one line before the model loads
    return {"ip_adapters": [IPAdapterSpec.parse(text, path) for text, path in zip(a.ip_adapter, a.ip_image,
                                                                                   strict=True)]}


def control_options(a: argparse.Namespace) -> dict[str, Any]:
    """load_model's ControlNet arguments from the flags, checked before any model loads."""
    images = getattr(a, "control_image", [])
    if (a.control_mode or (a.control_start, a.control_end) != FULL_WINDOW or images) and not a.controlnet:
        names = "--control-image, " if hasattr(a, "control_image") else ""
        raise InputError(f"{names}--control-mode, --control-start and --control-end steer ControlNets: give "
                         f"--controlnet")
    check_pairing(len(images), len(a.controlnet), a.control_preprocess)
    if a.control_mode and len(a.control_mode) != len(a.controlnet):
        raise InputError(f"{len(a.control_mode)} --control-mode for {len(a.controlnet)} --controlnet: give one per "
                         f"ControlNet, in order")
    for path in images:
        open_image(path)  # unreadable, too large or missing: one line before the model loads
    specs = [ControlSpec.parse(text) for text in a.controlnet]
    if a.control_mode:
        specs = [control_mode(spec, mode) for spec, mode in zip(specs, a.control_mode, strict=True)]
    return {"controlnets": specs, "control_window": check_window(a.control_start, a.control_end)}


def check_control_scale(x: float) -> float:
    """A ControlNet scale: a finite number."""
    if not math.isfinite(x):
        raise InputError(f"--control-scale must be a finite number, got {x}")
    return x


def _add_strength_levels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strength-levels", type=int, metavar="N",
                   help=f"a strength map with more grey levels is posterized to N evenly spaced ones first (default "
                        f"{DEFAULT_STRENGTH_LEVELS}, at most {MAX_STRENGTH_LEVELS}): each level costs one more step")


def check_longest_name(outdir: Path, stem: str) -> None:
    """Before sampling: the longest output name `STEM_s<seed>-<n>.png` a run may write (and its temporary's) fits."""
    from ..files import MAX_FREE_NAMES, check_output_file
    from ..settings import MAX_SEED

    check_output_file(outdir / f"{stem}_s{MAX_SEED}-{MAX_FREE_NAMES}.png")


def strength_levels_option(levels: int | None, maps: bool, flag: str) -> int:
    """--strength-levels: checked before any work, and only with strength maps (it acts on nothing else)."""
    from ..api import check_strength_levels

    if levels is not None and not maps:
        raise InputError(f"--strength-levels posterizes strength maps: give {flag} too")
    levels = DEFAULT_STRENGTH_LEVELS if levels is None else levels
    check_strength_levels(levels)
    return levels


def _add_crop(p: argparse.ArgumentParser) -> None:
    """--crop-to-mask [PADDING] and --no-crop-to-mask (default: on when the input is larger than the model)."""
    p.add_argument("--crop-to-mask", nargs="?", const=True, type=int, metavar="PADDING",
                   help="edit only the mask's box plus PADDING pixels of context (default "
                        f"{DEFAULT_CROP_PADDING}) at the model's resolution, and return the whole photo; on by "
                        "default when the input is larger than the model and a mask is given")
    p.add_argument("--no-crop-to-mask", dest="crop_to_mask", action="store_const", const=False,
                   help="resize the whole input to the model instead")


def _add_tiles(p: argparse.ArgumentParser) -> None:
    """--tile SIZE|auto and --tile-overlap PX: tiled SDEdit at the input's own size."""
    p.add_argument("--tile", type=_tile_arg, metavar="SIZE",
                   help="edit the input at its own size (any size and aspect) in tiles of SIZE pixels, or 'auto' "
                        "(the model's resolution): the network runs on overlapping tiles, blended at every step")
    p.add_argument("--tile-overlap", type=int, metavar="PX",
                   help="pixels neighbouring tiles share, at most half the tile (a quarter of it)")


def _tile_arg(text: str) -> int | str:
    """argparse type of --tile: a whole number of pixels or 'auto' (checked against the model once loaded)."""
    if text.strip().lower() == AUTO_TILE:
        return AUTO_TILE
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels or 'auto', got {text!r:.40}") from None


def check_tile_flags(a: argparse.Namespace) -> None:
    """Flags that do not act on a tiled edit, refused before any work."""
    if a.tile is None and a.tile_overlap is not None:
        raise InputError("--tile-overlap needs --tile")
    if a.tile is not None:
        for flag, given in (("--fit", a.fit is not None), ("--full-size", a.full_size)):
            if given:
                raise InputError(f"{flag} does not act on a tiled edit (it works on the whole input at its own "
                                 f"size): leave it out")


def _crop_option(a: argparse.Namespace) -> bool | int | None:
    """--crop-to-mask's value, its padding checked before any work."""
    from ..crops import MAX_CROP_PADDING, check_padding

    value = a.crop_to_mask
    if value is None or isinstance(value, bool):
        return value
    try:
        return check_padding(value)
    except InputError:
        raise InputError(f"--crop-to-mask PADDING must be a whole number of pixels from 0 to {MAX_CROP_PADDING}, "
                         f"got {value}") from None


def _t0_arg(text: str) -> float | str:
    """argparse type of --t0: a number in (0, 1] or 'auto'."""
    try:
        return parse_t0(text)
    except SettingError as e:
        raise argparse.ArgumentTypeError(e.rule) from None


def _t0_number(text: str) -> float:
    """argparse type of sweep's --t0: a number in (0, 1] (each value is a column of the grid: no 'auto')."""
    try:
        return check_t0(float(text))
    except (ValueError, SettingError):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None


FLAGS = {"faithfulness": "--faithfulness", "t0": "--t0", "steps": "--steps", "repeats": "--repeats", "sampler": "--sampler", "num_samples": "-n", "grid": "--schedule",
         "seed": "--seed", "batch_size": "--batch-size", "precision": "--precision", "prompt": "--prompt",
         "negative_prompt": "--negative-prompt", "guidance": "--guidance", "color_match": "--color-match",
         "method": "--method", "source_prompt": "--source-prompt", "source_guidance": "--source-guidance",
         "flowedit_samples": "--flowedit-samples"}


def settings_for_flags(**given: Any) -> RunSettings:
    """RunSettings(**given) (None = the default), its errors naming the command-line flag."""
    try:
        return RunSettings(**{k: v for k, v in given.items() if v is not None})
    except SettingError as e:
        raise InputError(f"{FLAGS[e.field]} {e.rule}") from None


def run_settings(a: argparse.Namespace, **fixed: Any) -> RunSettings:
    """The RunSettings a command line asks for (unset flags take the defaults)."""
    given = dict(t0=a.t0, steps=a.steps, repeats=a.repeats, sampler=a.sampler, num_samples=a.num, seed=a.seed,
                 batch_size=a.batch_size, precision=a.precision, prompt=a.prompt, negative_prompt=a.negative_prompt,
                 guidance=a.guidance, faithfulness=a.faithfulness, grid=a.schedule,
                 color_match=getattr(a, "color_match", False) or None, method=a.method, source_prompt=a.source_prompt,
                 source_guidance=a.source_guidance, flowedit_samples=a.flowedit_samples)
    settings = settings_for_flags(**{**given, **fixed})
    if settings.method == "flowedit" and a.sampler is not None:
        raise InputError("--sampler does not act on FlowEdit (it takes its own Euler steps): leave it out")
    return settings


def _parser() -> Parser:
    p = Parser(prog="sdedit", description="SDEdit: turn stroke paintings into images and edit images with strokes.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser,
                           help="what to do; `sdedit COMMAND --help` lists its options")

    e = sub.add_parser("edit", help="run SDEdit on an image (stroke painting or image with strokes)")
    e.add_argument("input", type=Path, help="guide image (any size and mode)")
    e.add_argument("--mask", type=Path, help="mask image of the same size: white = edit, black = keep")
    e.add_argument("--strength-map", type=Path,
                   help="instead of a mask, per-pixel t0 (greyscale, same size): white = t0, grey g = t0 * g, "
                        "black = keep; each grey level is entered exactly (one more step per level)")
    _add_strength_levels(e)
    _add_model(e)
    _add_run(e, seed_help="seed of the first output; output j uses seed + j (random)")
    _add_control(e)
    _add_ip_adapter(e)
    _add_offload(e)
    e.add_argument("-o", "--outdir", type=Path, default=Path("outputs"), help="output folder (outputs)")
    e.add_argument("--overwrite", action="store_true", help="replace existing output files (default: new names)")
    e.add_argument("--compile", action="store_true", help="torch.compile the network (slow first call)")

    c = sub.add_parser("composite", help="paste a patch into an image and let SDEdit blend it in (paper Sec. 4.3)")
    c.add_argument("background", type=Path, help="the scene")
    c.add_argument("patch", type=Path, help="the object to paste (its alpha, if any, is the shape edited)")
    c.add_argument("--at", required=True, help="X,Y of the patch's top-left corner in the background, pixels "
                                               "(negative values as --at=-5,10)")
    c.add_argument("--scale", type=float, default=1.0, help="scale the patch by this factor first (1)")
    c.add_argument("--mask-grow", type=int, default=4, help="grow the patch's mask by this many pixels (4)")
    c.add_argument("--mask-feather", type=int, default=8, help="feather it outward by this many pixels (8)")
    _add_crop(c)
    _add_model(c)
    for flag, kind, text in (("--t0", _t0_arg, "noise level in (0, 1] or 'auto' (the model's recommended t0)"),
                             ("--steps", int, "steps"),
                             ("--seed", int, "seed of the first output"), ("--prompt", str, "text-conditioned models"),
                             ("--guidance", float, "classifier-free guidance weight")):
        c.add_argument(flag, type=kind, help=text)
    c.add_argument("--sampler", choices=list(SAMPLERS), help=f"reverse sampler ({DEFAULT_SAMPLER})")
    c.add_argument("-n", "--num", type=int, help="outputs (1)")
    c.add_argument("-o", "--outdir", type=Path, default=Path("outputs"), help="output folder (outputs)")
    c.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)

    o = sub.add_parser("outpaint", help="grow an image beyond its borders: the new region generated, the seam blended")
    o.add_argument("input", type=Path, help="the image to extend")
    for side in ("left", "right", "top", "bottom"):
        o.add_argument(f"--{side}", type=int, default=0, metavar="PX", help=f"pixels to add on the {side} (0)")
    o.add_argument("--fill", choices=list(FILLS), default=DEFAULT_FILL,
                   help="how the new region is pre-filled before the edit: the nearest edge pixel, that blurred, "
                        f"noise or the mean colour of the image ({DEFAULT_FILL}); it steers the seam band")
    o.add_argument("--band", type=int, metavar="PX",
                   help="width of the band along the seam that starts from the fill at --t0, rising to t0 1 "
                        "(a quarter of the model's resolution)")
    o.add_argument("--t0", type=_t0_number, help="the band's t0 next to the seam (the model's recommended t0); "
                                                 "the rest of the new region starts at t0 1")
    _add_tiles(o)
    o.add_argument("--color-match", action="store_true",
                   help="give the new region the original's colour statistics (per CIELAB channel)")
    _add_model(o)
    for flag, kind, text in (("--steps", int, "reverse steps from t0 1 (default: per sampler)"),
                             ("--seed", int, "seed of the first output (and of the noise fill)"),
                             ("--batch-size", int, f"samples per network call, tiles when tiled ({DEFAULT_BATCH_SIZE})"),
                             ("--prompt", str, "text-conditioned models: what the new region should show"),
                             ("--negative-prompt", str, "... and what it should not"),
                             ("--guidance", float, "classifier-free guidance weight")):
        o.add_argument(flag, type=kind, help=text)
    o.add_argument("--sampler", choices=list(SAMPLERS), help=f"reverse sampler ({DEFAULT_SAMPLER})")
    o.add_argument("--precision", choices=list(PRECISIONS), help="network precision (auto)")
    o.add_argument("-n", "--num", type=int, help="outputs (1)")
    o.add_argument("-o", "--outdir", type=Path, default=Path("outputs"), help="output folder (outputs)")
    o.add_argument("--overwrite", action="store_true", help="replace existing output files (default: new names)")
    o.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)

    t = sub.add_parser("train", help="train a DDPM on a folder of images or the built-in landscapes")

    def bounded(name: str, text: str) -> str:  # the help of a number, with its bounds (research.training.LIMITS)
        return f"{text}; {TRAIN_LIMITS[name].text()}"

    t.add_argument("-o", "--out", type=Path, required=True, help="run folder: the model, and its training state")
    t.add_argument("--data", help="'synthetic' (built-in landscapes, the default) or a folder of images")
    t.add_argument("--size", type=int, help=bounded("size", "training resolution (64), a multiple of 2^(levels - 1)"))
    t.add_argument("--widths", help=f"UNet channels per level (32,64,64,64); 1 to {MAX_LEVELS} levels of 1 to "
                                    f"{MAX_WIDTH}")
    t.add_argument("--attn-res", help="resolutions with attention, comma-separated, each a level's (16)")
    t.add_argument("--layers-per-block", type=int, help=bounded("layers_per_block", "residual blocks per level (2)"))
    t.add_argument("--batch-size", type=int, help=bounded("batch_size", "images per step (32)")
                   + f"; at most {MAX_BATCH_PIXELS:,} pixels a step")
    t.add_argument("--lr", type=float, help=bounded("lr", "peak learning rate (5e-4)"))
    t.add_argument("--lr-schedule", help="after warm-up: constant (the default) or cosine (decayed to 0 at --max-steps)")
    t.add_argument("--ema-decay", type=float, help=bounded("ema_decay", "EMA decay of the weights (0.999)"))
    t.add_argument("--num-images", type=int, help=bounded("num_images", "synthetic images to train on (20000), each "
                                                                        "made the first time a batch draws it"))
    t.add_argument("--max-steps", type=int, help=bounded("max_steps", "stop at this step count (over all sittings)"))
    t.add_argument("--minutes", type=float,
                   help=bounded("minutes", "this command's whole time, from its start: setup, data, training, the "
                                f"preview grid (its steps fit in {PREVIEW_SHARE * 100:.0f}%% of it) and the writing; at "
                                "least one step is always trained"))
    t.add_argument("--save-every", type=float, help=bounded("save_every", "minutes between checkpoints (5)"))
    t.add_argument("--seed", type=int, help=bounded("seed", "seed of the weights and the data order (0)"))
    t.add_argument("--init-from", help="start from this DDPM folder or bundled model's weights (the same network, "
                                       "or widened exactly when --widths are a whole multiple of its)")
    t.add_argument("--t-split", type=int, help=bounded("t_split", "timesteps below this get --low-t-share of the "
                                                                  "steps (700)"))
    t.add_argument("--low-t-share", type=float, help=bounded("low_t_share", "share of steps drawn below --t-split "
                                                                            "(0.8)"))
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="auto (bf16 autocast where the device runs it natively), fp32 or bf16")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA if present)")
    _add_threads(t)
    t.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)

    k = sub.add_parser("strokes", help="simulate a stroke painting (median filter + adaptive palette)")
    k.add_argument("input", type=Path, help="the photo to paint (any size and mode); the painting keeps its size")
    k.add_argument("-o", "--out", type=Path, required=True, help="output PNG (a taken name gets -1, -2, ...)")
    k.add_argument("--colors", type=int, default=6, help=f"palette size, 1 to {MAX_COLORS} (6, as in the paper)")
    k.add_argument("--kernel", type=int,
                   help=f"median kernel in the input's pixels, odd, at most its shorter side (default: {PAPER_KERNEL} "
                        f"at {PAPER_SIDE} px, scaled with the image); inputs over {WORK_AREA:,} pixels are filtered "
                        "at that area with the kernel scaled alike")
    k.add_argument("--overwrite", action="store_true", help="replace an existing output file (default: a new name)")

    v = sub.add_parser("eval", help="the paper's protocol: strokes of real images -> SDEdit -> L2 and KID")
    _add_model(v)
    v.add_argument("--data", default="synthetic", help="'synthetic' (held-out landscapes) or a folder of images")
    v.add_argument("--real", help="folder of real images for KID, the first --n by path (default: a disjoint "
                                  "held-out block, or --data)")
    v.add_argument("--n", type=int,
                   help=f"images turned into strokes, 2 to {MAX_EVAL_IMAGES:,} ({EVAL_IMAGES}); KID is mostly noise "
                        f"below {MIN_KID_SAMPLES}; with --edits: the first N rows of edits.csv (all)")
    v.add_argument("--t0", type=_t0_arg, nargs="+", default=[None],
                   help="t0 values to evaluate, numbers or 'auto' (default: the model's recommended t0)")
    v.add_argument("--sampler", nargs="+", choices=list(SAMPLERS), default=[DEFAULT_SAMPLER],
                   help=f"reverse samplers to evaluate ({DEFAULT_SAMPLER})")
    v.add_argument("--steps", type=int, nargs="+", help="step counts to try (default: the sampler's default)")
    v.add_argument("--repeats", "-K", type=int, default=1, help="K: repeat noise-and-denoise (1)")
    v.add_argument("--prompt", help="text-conditioned models: the prompt for every image")
    v.add_argument("--colors", type=int, default=6, help=f"stroke palette size, 1 to {MAX_COLORS} (6)")
    v.add_argument("--features", choices=["auto", "inception", "random-cnn"], default="auto",
                   help="KID features: Inception (torch-fidelity) when its weights are available, else random-CNN")
    v.add_argument("--seed", type=int, default=0, help="image i of the set is edited with seed + i (0)")
    v.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP + "; the tables are in the output folder")
    _add_control(v, images=False)
    v.add_argument("--control-scale", type=float, nargs="+", metavar="S",
                   help="ControlNets: rows at each of these scales (every ControlNet at that scale; default: as given)")
    v.add_argument("--masked", action="store_true",
                   help="masked edits instead: each image's ellipse replaced by its strokes, pasted back with a hard "
                        "mask, a feathered mask and a strength map; adds seam jump and colour shift")
    v.add_argument("--edits", type=Path, metavar="FOLDER",
                   help="text edits instead: FOLDER/edits.csv's rows (columns image, source_prompt, target_prompt, "
                        "optional mask: a mask file, white = edit) edited by each --method at each t0 on the same "
                        "seeds; L2 and layout correlation to the source, L2 inside and outside masks, CLIP score and "
                        "LPIPS where their weights are on this machine; adds eval-rows.csv and eval.png")
    v.add_argument("--method", nargs="+", choices=list(METHODS),
                   help="--edits: the methods compared on the same rows (sdedit and flowedit on a flow model, else "
                        "sdedit)")
    v.add_argument("--guidance", type=float, help="text-conditioned models: classifier-free guidance weight (the "
                                                  "model's)")
    v.add_argument("--source-guidance", type=float, help="--edits, FlowEdit: the source branch's guidance (the run's)")
    v.add_argument("--flowedit-samples", type=int, metavar="N",
                   help=f"--edits, FlowEdit: noise draws averaged per step, 1 to {MAX_FLOWEDIT_SAMPLES} (1)")
    v.add_argument("-o", "--outdir", type=Path, default=Path("eval-results"),
                   help="output folder for eval.md, eval.json and eval.csv; a taken name gets -1, -2, ... "
                        "(eval-results)")

    w = sub.add_parser("sweep", help="one input over a range of t0: a labelled grid and a realism/faithfulness plot")
    w.add_argument("input", type=Path, help="guide image (stroke painting, or photo with strokes)")
    w.add_argument("--mask", type=Path, help="mask image of the same size: white = edit, black = keep")
    _add_model(w)
    w.add_argument("--t0", type=_t0_number, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                   help=f"t0 values in (0, 1], the grid's columns, at most {MAX_T0_VALUES} (0.1 0.2 ... 1.0)")
    w.add_argument("--sampler", nargs="+", choices=list(SAMPLERS), default=[DEFAULT_SAMPLER],
                   help=f"reverse samplers, one group of rows each ({DEFAULT_SAMPLER})")
    w.add_argument("--steps", type=int, help="steps per run (default: the sampler's default for each t0)")
    w.add_argument("-n", "--num", type=int, default=8,
                   help=f"samples per setting (8): L2 and KID use all, the grid shows the first {GRID_SAMPLES}; KID "
                        f"needs at least {KID_MIN_IMAGES} and is mostly noise below {MIN_KID_SAMPLES}")
    w.add_argument("--seed", type=int, default=0, help="sample j uses seed + j, the same for every setting (0)")
    w.add_argument("--prompt", help="text-conditioned models: the prompt")
    w.add_argument("--real", help=f"folder of real images (the first {SWEEP_REALS} by path): adds KID against them "
                                  f"(default for the landscapes model: {SWEEP_REALS} held-out landscapes)")
    w.add_argument("-o", "--outdir", type=Path, default=Path("outputs"),
                   help="output folder for <input>-sweep-grid.png and <input>-sweep-plot.png (outputs)")
    w.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)

    b = sub.add_parser("batch", help="SDEdit every image of a folder: resumable, one mask per image, many processes")
    b.add_argument("input_dir", type=Path, help="folder of guide images (top level)")
    b.add_argument("-o", "--outdir", type=Path, required=True, help="output folder (not inside the input folder)")
    maps = b.add_mutually_exclusive_group()
    maps.add_argument("--masks", type=Path, help="folder of masks matched by file name stem: white = edit")
    maps.add_argument("--strength-maps", type=Path,
                      help="instead of masks, a folder of strength maps (per-pixel t0) matched by file name stem")
    _add_strength_levels(b)
    b.add_argument("--unmasked", choices=["fail", "edit"], default="fail",
                   help="an image with no mask in the masks folder: record it as failed (default) or edit it whole")
    _add_model(b, threads=False)
    _add_threads(b, 1, "CPU threads per process (1: files identical whatever the process count; "
                       "use torchrun --nproc_per_node N for N cores)")
    _add_run(b, seed_help="item seeds derive from (seed, file name) (0)")
    _add_control(b)
    _add_ip_adapter(b)
    _add_offload(b)

    u = sub.add_parser("ui", help="start the web app: paint strokes or paint on a photo, in the browser")
    u.add_argument("--model", help=f"an extra model to offer and select first (default: {DEFAULT_MODEL}); "
                                   "bundled models and downloaded presets are always offered")
    u.add_argument("--config", help="for a checkpoint file given with --model: its YAML config or preset name, or a "
                   "diffusers config folder / pipeline preset for a Stable Diffusion single file")
    u.add_argument("--port", type=int, default=7860, help="port (7860)")
    u.add_argument("--listen", action="store_true", help="serve on all interfaces (needs --auth)")
    u.add_argument("--auth", help="USER:PASS required to open the app (visible to other users in `ps`: prefer "
                                  "--auth-file or the SDEDIT_UI_AUTH environment variable)")
    u.add_argument("--auth-file", type=Path, help="a file whose first line is USER:PASS")
    u.add_argument("--queue-size", type=int, default=8, help="runs that may wait; more get a 'busy' message (8)")
    u.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA if present)")
    u.add_argument("--lora", action="append", default=[], metavar="PATH_OR_HUB_ID[:SCALE]",
                   help="LoRA(s) for the --model given here; repeatable")
    u.add_argument("--controlnet", action="append", default=[], metavar="MODEL[:SCALE]",
                   help="a ControlNet for the --model given here (folder, Hub id, .safetensors or control preset; "
                        "scale 0 to 2, 1 by default): the page shows a control panel (scale, 'use the painting' or "
                        "an uploaded control image, canny/scribble)")
    u.add_argument("--control-mode", metavar="TYPE", help="a union --controlnet's control type (preset name or index)")
    u.add_argument("--control-start", type=float, default=FULL_WINDOW[0], metavar="T",
                   help="the ControlNet acts from time t = T (default 1)")
    u.add_argument("--control-end", type=float, default=FULL_WINDOW[1], metavar="T",
                   help="the ControlNet acts down to time t = T (default 0)")
    _add_threads(u)
    _add_offload(u)

    sub.add_parser("models", help="list the preset models, their sizes and whether they are cached")
    d = sub.add_parser("download", help="fetch a preset, a ControlNet or IP-Adapter preset, or a Stable Diffusion Hub "
                                        "repo into the Hugging Face cache")
    d.add_argument("name", help=f"a preset ({', '.join(PRESETS)}, the pipelines and control presets of 'sdedit "
                                "models') or a Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5")
    return p


def _edit(a: argparse.Namespace) -> int:
    from ..api import iter_edits, prepare_guide
    from ..files import check_output_folder
    from ..images import open_image, save_png
    from ..loader import load_model

    # Check everything cheap before loading a model, and the output folder before sampling.
    settings = run_settings(a)
    check_tile_flags(a)
    levels = strength_levels_option(a.strength_levels, a.strength_map is not None, "--strength-map")
    crop = _crop_option(a)
    image = open_image(a.input)
    mask = open_image(a.mask) if a.mask is not None else None
    strength_map = open_image(a.strength_map) if a.strength_map is not None else None
    control = control_options(a)
    ip = ip_adapter_options(a)
    offload_device(a.offload, a.device)
    model = load_model(a.model or DEFAULT_MODEL, config=a.config, device=a.device, loras=a.lora, offload=a.offload,
                       precision=settings.precision or DEFAULT_PRECISION, **control, **ip)
    model.check_conditioning(settings)
    model.optimize(compile=a.compile)
    fit = fit_for(model, a.fit)
    guide = prepare_guide(model, image, mask, fit=fit, original_size=a.original_size, strength_map=strength_map,
                          mask_grow=a.mask_grow, mask_feather=a.mask_feather, crop_to_mask=crop,
                          full_size=a.full_size, strength_levels=levels, control_images=a.control_image,
                          control_preprocess=a.control_preprocess, tile=a.tile, tile_overlap=a.tile_overlap)
    if a.fit is not None and guide.frame.whole_input:
        raise InputError("--fit does not act on a crop-to-mask edit (the mask's box is edited): leave it out, or give "
                         "--no-crop-to-mask")
    if guide.strength_levels > DEFAULT_STRENGTH_LEVELS:
        say(f"strength map: {guide.strength_levels} grey levels, each one more step (--strength-levels)", err=True)
    check_output_folder(a.outdir)
    assert settings.seed is not None
    check_longest_name(a.outdir, f"{a.input.stem}_t1.00_{max(SAMPLERS, key=len)}")
    # Each output is written as soon as its batch is done: memory stays bounded and an interrupted run
    # keeps what it finished.
    with Writer() as writer:
        for img in iter_edits(model, [guide], [settings.seed], settings, fit=fit, progress=not a.quiet):
            meta = json.loads(img.info["sdedit"])
            if "t0_auto" in meta and meta["sample"] == 0 and not a.quiet:
                chosen = meta["t0_auto"]
                say(f"t0 auto: {meta['t0']:.4g} (probe L2 {chosen['l2']:.2f} within the budget "
                    f"{chosen['budget']:.2f})")
            name = f"{a.input.stem}_t{meta['t0']:.2f}_{meta['sampler']}_s{meta['seed']}.png"
            writer.submit(lambda img=img, name=name: save_png(img, a.outdir / name, overwrite=a.overwrite))
    return 0


def _composite(a: argparse.Namespace) -> int:
    from ..api import iter_edits, prepare_guide
    from ..compositing import paste_patch
    from ..files import check_output_folder
    from ..images import check_grow, open_image, save_png
    from ..loader import load_model

    # Every input checked before the model loads and before the output folder is made.
    settings = settings_for_flags(t0=a.t0, steps=a.steps, seed=a.seed, sampler=a.sampler, num_samples=a.num,
                                  prompt=a.prompt, guidance=a.guidance)
    at = _ints_signed(a.at, "--at", 2)
    crop = _crop_option(a)
    check_grow(a.mask_grow, a.mask_feather)
    composed, mask = paste_patch(open_image(a.background), open_image(a.patch), (at[0], at[1]), a.scale)
    model = load_model(a.model or DEFAULT_MODEL, config=a.config, device=a.device, loras=a.lora)
    model.check_conditioning(settings)
    check_output_folder(a.outdir)
    check_longest_name(a.outdir, f"{a.background.stem}_composite_t1.00")
    guide = prepare_guide(model, composed, mask, fit="stretch", original_size=True, mask_grow=a.mask_grow,
                          mask_feather=a.mask_feather, crop_to_mask=crop)
    # what made the guide, beside the run's settings: the output depends on it
    placed = {"background": a.background.name, "patch": a.patch.name, "at": list(at), "scale": a.scale}
    assert settings.seed is not None
    with Writer() as writer:  # each output written as soon as it is done, as `edit` does: memory stays bounded
        for img in iter_edits(model, [guide], [settings.seed], settings, fit="stretch", progress=not a.quiet):
            meta = {**json.loads(img.info["sdedit"]), "composite": placed}
            img.info["sdedit"] = json.dumps(meta)
            name = f"{a.background.stem}_composite_t{meta['t0']:.2f}_s{meta['seed']}.png"
            writer.submit(lambda img=img, name=name: save_png(img, a.outdir / name))
    return 0


def _outpaint(a: argparse.Namespace) -> int:
    from ..api import iter_edits, prepare_outpaint
    from ..files import check_output_folder
    from ..images import open_image, save_png
    from ..loader import load_model
    from ..outpainting import NEW_T0, check_band, check_band_t0, check_canvas, check_extension

    # Every input checked before the model loads and before the output folder is made.
    settings = settings_for_flags(steps=a.steps, seed=a.seed, sampler=a.sampler, num_samples=a.num,
                                  batch_size=a.batch_size, precision=a.precision, prompt=a.prompt,
                                  negative_prompt=a.negative_prompt, guidance=a.guidance,
                                  color_match=a.color_match or None, t0=NEW_T0)
    extension = check_extension(a.left, a.right, a.top, a.bottom)
    if a.band is not None:
        check_band(a.band)
    if a.t0 is not None:
        check_band_t0(a.t0)
    if a.tile is None and a.tile_overlap is not None:
        raise InputError("--tile-overlap needs --tile")
    image = open_image(a.input)
    check_canvas(image.size, extension)
    model = load_model(a.model or DEFAULT_MODEL, config=a.config, device=a.device, loras=a.lora,
                       precision=settings.precision or DEFAULT_PRECISION)
    model.check_conditioning(settings)
    assert settings.seed is not None
    guide = prepare_outpaint(model, image, extension, fill=a.fill, band=a.band, t0=a.t0, seed=settings.seed,
                             tile=a.tile, tile_overlap=a.tile_overlap)
    check_output_folder(a.outdir)
    check_longest_name(a.outdir, f"{a.input.stem}_outpaint")
    with Writer() as writer:  # each output written as soon as it is done
        for img in iter_edits(model, [guide], [settings.seed], settings, fit="stretch", progress=not a.quiet):
            name = f"{a.input.stem}_outpaint_s{json.loads(img.info['sdedit'])['seed']}.png"
            writer.submit(lambda img=img, name=name: save_png(img, a.outdir / name, overwrite=a.overwrite))
    return 0


def _ints_signed(text: str, what: str, count: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise InputError(f"{what} must be {count} comma-separated integers, got {text!r}")
    return values


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(f"{what} must be positive integers, got {text!r}")
    return values


def _train(a: argparse.Namespace) -> int:
    import time

    from ..research.training import TrainConfig, train

    started = time.monotonic()  # --minutes counts from here
    given = {k: getattr(a, k) for k in ("data", "size", "layers_per_block", "batch_size", "lr", "ema_decay",
                                        "num_images", "seed", "max_steps", "minutes", "save_every", "init_from",
                                        "t_split", "low_t_share", "precision", "lr_schedule")
             if getattr(a, k) is not None}
    if a.widths is not None:
        given["widths"] = _ints(a.widths, "--widths")
    if a.attn_res is not None:
        given["attn_res"] = _ints(a.attn_res, "--attn-res")
    data = given.get("data", "synthetic")
    if data != "synthetic":
        if not Path(data).is_dir():
            raise InputError(f"--data must be 'synthetic' or a folder of images; {data} is not a folder")
        given["data"] = str(Path(data).resolve())
    cfg = TrainConfig(**given)  # every number checked against its bounds here, before any work
    cache = Path(os.environ.get("SDEDIT_CACHE", Path.home() / ".cache" / "sdedit"))
    state = train(cfg, a.out, resume=a.resume, device=a.device, progress=not a.quiet, cache=cache,
                  explicit=frozenset(given), started=started)
    took = f"{state.seconds / 3600:.2f} h" if state.seconds >= 3600 else f"{state.seconds / 60:.1f} min"
    say(f"{a.out}: step {state.step}, {took} of training; "
        f"use it with: sdedit edit IMAGE --model {a.out}")
    return 0


def _strokes(a: argparse.Namespace) -> int:
    from ..images import open_image, save_png, to_rgb
    from ..research.strokes import check_colors, check_kernel, simulate_strokes

    check_colors(a.colors)
    if a.kernel is not None:
        check_kernel(a.kernel)  # odd and positive now; its upper bound is the image's shorter side
    out = simulate_strokes(to_rgb(open_image(a.input)), colors=a.colors, kernel=a.kernel)
    say(save_png(out, a.out, overwrite=a.overwrite))
    return 0


def _kid_caution(generated: int, real: int) -> None:
    """Print the warning of metrics.kid_caution, if any, on stderr."""
    from ..research.metrics import kid_caution

    caution = kid_caution(generated, real)
    if caution:
        say(caution, err=True)


def _eval_controls(a: argparse.Namespace) -> tuple[dict[str, Any], list[float]]:
    """eval's ControlNet options and its --control-scale values (each once), checked."""
    control = control_options(a)
    if a.control_scale and not a.controlnet:
        raise InputError("--control-scale sets the scale of ControlNets: give --controlnet")
    return control, [check_control_scale(x) for x in dict.fromkeys(a.control_scale or [])]


def _eval(a: argparse.Namespace) -> int:
    from ..files import check_output_folder
    from ..images import folder_images
    from ..loader import load_model
    from ..research.evaluation import MASK_VARIANTS, MaskedBenchmark, StrokeBenchmark, check_eval_count, \
        held_out_landscapes, held_out_reals, markdown_table, write_tables
    from ..research.metrics import InceptionUnavailable, kid_caution
    from ..research.strokes import check_colors
    from ..settings import MAX_SEED

    if a.edits is not None:
        return _eval_edits(a)
    for flag, given in (("--method", a.method), ("--source-guidance", a.source_guidance is not None),
                        ("--flowedit-samples", a.flowedit_samples is not None)):
        if given:
            raise InputError(f"{flag} is for text edits: give --edits FOLDER (the strokes are edited by SDEdit)")
    n = EVAL_IMAGES if a.n is None else a.n
    # Every option is checked before the output folder is made and the model loads.
    check_eval_count(n)
    check_colors(a.colors)
    grid = [settings_for_flags(t0=t0, sampler=sampler, steps=steps, repeats=a.repeats, seed=a.seed, prompt=a.prompt,
                               guidance=a.guidance)
            for sampler in a.sampler for steps in (a.steps or [None]) for t0 in a.t0]
    grid = list(dict.fromkeys(grid))  # a setting given twice (e.g. --t0 auto auto) is one row
    if a.seed > MAX_SEED - n:
        raise InputError(f"--seed must be from 0 to 2^63 - 1 - --n (image i uses seed + i), got {a.seed}")
    for folder in (a.data if a.data != "synthetic" else None, a.real):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"not a folder of images: {printable(folder)}")
    control, scales = _eval_controls(a)
    check_output_folder(a.outdir)
    model = load_model(a.model or DEFAULT_MODEL, config=a.config, device=a.device, loras=a.lora, **control)
    model.check_conditioning(grid[0])
    models = [(f", control x{x:g}", model.with_control_scales([x] * model.control_count)) for x in scales] or \
        [("", model)]
    r = model.resolution
    check_eval_count(n, r)
    if a.data == "synthetic":
        originals = held_out_landscapes(n, r)
        reals = folder_images(Path(a.real), n, r) if a.real else held_out_reals(n, r)
    else:
        originals = folder_images(Path(a.data), n, r)
        reals = folder_images(Path(a.real), n, r) if a.real else originals
    if len(originals) < 2 or len(reals) < 2:
        raise InputError("need at least 2 images to turn into strokes and 2 real images")
    try:
        bench = (MaskedBenchmark if a.masked else StrokeBenchmark)(originals, reals, a.colors, a.features)
    except InceptionUnavailable as e:
        raise InputError(f"--features inception: {e}") from None
    if a.features == "auto" and bench.feature_name != "inception":
        print("note: Inception features unavailable (torch-fidelity or its weights); KID uses the offline "
              "random-CNN features, comparable only with other random-CNN numbers", file=sys.stderr)
    bench.control_preprocess = a.control_preprocess
    rows = bench.baselines()
    print(markdown_table(rows))
    for settings in grid:
        for suffix, scaled in models:
            for variant in MASK_VARIANTS if isinstance(bench, MaskedBenchmark) else [None]:
                row, _ = bench.run(scaled, settings) if variant is None else \
                    bench.run_variant(scaled, settings, variant)
                row = dataclasses.replace(row, what=row.what + suffix)
                rows.append(row)
                print(markdown_table([row]).splitlines()[-1], flush=True)
    if bench.kid_undefined:
        say(f"note: {bench.kid_undefined}", err=True)
    what = "masked stroke edits (an ellipse of each image replaced by its strokes)" if a.masked else "stroke inputs"
    steer = f", ControlNets {', '.join(a.controlnet)} steered by each painting ({a.control_preprocess})" \
        if a.controlnet else ""
    header = (f"sdedit eval: model {a.model or DEFAULT_MODEL}{steer}, data {a.data}, {len(originals)} {what} "
              f"({a.colors} colours), {len(reals)} real images for KID ({bench.feature_name} features).")
    caution = kid_caution(len(originals), len(reals))
    for p in write_tables(rows, a.outdir / "eval", header + (f"\n\n{caution}" if caution else ""), overwrite=False):
        say(p)
    say(header)
    _kid_caution(len(originals), len(reals))
    return 0


def _edit_grid(a: argparse.Namespace, methods: Sequence[str]) -> list[RunSettings]:
    """eval --edits' settings, t0 by t0: SDEdit at each sampler and step count, FlowEdit at each step count (with
    the methods left to the model, FlowEdit skips t0 auto, which is SDEdit's)."""
    from ..settings import AUTO_T0

    grid = []
    for t0 in a.t0:
        for method in methods:
            if method == "flowedit" and t0 == AUTO_T0 and a.method is None:
                continue
            flowedit = dict(source_guidance=a.source_guidance, flowedit_samples=a.flowedit_samples) \
                if method == "flowedit" else {}
            grid += [settings_for_flags(method=method, t0=t0, sampler=sampler, steps=steps, repeats=a.repeats,
                                        seed=a.seed, guidance=a.guidance, **flowedit)
                     for sampler in (a.sampler if method == "sdedit" else [DEFAULT_SAMPLER])
                     for steps in (a.steps or [None])]
    return list(dict.fromkeys(grid))  # a setting given twice is one row


def _check_edit_flags(a: argparse.Namespace) -> list[str]:
    """Refuse the stroke protocol's flags with --edits, and FlowEdit's without flowedit; FlowEdit's flags given."""
    from ..research.text_edits import EDITS_CSV

    for flag, given in (("--masked", a.masked), ("--prompt", a.prompt is not None), ("--data", a.data != "synthetic"),
                        ("--real", a.real is not None)):
        if given:
            raise InputError(f"{flag} is for stroke inputs: --edits reads its images, masks and prompts from "
                             f"FOLDER/{EDITS_CSV}")
    flowedit_flags = [f for f, x in (("--source-guidance", a.source_guidance), ("--flowedit-samples",
                                                                                 a.flowedit_samples)) if x is not None]
    if flowedit_flags and a.method is not None and "flowedit" not in a.method:
        raise InputError(f"{flowedit_flags[0]} is FlowEdit's: add flowedit to --method")
    return flowedit_flags


def _eval_edits(a: argparse.Namespace) -> int:
    from ..files import check_output_folder
    from ..loader import load_model
    from ..research.edit_metrics import load_learned_metrics
    from ..research.text_edits import TextEditBenchmark, check_edit_count, edit_figure, edit_methods, edit_table, \
        edits_header, read_edits, write_edit_results
    from ..settings import MAX_SEED

    # Every option and every row of edits.csv is checked before the output folder is made and the model loads.
    flowedit_flags = _check_edit_flags(a)
    items = read_edits(a.edits, check_edit_count(a.n))
    if a.seed > MAX_SEED - len(items):
        raise InputError(f"--seed must be from 0 to 2^63 - 1 - the rows (row i uses seed + i), got {a.seed}")
    grid = _edit_grid(a, a.method or list(METHODS))
    control, scales = _eval_controls(a)
    check_output_folder(a.outdir)
    model = load_model(a.model or DEFAULT_MODEL, config=a.config, device=a.device, loras=a.lora, **control)
    methods = edit_methods(model, a.method)
    if flowedit_flags and "flowedit" not in methods:
        raise InputError(f"{flowedit_flags[0]} is FlowEdit's, and FlowEdit needs a rectified-flow model")
    grid = [s for s in grid if s.method in methods]
    model.check_conditioning(grid[0].with_(prompt=items[0].target_prompt))
    models = [(f", control x{x:g}", model.with_control_scales([x] * model.control_count)) for x in scales] or \
        [("", model)]
    metrics = load_learned_metrics(model.device)
    bench = TextEditBenchmark(model, items, metrics, a.seed, a.control_preprocess)
    masked = any(i.mask is not None for i in items)
    rows, scores, columns = [], [], [bench.sources()]
    print(edit_table([], masked))
    for settings in grid:
        for suffix, scaled in models:
            row, row_scores, outs = bench.run(scaled, settings)
            row = dataclasses.replace(row, what=row.what + suffix)
            rows.append(row)
            scores += [dataclasses.replace(s, what=row.what) for s in row_scores]
            columns.append(outs)
            print(edit_table([row], masked).splitlines()[-1], flush=True)
    note = metrics.note()
    if note:
        print(note)
        say("note: " + "; ".join(f"{k}: {v}" for k, v in metrics.missing.items()), err=True)
    header = edits_header(a.model or DEFAULT_MODEL, a.edits, items, a.seed, methods, metrics)
    for p in write_edit_results(rows, scores, edit_figure(columns), a.outdir / "eval", header, masked):
        say(p)
    say(header.split("\n")[0])
    return 0


def _sweep(a: argparse.Namespace) -> int:
    from ..files import check_output_file
    from ..images import folder_images, open_image, save_png
    from ..loader import load_model
    from ..research.evaluation import held_out_reals
    from ..research.metrics import kid_caution
    from .sweep import run_sweep, sweep_grid, sweep_plot

    # Every option and both output names are checked before the model loads and sampling starts.
    grid = [settings_for_flags(t0=t0, sampler=sampler, steps=a.steps, num_samples=a.num, seed=a.seed,
                               prompt=a.prompt) for sampler in a.sampler for t0 in a.t0]
    grid = list(dict.fromkeys(grid))  # a setting given twice is one column
    columns = len({s.t0 for s in grid})
    if columns > MAX_T0_VALUES:
        raise InputError(f"--t0 takes at most {MAX_T0_VALUES} values (the grid's columns), got {columns}")
    image = open_image(a.input)
    mask = open_image(a.mask) if a.mask else None
    if a.real is not None and not Path(a.real).is_dir():
        raise InputError(f"--real: not a folder of images: {printable(a.real)}")
    grid_name, plot_name = (check_output_file(a.outdir / f"{a.input.stem}-sweep-{kind}.png")
                            for kind in ("grid", "plot"))
    model = load_model(a.model or DEFAULT_MODEL, config=a.config, device=a.device, loras=a.lora)
    model.check_conditioning(grid[0])
    reals = None
    if a.num < KID_MIN_IMAGES:
        pass  # too few samples for KID: the plot shows faithfulness only
    elif a.real:
        reals = folder_images(Path(a.real), SWEEP_REALS, model.resolution)
    elif (a.model or DEFAULT_MODEL) == DEFAULT_MODEL:
        reals = held_out_reals(SWEEP_REALS, model.resolution)
    caution = kid_caution(a.num, len(reals)) if reals else None
    guide, points = run_sweep(model, image, grid, mask=mask, reals=reals, progress=not a.quiet)
    grid_path = save_png(sweep_grid(guide, points), grid_name)
    plot_path = sweep_plot(points, plot_name, caution)
    for p in points:
        kid_text = f", KID {p.kid.mean:.4f} +- {p.kid.se:.4f}" if p.kid is not None else ""
        print(f"{p.settings.sampler:<15} t0={p.settings.t0:.2f} steps={p.settings.steps:<4} L2 {p.l2:7.2f}{kid_text}")
    for why in dict.fromkeys(p.kid_undefined for p in points if p.kid_undefined):
        say(f"note: KID undefined: {why}", err=True)
    say(grid_path)
    say(plot_path)
    if reals and not a.quiet:
        _kid_caution(a.num, len(reals))
    return 0


def _batch(a: argparse.Namespace) -> int:
    from .batch import BatchJob, run_folder

    settings = run_settings(a, seed=a.seed if a.seed is not None else 0)
    check_threads(a.threads)
    check_tile_flags(a)
    levels = strength_levels_option(a.strength_levels, a.strength_maps is not None, "--strength-maps")
    control = control_options(a)
    ip = ip_adapter_options(a)
    offload_device(a.offload, a.device)
    job = BatchJob(a.model or DEFAULT_MODEL, settings, a.fit, a.original_size, tuple(a.lora), a.mask_grow,
                   a.mask_feather, _crop_option(a), strength_maps=a.strength_maps is not None, unmasked=a.unmasked,
                   full_size=a.full_size, strength_levels=levels, controlnets=tuple(control["controlnets"]),
                   control_window=control["control_window"], control_images=tuple(a.control_image),
                   control_preprocess=a.control_preprocess, ip_adapters=tuple(ip["ip_adapters"]), tile=a.tile,
                   tile_overlap=a.tile_overlap)
    return run_folder(a.input_dir, a.outdir, a.masks or a.strength_maps, job, config=a.config, device=a.device,
                      quiet=a.quiet, threads=a.threads, offload=a.offload)


def _ui(a: argparse.Namespace) -> int:
    from .ui import check_listen, parse_auth
    from .ui_server import server_folder

    text = a.auth
    if a.auth_file is not None:
        try:
            text = a.auth_file.read_text().splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as e:
            raise InputError(f"--auth-file {printable(a.auth_file)}: cannot read USER:PASS from it "
                             f"({getattr(e, 'strerror', None) or 'empty or not text'})") from None
    auth = parse_auth(text if text is not None else os.environ.get("SDEDIT_UI_AUTH") or None)
    check_listen(a.listen, auth)
    if not 1 <= a.port <= 65535:
        raise InputError(f"--port must be in 1-65535, got {a.port}")
    if a.queue_size < 1:
        raise InputError(f"--queue-size must be at least 1, got {a.queue_size}")
    offload_device(a.offload, a.device)
    with server_folder() as tmp:  # removes the folders of servers that died first
        # Gradio reads these at import: uploads and results live in this run's own folder, and nothing phones home
        os.environ["GRADIO_TEMP_DIR"] = str(tmp / "gradio")
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        from .ui import ModelPool, build_app, launch, model_choices

        if (a.lora or a.controlnet) and not a.model:
            raise InputError("--lora and --controlnet apply to the model named with --model")
        if (a.control_mode or (a.control_start, a.control_end) != FULL_WINDOW) and not a.controlnet:
            raise InputError("--control-mode, --control-start and --control-end steer a ControlNet: give --controlnet")
        specs = [ControlSpec.parse(text) for text in a.controlnet]
        if a.control_mode:
            specs = [control_mode(spec, a.control_mode) for spec in specs]
        pool = ModelPool(model_choices(a.model), device=a.device, config=a.config,
                         loras={a.model: list(a.lora)} if a.model and a.lora else {}, offload=a.offload,
                         controlnets={a.model: specs} if specs else {},
                         control_window=check_window(a.control_start, a.control_end))
        first = a.model or DEFAULT_MODEL
        pool.get(first)  # fail now, with one line, rather than on the first click
        outdir = tmp / "results"
        app = build_app(pool, outdir=outdir, default_model=first)
        launch(app, port=a.port, listen=a.listen, auth=auth, queue_size=a.queue_size, outdir=outdir)
    return 0


def _models(a: argparse.Namespace) -> int:
    from ..loader import recommended_t0_of
    from ..loading.hub import is_cached
    from ..loading.presets import bundled_path

    from ..devices import device_name, pick_device
    from ..precision import cache_path, decisions

    device = pick_device(None)
    path = cache_path()
    print(f"precision: 'auto' (the default) times fp32 against bf16 the first time a network runs an input shape on "
          f"this machine and keeps the faster; decisions in {printable(path)}, for {device_name(device)}:")
    rows = decisions(path, device)
    for row in rows:
        print(f"  {row}")
    if not rows:
        print("  (none yet)")
    print("t0: the model's recommended t0, used when --t0 is not given (README 'The default model')")
    print(f"{'name':<12} {'family':<6} {'res':>5} {'t0':>4} {'size':>8}  {'cached':<6} {'source':<30} description")
    for name, text in BUNDLED_MODELS.items():
        w = bundled_path(name) / "diffusion_pytorch_model.safetensors"
        size = f"{w.stat().st_size / 1e6:.1f} MB" if w.is_file() else "?"
        cfg = bundled_path(name) / "config.json"
        res = json.loads(cfg.read_text()).get("sample_size", "?") if cfg.is_file() else "?"
        t0 = recommended_t0_of(name)
        print(f"{name:<12} {'vp':<6} {res:>5} {t0:>4.2f} {size:>8}  {'bundled':<6} {'(inside the package)':<30} {text}")
    for p in PRESETS.values():
        size = f"{p.size_mb:.0f} MB" if p.size_mb else "?"
        cached = "yes" if is_cached(p.repo_id) else "no"
        print(f"{p.name:<12} {p.family:<6} {p.resolution:>5} {DEFAULT_T0:>4.2f} {size:>8}  {cached:<6} "
              f"{p.repo_id:<30} {p.description}")
    print("\ntext-guided (--prompt); download sizes are estimates from parameter counts:")
    print(f"{'name':<14} {'family':<20} {'res':>5} {'t0':>4}  {'download':<52} licence")
    for q in PIPELINE_PRESETS.values():
        gated = " (gated: accept it on the Hub, then `huggingface-cli login`)" if q.gated else ""
        print(f"{q.name:<14} {q.family:<20} {q.resolution:>5} {DEFAULT_T0:>4.2f}  {q.download:<52} {q.licence}{gated}")
    print("\nControlNets and IP-Adapters (--controlnet NAME, --ip-adapter NAME; `sdedit download NAME` fetches them):")
    for line in control_table():
        print(line)
    return 0


def _download(a: argparse.Namespace) -> int:
    from ..loading.hub import hub_control_snapshot, hub_pipeline_snapshot, hub_snapshot

    if a.name in CONTROL_PRESETS:
        say(hub_control_snapshot(CONTROL_PRESETS[a.name]))
        return 0
    if a.name in PRESETS:
        say(hub_snapshot(PRESETS[a.name].repo_id, what=a.name))
        return 0
    if a.name in PIPELINE_PRESETS:
        folder = hub_pipeline_snapshot(PIPELINE_PRESETS[a.name].repo_id)
        if folder is None:
            raise ModelUnavailableError(f"{a.name} ({PIPELINE_PRESETS[a.name].repo_id}) could not be fetched: no "
                                        f"network, or a gated model you have not accepted and logged in for")
        say(folder)
        return 0
    if "/" not in a.name:
        names = ", ".join([*PRESETS, *PIPELINE_PRESETS, *CONTROL_PRESETS])
        raise InputError(f"unknown preset {a.name!r}; presets: {names} (or give a Hub id OWNER/NAME)")
    folder = hub_pipeline_snapshot(a.name)
    say(folder if folder is not None else hub_snapshot(a.name, what=a.name))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "edit": _edit, "composite": _composite, "outpaint": _outpaint, "train": _train, "strokes": _strokes, "eval": _eval, "sweep": _sweep, "batch": _batch, "ui": _ui,
    "models": _models, "download": _download}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdedit` console script."""

    def body() -> int:
        args = _parser().parse_args(argv)
        requested(None, DEFAULT_PRECISION)  # a bad SDEDIT_PRECISION is refused before any work
        quiet = getattr(args, "quiet", False)
        hide_unactionable_warnings()
        if quiet:
            quiet_libraries()
        if args.command != "batch" and getattr(args, "threads", None) is not None:  # batch sets its own per process
            import torch

            torch.set_num_threads(check_threads(args.threads))
        with quiet_stdout(quiet):
            return COMMANDS[args.command](args)

    return run_guarded(body, "sdedit")
