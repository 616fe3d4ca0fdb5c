"""The released SDEdit command line (`python main.py --config church.yml --sample --npy_name ... --t 500 --ni`), done safely.

Reads the released input format (a torch-saved [mask, img] pair, mask 1 = keep) with
weights_only=True, runs DDPM ancestral SDEdit with t0 = t / 1000 and N = t steps, and
writes the released layout under <exp>/image_samples/<image_folder>/.  It never deletes:
an existing folder is moved aside.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch

from ..errors import InputError
from ..files import MAX_FREE_NAMES, printable
from ..loading.checkpoints import load_plain
from ..loading.released_format import read_yaml
from ..settings import RunSettings, check_t0
from .common import Parser, run_guarded, say

RELEASED_CONFIGS = {"church.yml": "church", "bedroom.yml": "bedroom", "celeba.yml": "celebahq"}
CATEGORY_PRESET = {"church_outdoor": "church", "bedroom": "bedroom", "celeba_hq": "celebahq", "celeba": "celebahq"}


def _parser() -> Parser:
    p = Parser(prog="main.py", description="SDEdit, the released command line (runs on the sdedit engine).")
    p.add_argument("--config", required=True, help="church.yml, bedroom.yml, celeba.yml or a path to a config")
    p.add_argument("--seed", type=int, default=1234, help="seed of sample 0; sample j uses seed + j")
    p.add_argument("--exp", default="exp", help="experiment folder")
    p.add_argument("--doc", default="", help="ignored (kept for compatibility)")
    p.add_argument("--comment", default="", help="ignored (kept for compatibility)")
    p.add_argument("--verbose", default="info", help="ignored (kept for compatibility)")
    p.add_argument("--sample", action="store_true", help="sample (the only mode)")
    p.add_argument("-i", "--image_folder", default="images", help="folder name under <exp>/image_samples")
    p.add_argument("--ni", action="store_true", help="no interaction: move an existing output folder aside")
    p.add_argument("--npy_name", "--mask_image_file", dest="npy_name", required=True,
                   help="input: a .pth [mask, img] pair, found as given, as NAME.pth or colab_demo/NAME.pth")
    p.add_argument("--sample_step", type=int, default=3, help="K, the number of repeats")
    p.add_argument("--t", type=int, default=400, help="noise level in steps of 1000 (t0 = t / 1000, N = t)")
    p.add_argument("--ckpt", help="a local checkpoint (original .ckpt, .safetensors or diffusers folder)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA if present)")
    return p


def _config_path(name: str) -> tuple[Path, str | None]:
    """The config file and the preset it stands for (bundled name, or by its data category)."""
    if Path(name).is_file():
        data = read_yaml(Path(name)).get("data")
        category = data.get("category") if isinstance(data, dict) else None
        if not isinstance(category, (str, type(None))):
            raise InputError(f"{printable(name)}: data.category must be a name, got a {type(category).__name__}")
        return Path(name), RELEASED_CONFIGS.get(Path(name).name) or CATEGORY_PRESET.get(str(category))
    base = Path(name).name
    if base in RELEASED_CONFIGS:
        return Path(str(resources.files("sdedit") / "configs" / base)), RELEASED_CONFIGS[base]
    raise InputError(f"config not found: {name} (bundled: {', '.join(RELEASED_CONFIGS)})")


def find_input(name: str) -> Path:
    """The input file for --npy_name, where the released code and users put it."""
    for cand in (Path(name), Path(f"{name}.pth"), Path("colab_demo") / f"{name}.pth"):
        if cand.is_file():
            return cand
    raise InputError(f"input not found: {name} (looked for {name}, {name}.pth and colab_demo/{name}.pth)")


def read_pair(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(img 3xHxW in [0, 1], edit mask HxW with 1 = edit) from a released [mask, img] or [img, mask] file."""
    obj = load_plain(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != 2 or not all(isinstance(t, torch.Tensor) for t in obj):
        raise InputError(f"{path}: expected a pair [mask, img] of tensors")
    a, b = (t.float() for t in obj)

    def is_img(t: torch.Tensor) -> bool:
        return t.ndim == 3 and t.shape[0] == 3

    def is_binary(t: torch.Tensor) -> bool:
        return bool(((t == 0) | (t == 1)).all())

    if is_img(a) and is_img(b):
        mask, img = (b, a) if is_binary(b) and not is_binary(a) else (a, b)  # released order: [mask, img]
    elif is_img(b):
        mask, img = a, b
    elif is_img(a):
        img, mask = a, b
    else:
        raise InputError(f"{path}: no 3xHxW image in the pair (shapes {tuple(a.shape)}, {tuple(b.shape)})")
    if mask.ndim == 3:
        mask = mask.ne(1).any(dim=0)  # released: edit wherever any channel is not 1
    else:
        mask = mask.ne(1)
    if mask.shape != img.shape[1:]:
        raise InputError(f"{path}: mask {tuple(mask.shape)} and image {tuple(img.shape[1:])} differ in size")
    if not torch.isfinite(img).all() or img.min() < 0 or img.max() > 1:
        raise InputError(f"{path}: image values must be in [0, 1]")
    return img, mask.float()


def output_folder(exp: str, image_folder: str) -> Path:
    """<exp>/image_samples/<image_folder>, refusing an -i that would leave it (absolute, '..')."""
    sub = Path(image_folder)
    if sub.is_absolute() or ".." in sub.parts or not sub.parts:
        raise InputError(f"-i/--image_folder must be a relative folder name inside <exp>/image_samples, got "
                         f"{printable(image_folder)!r}")
    return Path(exp) / "image_samples" / sub


def confirm_replace(folder: Path, ni: bool) -> None:
    """Without --ni, ask before results in an existing folder are moved aside (no answer: nothing is done)."""
    if not os.path.lexists(folder) or ni:
        return
    print(f"Image folder {printable(folder)} already exists. Move it aside when the new results are ready? (Y/N)",
          file=sys.stderr)
    answer = sys.stdin.readline().strip().upper() if sys.stdin and not sys.stdin.closed else ""
    if answer != "Y":
        raise InputError(f"output folder {printable(folder)} exists; nothing done (pass --ni to move it aside)")


def publish(staging: Path, folder: Path) -> Path | None:
    """Put finished results in place: an existing folder is first moved aside to <folder>.old-N; the moved path."""
    aside = None
    if os.path.lexists(folder):
        aside = next((c for c in (folder.with_name(f"{folder.name}.old-{n}") for n in range(1, MAX_FREE_NAMES))
                      if not os.path.lexists(c)), None)
        if aside is None:
            raise InputError(f"no free name to move {printable(folder)} aside; clean up its .old-N folders")
        folder.rename(aside)
    staging.rename(folder)
    return aside


def staging_folder(folder: Path) -> Path:
    """A new empty folder beside `folder` for the results in the making, with the mode any folder gets here (the
    umask's: it becomes the output folder, so unlike tempfile.mkdtemp's 0700 it is as readable as its parent's)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        for n in range(MAX_FREE_NAMES):
            candidate = folder.parent / f".{folder.name}.{os.getpid()}-{n}.partial"
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as e:
        raise InputError(f"cannot write in {printable(folder.parent)}: {e.strerror}") from None
    raise InputError(f"no free name for a staging folder in {printable(folder.parent)}; clean up its .partial folders")


def sampling_batch_size(config: Path) -> int:
    """The released config's sampling.batch_size (copies sampled), checked."""
    sampling = read_yaml(config).get("sampling", {})
    n = sampling.get("batch_size", 1) if isinstance(sampling, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
        shown = repr(n) if isinstance(n, (int, float)) else f"a {type(n).__name__}"  # never a whole value from a file
        raise InputError(f"{printable(config)}: sampling.batch_size must be a whole number from 1 to 1024, "
                         f"got {shown}")
    return n


def run(args: argparse.Namespace) -> int:
    from ..engine.editing import edit_tensors
    from ..errors import SamplingError
    from ..files import write_file
    from ..images import grid, save_png, tensor_to_images
    from ..loader import load_model

    # the released recipe: N = t DDPM ancestral steps from t0 = t / 1000, K = --sample_step rounds
    try:
        check_t0(args.t / 1000)
    except InputError as e:
        raise InputError(f"--t must be in 1..1000 (t0 = t / 1000): {e}") from None
    settings = RunSettings(t0=args.t / 1000, steps=args.t, sampler="ddpm", repeats=args.sample_step, seed=args.seed)
    folder = output_folder(args.exp, args.image_folder)
    config, preset = _config_path(args.config)
    settings = settings.with_(num_samples=sampling_batch_size(config))
    img, omega = read_pair(find_input(args.npy_name))
    if args.ckpt:
        model = load_model(args.ckpt, config=config, device=args.device)
    elif preset:
        model = load_model(preset, device=args.device)
    else:
        raise InputError(f"{config}: no preset matches this config; pass --ckpt PATH")
    r = model.resolution
    if tuple(img.shape[1:]) != (r, r):
        raise InputError(f"input is {img.shape[2]}x{img.shape[1]} but the model needs {r}x{r}")
    confirm_replace(folder, args.ni)

    # Everything is written into a staging folder beside the target, moved into place only when complete:
    # a failed run leaves the earlier results where they were and nothing half-made.
    staging = staging_folder(folder)
    try:
        n = settings.num_samples
        dev = model.device
        x0 = (img * 2 - 1)[None].expand(n, -1, -1, -1).to(dev)
        mask = omega[None, None].to(dev)
        assert settings.seed is not None
        generators = [torch.Generator().manual_seed(settings.seed + j) for j in range(n)]

        def save_grid(x: torch.Tensor, name: str) -> None:
            save_png(grid(tensor_to_images(x)), staging / name, overwrite=True)

        save_grid(x0, "original_input.png")
        guide = x0
        for it in range(settings.repeats):
            first: dict[str, torch.Tensor] = {}

            def keep_init(i: int, sigma: float, x: torch.Tensor, d: torch.Tensor) -> None:
                if i == 0:
                    first["x"] = x / (1 + sigma**2) ** 0.5  # the noised start, in VP form like the release

            try:
                x = edit_tensors(model.denoise, model.schedule, guide, mask=mask, t0=settings.t0,
                                 steps=settings.steps or 1, repeats=1, sampler=settings.sampler,
                                 generator=generators, callback=keep_init)
            except FloatingPointError as e:
                raise SamplingError(f"sampling diverged: {e}") from None
            save_grid(first["x"], f"init_{it}.png")
            save_grid(x, f"samples_{it}.png")
            buf = io.BytesIO()
            torch.save(x.cpu(), buf)
            write_file(staging / f"samples_{it}.pth", lambda f: f.write(buf.getvalue()), overwrite=True)
            guide = mask * x + (1 - mask) * x0
            print(f"repeat {it + 1}/{settings.repeats}: done")
        aside = publish(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # only the staging folder this run made
        raise
    if aside is not None:
        say(f"moved the previous results to {aside}")
    say(f"wrote {folder}: original_input.png, init_*.png, samples_*.png, samples_*.pth")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of main.py."""
    return run_guarded(lambda: run(_parser().parse_args(argv)), "main.py")
