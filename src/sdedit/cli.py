"""The `sdedit` command: the only module that reads argv.  Exit codes: 0 ok, 2 bad usage or input, 1 runtime failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, SdeditError
from .presets import BUNDLED, DEFAULT_MODEL, PRESETS
from .samplers import SAMPLERS


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see `{self.prog} --help`)")


@dataclass(frozen=True)
class EditSettings:
    """What `sdedit edit` was asked to do."""

    input: Path  # guide image: a stroke painting, or a photo with strokes
    mask: Path | None  # white = edit, black = keep; none = edit everything
    model: str | None  # preset name, checkpoint file, diffusers folder or Hub id
    config: str | None  # YAML config or preset name for original .ckpt files
    t0: float  # SDEdit's noise level in (0, 1]: higher = more realistic, less faithful
    steps: int | None  # reverse steps from t0 to 0; None = the sampler's default
    repeats: int  # K, re-noise and denoise again (the released --sample_step)
    sampler: str | None
    num: int  # number of outputs
    seed: int | None  # sample j uses seed + j
    device: str | None
    outdir: Path
    batch_size: int | None
    fit: str  # crop or stretch
    original_size: bool  # scale outputs back to the input's size
    overwrite: bool  # replace existing files instead of picking new names
    quiet: bool


def _parser() -> Parser:
    p = Parser(prog="sdedit", description="SDEdit: turn stroke paintings into images and edit images with strokes.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    e = sub.add_parser("edit", help="run SDEdit on an image (stroke painting or image with strokes)")
    e.add_argument("input", type=Path, help="guide image (any size and mode)")
    e.add_argument("--mask", type=Path, help="mask image of the same size: white = edit, black = keep")
    e.add_argument("--model", help=f"{DEFAULT_MODEL} (default, bundled), a preset ({', '.join(PRESETS)}), "
                                   "a checkpoint file, a diffusers folder or a Hub id")
    e.add_argument("--config", help="for original .ckpt files: the released YAML config, or a preset name")
    e.add_argument("--t0", type=float, default=0.5, help="noise level in (0, 1]; 0.3-0.6 suits most guides (0.5)")
    e.add_argument("--steps", type=int, help="reverse steps from t0 to 0 (default: 100 * t0, at least 10)")
    e.add_argument("--repeats", "-K", type=int, default=1, help="K: repeat noise-and-denoise (1)")
    e.add_argument("--sampler", choices=list(SAMPLERS), help="reverse sampler (ddpm)")
    e.add_argument("-n", "--num", type=int, default=1, help="number of outputs (1)")
    e.add_argument("--seed", type=int, help="seed of the first output; output j uses seed + j (random)")
    e.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA if present, else CPU)")
    e.add_argument("-o", "--outdir", type=Path, default=Path("outputs"), help="output folder (outputs)")
    e.add_argument("--batch-size", type=int, help="samples per network call (default: up to 8)")
    e.add_argument("--fit", choices=["crop", "stretch"], default="crop",
                   help="non-square inputs: centre-crop (default) or stretch to the model's square")
    e.add_argument("--original-size", action="store_true", help="scale outputs back to the input's size")
    e.add_argument("--overwrite", action="store_true", help="replace existing output files (default: new names)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="train a DDPM on a folder of images or the built-in landscapes")
    t.add_argument("-o", "--out", type=Path, required=True, help="run folder: the model, and its training state")
    t.add_argument("--data", default="synthetic", help="'synthetic' (built-in landscapes) or a folder of images")
    t.add_argument("--size", type=int, default=64, help="training resolution (64)")
    t.add_argument("--widths", default="32,64,64,64", help="UNet channels per level (32,64,64,64)")
    t.add_argument("--attn-res", default="16", help="resolutions with attention, comma-separated (16)")
    t.add_argument("--layers-per-block", type=int, default=2)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--num-images", type=int, default=20000, help="synthetic images to train on (20000)")
    t.add_argument("--max-steps", type=int, help="stop at this step count (over all sittings)")
    t.add_argument("--minutes", type=float, help="stop after this many minutes in this sitting")
    t.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints (5)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA if present)")
    t.add_argument("-q", "--quiet", action="store_true")

    k = sub.add_parser("strokes", help="simulate a stroke painting (median filter + adaptive palette)")
    k.add_argument("input", type=Path)
    k.add_argument("-o", "--out", type=Path, required=True, help="output PNG")
    k.add_argument("--colors", type=int, default=6, help="palette size (6, as in the paper)")
    k.add_argument("--kernel", type=int, help="median kernel, odd (default: 23 at 256 px, scaled)")
    k.add_argument("--overwrite", action="store_true")

    sub.add_parser("models", help="list the preset models, their sizes and whether they are cached")
    d = sub.add_parser("download", help="fetch a preset model into the Hugging Face cache")
    d.add_argument("name", choices=list(PRESETS))
    return p


def _edit(a: argparse.Namespace) -> int:
    s = EditSettings(a.input, a.mask, a.model, a.config, a.t0, a.steps, a.repeats, a.sampler, a.num, a.seed,
                     a.device, a.outdir, a.batch_size, a.fit, a.original_size, a.overwrite, a.quiet)
    from .api import default_steps, edit
    from .checkpoints import load_model, pick_device
    from .editing import check_settings
    from .images import open_image, save_png

    # Check everything cheap before loading a model.
    try:
        check_settings(s.t0, s.steps if s.steps is not None else 1, s.repeats)
    except ValueError as e:
        raise InputError(str(e)) from None
    if s.num < 1:
        raise InputError(f"-n must be >= 1, got {s.num}")
    if s.outdir.exists() and not s.outdir.is_dir():
        raise InputError(f"output folder {s.outdir} exists and is not a folder")
    image = open_image(s.input)
    mask = open_image(s.mask) if s.mask is not None else None
    pick_device(s.device)
    model = load_model(s.model or DEFAULT_MODEL, config=s.config, device=s.device)
    steps = s.steps if s.steps is not None else default_steps(s.sampler or "ddpm", s.t0)
    outs = edit(model, image, mask=mask, t0=s.t0, steps=steps, repeats=s.repeats, sampler=s.sampler,
                num_samples=s.num, seed=s.seed, progress=not s.quiet, batch_size=s.batch_size,
                fit=s.fit, original_size=s.original_size)  # type: ignore[arg-type]
    for img in outs:
        meta = json.loads(img.info["sdedit"])
        name = f"{s.input.stem}_t{meta['t0']:.2f}_{meta['sampler']}_s{meta['seed']}.png"
        path = save_png(img, s.outdir / name, overwrite=s.overwrite)
        print(path)
    return 0


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(f"{what} must be positive integers, got {text!r}")
    return values


def _train(a: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    for name in ("size", "batch_size", "num_images", "layers_per_block"):
        if getattr(a, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    if a.data != "synthetic" and not Path(a.data).is_dir():
        raise InputError(f"--data must be 'synthetic' or a folder of images; {a.data} is not a folder")
    cfg = TrainConfig(data=a.data if a.data == "synthetic" else str(Path(a.data).resolve()), size=a.size,
                      widths=_ints(a.widths, "--widths"), attn_res=_ints(a.attn_res, "--attn-res"),
                      layers_per_block=a.layers_per_block, batch_size=a.batch_size, lr=a.lr, ema_decay=a.ema_decay,
                      num_images=a.num_images, seed=a.seed, max_steps=a.max_steps, minutes=a.minutes,
                      save_every=a.save_every)
    cache = Path(os.environ.get("SDEDIT_CACHE", Path.home() / ".cache" / "sdedit"))
    state = train(cfg, a.out, resume=a.resume, device=a.device, progress=not a.quiet, cache=cache)
    print(f"{a.out}: step {state.step}, {state.seconds / 3600:.2f} h of training; "
          f"use it with: sdedit edit IMAGE --model {a.out}")
    return 0


def _strokes(a: argparse.Namespace) -> int:
    from .images import open_image, save_png, to_rgb
    from .strokes import simulate_strokes

    try:
        out = simulate_strokes(to_rgb(open_image(a.input)), colors=a.colors, kernel=a.kernel)
    except ValueError as e:
        raise InputError(str(e)) from None
    print(save_png(out, a.out, overwrite=a.overwrite))
    return 0


def _models(a: argparse.Namespace) -> int:
    from .checkpoints import is_cached

    from .checkpoints import bundled_path

    print(f"{'name':<12} {'family':<6} {'res':>5} {'size':>8}  {'cached':<6} {'source':<30} description")
    for name, text in BUNDLED.items():
        w = bundled_path(name) / "diffusion_pytorch_model.safetensors"
        size = f"{w.stat().st_size / 1e6:.1f} MB" if w.is_file() else "?"
        print(f"{name:<12} {'vp':<6} {64:>5} {size:>8}  {'bundled':<6} {'(inside the package)':<30} {text}")
    for p in PRESETS.values():
        size = f"{p.size_mb:.0f} MB" if p.size_mb else "?"
        cached = "yes" if is_cached(p.repo_id) else "no"
        print(f"{p.name:<12} {p.family:<6} {p.resolution:>5} {size:>8}  {cached:<6} {p.repo_id:<30} {p.description}")
    return 0


def _download(a: argparse.Namespace) -> int:
    from .checkpoints import hub_snapshot

    print(hub_snapshot(PRESETS[a.name].repo_id, what=a.name))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "edit": _edit, "train": _train, "strokes": _strokes, "models": _models, "download": _download}


def run_guarded(body: Callable[[], int], prog: str) -> int:
    """Run a command body, turning errors into one line on stderr and an exit code (SDEDIT_DEBUG=1: traceback)."""
    try:
        return body()
    except SdeditError as e:
        if os.environ.get("SDEDIT_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # reported, not swallowed: one line and exit 1
        if os.environ.get("SDEDIT_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: {type(e).__name__}: {e} (set SDEDIT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdedit` console script."""

    def body() -> int:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)

    return run_guarded(body, "sdedit")


if __name__ == "__main__":
    sys.exit(main())
