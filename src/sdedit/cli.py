"""The `sdedit` command: the only module that reads argv.  Exit codes: 0 ok, 2 bad usage or input, 1 runtime failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .run_settings import DEFAULT_SAMPLER
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
    precision: str  # fp32, bf16 or fp16
    compile: bool  # torch.compile the network
    quiet: bool
    prompt: str | None = None  # text-conditioned models: what the result should show
    negative_prompt: str = ""  # ... and what it should not
    guidance: float = 7.5  # classifier-free guidance weight


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
    e.add_argument("--steps", type=int,
                   help="reverse steps from t0 to 0 (default: per sampler; 10 for dpm++2m-sde at t0 = 0.5)")
    e.add_argument("--repeats", "-K", type=int, default=1, help="K: repeat noise-and-denoise (1)")
    e.add_argument("--sampler", choices=list(SAMPLERS), help=f"reverse sampler ({DEFAULT_SAMPLER})")
    e.add_argument("-n", "--num", type=int, default=1, help="number of outputs (1)")
    e.add_argument("--seed", type=int, help="seed of the first output; output j uses seed + j (random)")
    e.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA if present, else CPU)")
    e.add_argument("-o", "--outdir", type=Path, default=Path("outputs"), help="output folder (outputs)")
    e.add_argument("--batch-size", type=int, help="samples per network call (default: up to 8)")
    e.add_argument("--fit", choices=["crop", "stretch"], default="crop",
                   help="non-square inputs: centre-crop (default) or stretch to the model's square")
    e.add_argument("--original-size", action="store_true", help="scale outputs back to the input's size")
    e.add_argument("--overwrite", action="store_true", help="replace existing output files (default: new names)")
    e.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="network precision: fp32 (default), or bf16/fp16 autocast where the hardware is fast at it")
    e.add_argument("--compile", action="store_true", help="torch.compile the network (slow first call)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.add_argument("--prompt", help="text-conditioned (Stable Diffusion) models: what the result should show")
    e.add_argument("--negative-prompt", default="", help="... and what it should not (the unconditional branch)")
    e.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance weight (7.5; 1 = none)")

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

    v = sub.add_parser("eval", help="the paper's protocol: strokes of real images -> SDEdit -> L2 and KID")
    v.add_argument("--model", help=f"model to evaluate ({DEFAULT_MODEL})")
    v.add_argument("--config", help="for original .ckpt files: the YAML config or a preset name")
    v.add_argument("--data", default="synthetic", help="'synthetic' (held-out landscapes) or a folder of images")
    v.add_argument("--real", help="folder of real images for KID (default: a disjoint held-out block, or --data)")
    v.add_argument("--n", type=int, default=200, help="images turned into strokes (200)")
    v.add_argument("--t0", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    v.add_argument("--sampler", nargs="+", choices=list(SAMPLERS), default=[DEFAULT_SAMPLER])
    v.add_argument("--steps", type=int, nargs="+", help="step counts to try (default: the sampler's default)")
    v.add_argument("--repeats", "-K", type=int, default=1)
    v.add_argument("--colors", type=int, default=6, help="stroke palette size (6)")
    v.add_argument("--features", choices=["auto", "inception", "random-cnn"], default="auto",
                   help="KID features: Inception (torch-fidelity) when its weights are available, else random-CNN")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--device")
    v.add_argument("-o", "--outdir", type=Path, default=Path("eval-results"))

    w = sub.add_parser("sweep", help="one input over a range of t0: a labelled grid and a realism/faithfulness plot")
    w.add_argument("input", type=Path)
    w.add_argument("--mask", type=Path)
    w.add_argument("--model")
    w.add_argument("--config")
    w.add_argument("--t0", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    w.add_argument("--sampler", nargs="+", choices=list(SAMPLERS), default=[DEFAULT_SAMPLER])
    w.add_argument("--steps", type=int, help="steps per run (default: the sampler's default for each t0)")
    w.add_argument("-n", "--num", type=int, default=8, help="samples per setting (8; KID needs at least 4)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--real", help="folder of real images: adds KID against them to the plot "
                                  "(default for the landscapes model: held-out landscapes)")
    w.add_argument("--device")
    w.add_argument("-o", "--outdir", type=Path, default=Path("outputs"))
    w.add_argument("-q", "--quiet", action="store_true")

    b = sub.add_parser("batch", help="SDEdit every image of a folder: resumable, one mask per image, many processes")
    b.add_argument("input_dir", type=Path, help="folder of guide images (top level)")
    b.add_argument("-o", "--outdir", type=Path, required=True, help="output folder (not inside the input folder)")
    b.add_argument("--masks", type=Path, help="folder of masks matched by file name stem: white = edit")
    b.add_argument("--model", help=f"as for edit ({DEFAULT_MODEL})")
    b.add_argument("--config")
    b.add_argument("--t0", type=float, default=0.5)
    b.add_argument("--steps", type=int, help="default: the sampler's default for t0")
    b.add_argument("--repeats", "-K", type=int, default=1)
    b.add_argument("--sampler", choices=list(SAMPLERS))
    b.add_argument("-n", "--num", type=int, default=1, help="outputs per image (1)")
    b.add_argument("--seed", type=int, default=0, help="item seeds derive from (seed, file name) (0)")
    b.add_argument("--fit", choices=["crop", "stretch"], default="crop")
    b.add_argument("--original-size", action="store_true")
    b.add_argument("--prompt")
    b.add_argument("--negative-prompt", default="")
    b.add_argument("--guidance", type=float, default=7.5)
    b.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    b.add_argument("--batch-size", type=int)
    b.add_argument("--device")
    b.add_argument("--threads", type=int, default=1,
                   help="CPU threads per process (1: files identical whatever the process count; "
                        "use torchrun --nproc_per_node N for N cores)")
    b.add_argument("-q", "--quiet", action="store_true")

    u = sub.add_parser("ui", help="start the web app: paint strokes or paint on a photo, in the browser")
    u.add_argument("--model", help=f"an extra model to offer and select first (default: {DEFAULT_MODEL}); "
                                   "bundled models and downloaded presets are always offered")
    u.add_argument("--config", help="for an original .ckpt given with --model: its YAML config or a preset name")
    u.add_argument("--port", type=int, default=7860, help="port (7860)")
    u.add_argument("--listen", action="store_true", help="serve on all interfaces (needs --auth)")
    u.add_argument("--auth", help="USER:PASS required to open the app")
    u.add_argument("--queue-size", type=int, default=8, help="runs that may wait; more get a 'busy' message (8)")
    u.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA if present)")

    sub.add_parser("models", help="list the preset models, their sizes and whether they are cached")
    d = sub.add_parser("download", help="fetch a preset or a Stable Diffusion Hub repo into the Hugging Face cache")
    d.add_argument("name", help=f"a preset ({', '.join(PRESETS)}) or a Hub id such as "
                                "stable-diffusion-v1-5/stable-diffusion-v1-5")
    return p


def _edit(a: argparse.Namespace) -> int:
    s = EditSettings(a.input, a.mask, a.model, a.config, a.t0, a.steps, a.repeats, a.sampler, a.num, a.seed,
                     a.device, a.outdir, a.batch_size, a.fit, a.original_size, a.overwrite, a.precision,
                     a.compile, a.quiet, a.prompt, a.negative_prompt, a.guidance)
    from .api import edit
    from .run_settings import default_steps
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
    model.optimize(precision=s.precision, compile=s.compile)  # type: ignore[arg-type]
    steps = s.steps if s.steps is not None else default_steps(s.sampler or DEFAULT_SAMPLER, s.t0)
    outs = edit(model, image, mask=mask, t0=s.t0, steps=steps, repeats=s.repeats, sampler=s.sampler,
                num_samples=s.num, seed=s.seed, progress=not s.quiet, batch_size=s.batch_size,
                fit=s.fit, original_size=s.original_size, prompt=s.prompt, negative_prompt=s.negative_prompt,
                guidance=s.guidance)  # type: ignore[arg-type]
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


def _check_t0s(t0s: list[float]) -> None:
    for t0 in t0s:
        if not 0.0 < t0 <= 1.0:
            raise InputError(f"t0 must be in (0, 1], got {t0}")


def _eval(a: argparse.Namespace) -> int:
    from .run_settings import default_steps
    from .checkpoints import load_model
    from .evaluation import Setting, StrokeBenchmark, held_out_landscapes, markdown_table, write_tables
    from .images import folder_images

    _check_t0s(a.t0)
    if a.n < 2 or a.repeats < 1 or (a.steps and min(a.steps) < 1):
        raise InputError("--n must be >= 2, --repeats and --steps >= 1")
    for folder in (a.data if a.data != "synthetic" else None, a.real):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"not a folder of images: {folder}")
    model = load_model(a.model or DEFAULT_MODEL, config=a.config, device=a.device)
    r = model.resolution
    if a.data == "synthetic":
        originals = held_out_landscapes(a.n, r)
        reals = folder_images(Path(a.real), a.n, r) if a.real else held_out_landscapes(a.n, r, offset=100_000)
    else:
        originals = folder_images(Path(a.data), a.n, r)
        reals = folder_images(Path(a.real), None, r) if a.real else originals
    if len(originals) < 2 or len(reals) < 2:
        raise InputError("need at least 2 images to turn into strokes and 2 real images")
    from .metrics import InceptionUnavailable

    try:
        bench = StrokeBenchmark(originals, reals, a.colors, a.features)
    except InceptionUnavailable as e:
        raise InputError(f"--features inception: {e}") from None
    if a.features == "auto" and bench.feature_name != "inception":
        print("note: Inception features unavailable (torch-fidelity or its weights); KID uses the offline "
              "random-CNN features, comparable only with other random-CNN numbers", file=sys.stderr)
    rows = bench.baselines()
    print(markdown_table(rows))
    for sampler in a.sampler:
        for steps in a.steps or [None]:
            for t0 in a.t0:
                setting = Setting(t0, sampler, steps or default_steps(sampler, t0), a.repeats)
                row, _ = bench.run(model, setting, seed=a.seed)
                rows.append(row)
                print(markdown_table([row]).splitlines()[-1], flush=True)
    header = (f"sdedit eval: model {a.model or DEFAULT_MODEL}, data {a.data}, {len(originals)} stroke inputs "
              f"({a.colors} colours), {len(reals)} real images for KID ({bench.feature_name} features).")
    for p in write_tables(rows, a.outdir / "eval", header, overwrite=False):
        print(p)
    print(header)
    return 0


def _sweep(a: argparse.Namespace) -> int:
    from .checkpoints import load_model
    from .evaluation import held_out_landscapes
    from .images import folder_images
    from .images import open_image, save_png
    from .sweep import edit_guide, run_sweep, sweep_grid, sweep_plot

    _check_t0s(a.t0)
    if a.num < 1:
        raise InputError("-n must be >= 1")
    image = open_image(a.input)
    mask = open_image(a.mask) if a.mask else None
    model = load_model(a.model or DEFAULT_MODEL, config=a.config, device=a.device)
    reals = None
    if a.num < 4:
        pass  # too few samples for KID: the plot shows faithfulness only
    elif a.real:
        reals = folder_images(Path(a.real), 200, model.resolution)
    elif (a.model or DEFAULT_MODEL) == DEFAULT_MODEL:
        reals = held_out_landscapes(100, model.resolution, offset=100_000)
    points = run_sweep(model, image, t0s=a.t0, samplers=a.sampler, steps=a.steps, mask=mask, num=a.num,
                       seed=a.seed, reals=reals, progress=not a.quiet)
    grid_path = save_png(sweep_grid(edit_guide(model, image), points), a.outdir / f"{a.input.stem}-sweep-grid.png")
    plot_path = sweep_plot(points, a.outdir / f"{a.input.stem}-sweep-plot.png")
    for p in points:
        kid_text = f", KID {p.kid:.4f}" if p.kid is not None else ""
        print(f"{p.sampler:<15} t0={p.t0:.2f} steps={p.steps:<4} L2 {p.l2:7.2f}{kid_text}")
    print(grid_path)
    print(plot_path)
    return 0


def _batch(a: argparse.Namespace) -> int:
    from .run_settings import default_steps
    from .batch import BatchParams, run_folder
    from .editing import check_settings

    sampler = a.sampler or DEFAULT_SAMPLER
    steps = a.steps if a.steps is not None else (default_steps(sampler, a.t0) if 0 < a.t0 <= 1 else 1)
    try:
        check_settings(a.t0, steps, a.repeats)
    except ValueError as e:
        raise InputError(str(e)) from None
    if a.num < 1 or not 0 <= a.seed < 2**31 or a.threads < 1:
        raise InputError("-n and --threads must be >= 1 and --seed in [0, 2^31)")
    if not 0 <= a.guidance < float("inf"):
        raise InputError(f"--guidance must be a finite number >= 0, got {a.guidance}")
    params = BatchParams(a.model or DEFAULT_MODEL, a.t0, steps, sampler, a.repeats, a.num, a.seed, a.fit,
                         a.original_size, a.prompt, a.negative_prompt, a.guidance)
    return run_folder(a.input_dir, a.outdir, a.masks, params, config=a.config, device=a.device,
                      precision=a.precision, batch_size=a.batch_size, quiet=a.quiet, threads=a.threads)


def _ui(a: argparse.Namespace) -> int:
    from .ui import parse_auth

    auth = parse_auth(a.auth)
    if a.listen and auth is None:
        raise InputError("--listen exposes the app to the network: give --auth USER:PASS as well")
    if not 1 <= a.port <= 65535:
        raise InputError(f"--port must be in 1-65535, got {a.port}")
    if a.queue_size < 1:
        raise InputError(f"--queue-size must be at least 1, got {a.queue_size}")
    with tempfile.TemporaryDirectory(prefix="sdedit-ui-") as tmp:
        # Gradio reads these at import: uploads and results live in this run's own folder, and nothing phones home
        os.environ["GRADIO_TEMP_DIR"] = str(Path(tmp) / "gradio")
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        from .ui import ModelPool, build_app, launch, model_choices

        pool = ModelPool(model_choices(a.model), device=a.device, config=a.config)
        first = a.model or DEFAULT_MODEL
        pool.get(first)  # fail now, with one line, rather than on the first click
        outdir = Path(tmp) / "results"
        app = build_app(pool, outdir=outdir, default_model=first)
        launch(app, port=a.port, listen=a.listen, auth=auth, queue_size=a.queue_size, outdir=outdir)
    return 0


def _models(a: argparse.Namespace) -> int:
    from .checkpoints import is_cached

    from .checkpoints import bundled_path

    print(f"{'name':<12} {'family':<6} {'res':>5} {'size':>8}  {'cached':<6} {'source':<30} description")
    for name, text in BUNDLED.items():
        w = bundled_path(name) / "diffusion_pytorch_model.safetensors"
        size = f"{w.stat().st_size / 1e6:.1f} MB" if w.is_file() else "?"
        cfg = bundled_path(name) / "config.json"
        res = json.loads(cfg.read_text()).get("sample_size", "?") if cfg.is_file() else "?"
        print(f"{name:<12} {'vp':<6} {res:>5} {size:>8}  {'bundled':<6} {'(inside the package)':<30} {text}")
    for p in PRESETS.values():
        size = f"{p.size_mb:.0f} MB" if p.size_mb else "?"
        cached = "yes" if is_cached(p.repo_id) else "no"
        print(f"{p.name:<12} {p.family:<6} {p.resolution:>5} {size:>8}  {cached:<6} {p.repo_id:<30} {p.description}")
    return 0


def _download(a: argparse.Namespace) -> int:
    from .checkpoints import hub_pipeline_snapshot, hub_snapshot

    if a.name in PRESETS:
        print(hub_snapshot(PRESETS[a.name].repo_id, what=a.name))
        return 0
    if "/" not in a.name:
        raise InputError(f"unknown preset {a.name!r}; presets: {', '.join(PRESETS)} (or give a Hub id OWNER/NAME)")
    folder = hub_pipeline_snapshot(a.name)
    print(folder if folder is not None else hub_snapshot(a.name, what=a.name))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "edit": _edit, "train": _train, "strokes": _strokes, "eval": _eval, "sweep": _sweep, "batch": _batch, "ui": _ui, "models": _models,
    "download": _download}


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
