"""`sdedit train`: DDPM training (Ho et al. 2020, Alg. 1; epsilon prediction, VP linear schedule) with EMA and exact resume.

The output folder is a diffusers UNet2DModel folder that `load_model` reads (EMA weights in
diffusion_pytorch_model.safetensors, config.json, scheduler_config.json); the full training
state (weights, EMA, optimizer, random generators, step, loss history) is one safetensors
file in training/state.safetensors, written atomically.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from ..devices import bf16_runs
from ..engine.precision import AUTOCAST_DTYPES, autocast, time_precisions
from ..errors import InputError
from ..files import printable
from ..precision import faster_enough, requested
from ..progress import tqdm
from ..settings import MAX_SEED
from ..loading.checkpoints import LOAD_ERRORS, first_line, read_safetensors
from ..files import check_output_folder, refuse_non_folder, write_file
from ..images import IMAGE_SUFFIXES, folder_images, grid, save_png, tensor_to_images

class Bound(NamedTuple):
    """The range a number may take: closed, or open at an end whose value itself is refused."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return above and (value < self.high if self.open_high else value <= self.high)

    def text(self) -> str:
        low, high = (f"{v:,}" if isinstance(v, int) else f"{v:g}" for v in (self.low, self.high))
        if not (self.open_low or self.open_high):
            return f"from {low} to {high}"
        return f"{'>' if self.open_low else '>='} {low} and {'<' if self.open_high else '<='} {high}"


WEEK_MINUTES = 7 * 24 * 60
# Every number a run takes, bounded once (--help and the README quote these); checked before any work.
LIMITS: dict[str, Bound] = {
    "size": Bound(8, 512),  # square resolution in pixels
    "layers_per_block": Bound(1, 8),
    "norm_groups": Bound(1, 1024),
    "batch_size": Bound(1, 1024),
    "lr": Bound(0, 1, open_low=True),
    "warmup": Bound(1, 10**9),
    "ema_decay": Bound(0, 1, open_high=True),
    "low_t_share": Bound(0, 1),
    "t_split": Bound(1, 999),
    "num_images": Bound(1, 10**7),
    "seed": Bound(0, MAX_SEED - 2),  # the run uses seed, seed + 1 and seed + 2
    "max_steps": Bound(1, 10**9),
    "minutes": Bound(0, WEEK_MINUTES, open_low=True),
    "save_every": Bound(0, WEEK_MINUTES),
}
MAX_LEVELS, MAX_WIDTH = 6, 1024  # --widths: levels of the UNet, channels of a level
MAX_BATCH_PIXELS = 2**22  # batch_size x size^2 (e.g. 64 images at 256 px): the activations a step keeps
MAX_POOL_BYTES = 2**31  # num_images x size^2 x 3 bytes: the built-in landscapes kept once made (2 GiB)


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _shown(value: object) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "..."


@dataclass(frozen=True)
class TrainConfig:
    """What to train, on what, for how long."""

    data: str = "synthetic"  # "synthetic" (built-in landscapes) or a folder of images
    size: int = 64  # square training resolution
    widths: tuple[int, ...] = (32, 64, 64, 64)  # channels per UNet level
    attn_res: tuple[int, ...] = (16,)  # resolutions with self-attention
    layers_per_block: int = 2  # residual blocks per level
    norm_groups: int = 16  # GroupNorm groups
    batch_size: int = 32
    lr: float = 5e-4  # AdamW peak learning rate
    warmup: int = 200  # linear warm-up steps
    lr_schedule: str = "constant"  # after warm-up: "constant", or "cosine" to 0 at max_steps (Loshchilov & Hutter 2017)
    ema_decay: float = 0.999  # EMA of the weights (from random weights warmed up as (1 + n) / (10 + n))
    low_t_share: float = 0.8  # share of steps drawn from t < t_split ...
    t_split: int = 700  # ... the noise levels SDEdit starts from (t0 <= 0.7)
    num_images: int = 20000  # synthetic images generated (and cached) for training
    seed: int = 0
    max_steps: int | None = None  # stop after this many steps in all
    minutes: float | None = None  # stop after this many minutes in this sitting
    save_every: float = 5.0  # minutes between checkpoints
    precision: str = "auto"  # "auto" (the faster of fp32 and bf16 autocast, timed on a training step), "fp32", "bf16"
    init_from: str | None = None  # a DDPM folder (or bundled name) whose weights start the run (see initial_weights)
    freq_shift: int = 1  # timestep sinusoids' frequency shift (a widened run keeps its source's frequencies)
    time_embedding_dim: int | None = None  # None: 4 x widths[0], diffusers' default (a widened run keeps its source's)

    def __post_init__(self) -> None:
        """InputError in one line, naming the option, for any number outside LIMITS (each on its own)."""
        whole = {f.name for f in fields(self) if f.type in ("int", "int | None")}
        for name, bound in LIMITS.items():
            value = getattr(self, name)
            if value is None and name in ("max_steps", "minutes"):
                continue
            number = isinstance(value, int) if name in whole else isinstance(value, (int, float))
            if isinstance(value, bool) or not number or not bound.holds(value):
                kind = "a whole number" if name in whole else "a number"
                raise InputError(f"{_flag(name)} must be {kind} {bound.text()}, got {_shown(value)}")
        widths = self.widths
        if not 1 <= len(widths) <= MAX_LEVELS or not all(isinstance(w, int) and 1 <= w <= MAX_WIDTH for w in widths):
            raise InputError(f"--widths must be 1 to {MAX_LEVELS} channel counts from 1 to {MAX_WIDTH}, "
                             f"got {_shown(','.join(map(str, widths)))}")

    def check_together(self) -> None:
        """InputError in one line for settings that do not go together: a network that cannot run, too much memory.

        Checked on the run's final settings (a resumed run's saved ones with the new budget), before any work."""
        widths = self.widths
        if self.size % 2 ** (len(widths) - 1):
            raise InputError(f"--size {self.size} must be a multiple of {2 ** (len(widths) - 1)} for "
                             f"{len(widths)} levels (each level halves it)")
        levels = [self.size // 2**i for i in range(len(widths))]
        missing = [r for r in self.attn_res if r not in levels]
        if missing:
            raise InputError(f"--attn-res {_shown(missing[0])} is no level's resolution (the levels are "
                             f"{', '.join(map(str, levels))} px; give --attn-res with some of them)")
        if self.batch_size * self.size**2 > MAX_BATCH_PIXELS:
            raise InputError(f"--batch-size {self.batch_size} at --size {self.size} is {self.batch_size * self.size**2}"
                             f" pixels a step; the most is {MAX_BATCH_PIXELS} (fewer images, or a smaller size)")
        if self.data == "synthetic" and self.num_images * 3 * self.size**2 > MAX_POOL_BYTES:
            raise InputError(f"--num-images {self.num_images} at --size {self.size} would keep "
                             f"{self.num_images * 3 * self.size**2 / 2**30:.1f} GiB of landscapes; the most is "
                             f"{MAX_POOL_BYTES / 2**30:.0f} GiB")

    def unet_config(self) -> dict[str, Any]:
        attn = [self.size // 2**i in self.attn_res for i in range(len(self.widths))]
        return dict(
            sample_size=self.size, in_channels=3, out_channels=3, block_out_channels=list(self.widths),
            layers_per_block=self.layers_per_block, norm_num_groups=self.norm_groups, attention_head_dim=None,
            down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
            flip_sin_to_cos=False, freq_shift=self.freq_shift, norm_eps=1e-6, downsample_padding=0,
            **({} if self.time_embedding_dim is None else {"time_embedding_dim": self.time_embedding_dim}),
        )


SCHEDULER = {"_class_name": "DDPMScheduler", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000,
             "beta_schedule": "linear", "prediction_type": "epsilon", "variance_type": "fixed_small"}


def alpha_bar() -> torch.Tensor:
    """abar_t of SCHEDULER's linear betas (Ho et al. 2020), computed in float64: (1000,) float32."""
    betas = torch.linspace(SCHEDULER["beta_start"], SCHEDULER["beta_end"], 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def load_folder(folder: Path, size: int) -> torch.Tensor:
    """All images of a folder (recursively), centre-cropped and resized to size: uint8 (N, 3, size, size)."""
    images = folder_images(folder, None, size)
    if not images:
        raise InputError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    arrs = [np.asarray(im) for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


class Data(Protocol):
    """What a run trains on: images by index, uint8 (len(idx), 3, size, size); a tensor is one."""

    def __len__(self) -> int: ...

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor: ...


class Landscapes:
    """The built-in landscapes with seeds 0..count-1, each drawn the first time a batch takes it and then kept.

    A short run so makes only the images it trains on (a landscape costs about 5-30 ms at 64 px); once all are
    made they are cached as one .npy file, which later runs read instead.  Images do not depend on when they
    are made, so a run trains exactly as on the whole set made up front.
    """

    def __init__(self, count: int, size: int, cache: Path | None):
        self.count, self.size = count, size
        self.path = cache / f"landscapes-{size}px-{count}.npy" if cache else None
        self.drawn: dict[int, np.ndarray] = {}
        self.complete: np.ndarray | None = None
        if self.path is not None and self.path.is_file():
            try:
                arr = np.load(self.path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise InputError(f"{printable(self.path)}: not a landscape cache ({first_line(e)}); "
                                 f"delete it") from None
            if arr.shape != (count, size, size, 3) or arr.dtype != np.uint8:
                raise InputError(f"{printable(self.path)}: holds {arr.shape} {arr.dtype}, not {count} landscapes "
                                 f"of {size} px; delete it")
            self.complete = arr

    @property
    def made(self) -> int:
        """How many images exist so far."""
        return self.count if self.complete is not None else len(self.drawn)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        arr = np.stack([self.image(int(i)) for i in idx.tolist()])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    def image(self, i: int) -> np.ndarray:
        """Landscape i (made now if it was not yet): uint8 (size, size, 3)."""
        from .landscapes import landscape

        if self.complete is None and i not in self.drawn:
            self.drawn[i] = np.asarray(landscape(i, self.size))
            if len(self.drawn) == self.count:
                self._keep_all()
        return self.complete[i] if self.complete is not None else self.drawn[i]

    def _keep_all(self) -> None:
        arr = np.empty((self.count, self.size, self.size, 3), np.uint8)
        for i in range(self.count):
            arr[i] = self.drawn.pop(i)  # moved, so the set is held once
        self.complete = arr
        if self.path is not None:
            write_file(self.path, lambda f: np.save(f, arr, allow_pickle=False), overwrite=True)


def synthetic_data(count: int, size: int, cache: Path | None) -> Landscapes:
    """The first `count` built-in landscapes (seeds 0..count-1), made as batches draw them (Landscapes)."""
    return Landscapes(count, size, cache)


LR_SCHEDULES = ("constant", "cosine")
PROBE_BATCH = 4  # images in the training step that --precision auto times in fp32 and in bf16 autocast
EARLY_STEPS = 100  # the loss history keeps each of the first steps' losses (a short run's curve has points) ...
LOSS_WINDOW = 50  # ... and later means over this many steps


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of a step: linear warm-up, then constant or cosine-decayed to 0 at max_steps (SGDR, one cycle)."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
    if cfg.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(step, cfg.max_steps) / cfg.max_steps))
    return lr


@dataclass
class TrainState:
    """Everything that changes during training; saved whole so that a resumed run continues exactly."""

    step: int = 0
    seconds: float = 0.0  # training time over all sittings
    images: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last entry)


class Trainer:
    """DDPM training loop over a uint8 data set (a tensor, or Landscapes made as they are drawn)."""

    def __init__(self, cfg: TrainConfig, data: Data, out: Path, device: torch.device,
                 init: dict[str, torch.Tensor] | None = None):
        """init: the starting weights (initial_weights, checked before the data is made); None = seeded random."""
        from diffusers import UNet2DModel

        self.cfg, self.data, self.out, self.device = cfg, data, out, device
        with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.model = UNet2DModel(**cfg.unet_config()).to(device)
        if init is not None:
            self.model.load_state_dict(init)
        asked = requested(None, cfg.precision)  # the config's, or SDEDIT_PRECISION for 'auto'
        if asked not in ("auto", "fp32", "bf16"):
            raise InputError(f"training runs in fp32 or bf16 autocast, not {asked}")
        self.bf16 = asked == "bf16" or (asked == "auto" and self.faster_precision() == "bf16")
        self.ema = UNet2DModel(**cfg.unet_config()).to(device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.alpha_bar = alpha_bar().to(device)
        self.data_gen = torch.Generator().manual_seed(cfg.seed + 1)  # batch indices and flips
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 2)  # timesteps and noise
        self.state = TrainState()
        self.recent: deque[float] = deque(maxlen=10)  # seconds of the last steps of this sitting

    def faster_precision(self) -> str:
        """'auto': fp32 or bf16 autocast, whichever runs a forward and backward pass of up to PROBE_BATCH training
        images faster here (timed side by side within engine.precision's budget, as inference's 'auto' is: a CPU flag
        says bf16 runs, not that it is faster; bf16 only if at least precision.MIN_GAIN faster); fp32 where bf16 does
        not run at all."""
        if not bf16_runs(self.device):
            return "fp32"
        size, n = self.cfg.size, min(self.cfg.batch_size, PROBE_BATCH)
        x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.device)
        t = torch.full((n,), 500, device=self.device)

        def step(precision: str, _: tuple[int, int]) -> torch.Tensor:
            with autocast(self.device, AUTOCAST_DTYPES[precision]):
                out = self.model(x, t).sample.float()
            out.square().mean().backward()
            self.model.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return out.detach()

        timing = time_precisions(step, ["fp32", "bf16"], [(size, size)], sigma=0.0, clock=time.perf_counter)
        return faster_enough(timing)

    def sample_t(self, n: int) -> torch.Tensor:
        """Training steps: a share low_t_share uniform below t_split, the rest uniform above it."""
        c = self.cfg
        u = torch.rand(n, generator=self.noise_gen)
        low = torch.rand(n, generator=self.noise_gen) < c.low_t_share
        t = torch.where(low, u * c.t_split, c.t_split + u * (1000 - c.t_split))
        return t.long().clamp(0, 999)

    def train_step(self) -> float:
        """One optimizer step on a fresh batch; the loss."""
        c = self.cfg
        idx = torch.randint(len(self.data), (c.batch_size,), generator=self.data_gen)
        flip = torch.rand(c.batch_size, generator=self.data_gen) < 0.5
        x0 = self.data[idx].float() / 127.5 - 1.0
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0).to(self.device)
        t = self.sample_t(c.batch_size)
        noise = torch.randn(x0.shape, generator=self.noise_gen).to(self.device)
        ab = self.alpha_bar[t.to(self.device)][:, None, None, None]
        # Forward process: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; predict eps.
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        # bf16 autocast when chosen (weights, optimizer and loss stay fp32).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            pred = self.model(x_t, t.to(self.device)).sample
        loss = nn.functional.mse_loss(pred.float(), noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(c, self.state.step)
        self.opt.step()
        self.update_ema()
        self.state.step += 1
        self.state.images += c.batch_size
        return loss.item()

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of the weights.  From random weights the decay warms up as (1 + n) / (10 + n), so that the average
        forgets the random start; a run from trained weights (--init-from) keeps them as its starting average."""
        n = self.state.step
        decay = self.cfg.ema_decay if self.cfg.init_from is not None else min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p, 1 - decay)

    # ---- saving and resuming ------------------------------------------------------------
    def save(self) -> None:
        """Atomically write the training state, then the loadable EMA model beside it."""
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"model.{k}"] = v.detach().cpu().contiguous()
        for k, v in self.ema.state_dict().items():
            tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"opt.{i}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        tensors["rng.data"] = self.data_gen.get_state()
        tensors["rng.noise"] = self.noise_gen.get_state()
        meta = {"config": asdict(self.cfg), "state": asdict(self.state),
                "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]}
        blob = save(tensors, metadata={"sdedit_training": json.dumps(meta)})
        write_file(self.out / "training" / "state.safetensors", lambda f: f.write(blob), overwrite=True)
        export_model(self.ema, self.cfg, self.state, self.out)

    def load(self, path: Path) -> None:
        """Restore everything save() wrote; InputError naming the file when it is not such a state."""
        tensors, _ = read_safetensors(path)
        try:
            self._restore(tensors, read_training_meta(path))
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
            raise InputError(f"{printable(path)}: not a usable sdedit training state: {first_line(e)}") from None

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v
        groups = [{**g, "params": [p for p in range(len(list(self.model.parameters())))]} for g in meta["param_groups"]]
        self.opt.load_state_dict({"state": opt_state, "param_groups": groups})
        self.data_gen.set_state(tensors["rng.data"])
        self.noise_gen.set_state(tensors["rng.noise"])
        s = meta["state"]
        self.state = TrainState(s["step"], s["seconds"], s["images"], [tuple(x) for x in s["losses"]])

    def step_seconds(self) -> float | None:
        """Seconds a training step takes: the mean of this sitting's last steps, else of the run's; None before any."""
        if self.recent:
            return sum(self.recent) / len(self.recent)
        return self.state.seconds / self.state.step if self.state.step else None

    def run(self, progress: bool = True, started: float | None = None,
            reserve: Callable[[float], float] = lambda step_s: 0.0) -> TrainState:
        """Train until max_steps, or until cfg.minutes from `started` (time.monotonic(); default now) would not hold
        another step and then reserve(seconds per step), the time kept for what follows training; at least one step
        when any is left. Checkpoint every save_every minutes and at the end."""
        c = self.cfg
        started = time.monotonic() if started is None else started
        deadline = None if c.minutes is None else started + c.minutes * 60
        last_save = time.perf_counter()
        window: list[float] = []
        total = c.max_steps if c.max_steps is not None else None
        bar = tqdm(total=total, initial=self.state.step, desc="train", unit="step", disable=not progress,
                   file=sys.stderr)
        try:
            while c.max_steps is None or self.state.step < c.max_steps:
                per_step = self.step_seconds() if self.recent else None
                if deadline is not None and per_step is not None and \
                        time.monotonic() + per_step + reserve(per_step) > deadline:
                    break
                t_step = time.perf_counter()
                loss = self.train_step()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at step {self.state.step}; "
                                             f"the last checkpoint is kept")
                took = time.perf_counter() - t_step
                self.state.seconds += took
                self.recent.append(took)
                window.append(loss)
                if len(window) >= (1 if self.state.step <= EARLY_STEPS else LOSS_WINDOW):
                    self.state.losses.append((self.state.step, sum(window) / len(window)))
                    window = []
                bar.update(1)
                made = getattr(self.data, "made", None)  # built-in landscapes made so far
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{c.batch_size / took:.1f}",
                                **({} if made is None else {"images_made": made}),
                                **({} if deadline is None else {"left_s": f"{deadline - time.monotonic():.0f}"}))
                if time.perf_counter() - last_save >= c.save_every * 60:
                    self.save()
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            self.save()  # an interrupted run keeps its progress
            raise
        finally:
            bar.close()
        if window:
            self.state.losses.append((self.state.step, sum(window) / len(window)))
        self.save()
        return self.state


def read_training_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a training state file (InputError naming the file if it is not one)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        data = json.loads(meta["sdedit_training"])
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ValueError("no config in its metadata")
        return data
    except LOAD_ERRORS as e:
        raise InputError(f"{printable(path)}: not an sdedit training state: {first_line(e)}") from None


def export_model(unet: nn.Module, cfg: TrainConfig, state: TrainState, out: Path, dtype: torch.dtype = torch.float32,
                 facts: dict[str, Any] | None = None) -> None:
    """Write a diffusers UNet2DModel folder (config.json, scheduler_config.json, safetensors weights) atomically.

    facts: more `_sdedit` entries for config.json, e.g. the measured recommended_t0.
    """
    from safetensors.torch import save as save_bytes

    config = {"_class_name": "UNet2DModel", **cfg.unet_config(),
              "_sdedit": {"trained_steps": state.step, "train_hours": round(state.seconds / 3600, 3),
                          "images_seen": state.images, "data": cfg.data, **(facts or {})}}
    weights = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
    blob = save_bytes(weights)
    write_file(out / "diffusion_pytorch_model.safetensors", lambda f: f.write(blob), overwrite=True)
    write_file(out / "config.json", lambda f: f.write(json.dumps(config, indent=2).encode()), overwrite=True)
    write_file(out / "scheduler_config.json", lambda f: f.write(json.dumps(SCHEDULER, indent=2).encode()),
                 overwrite=True)


def loss_plot(state: TrainState, path: Path) -> Path:
    """The loss curve as a PNG (matplotlib): every point with a marker while few; a sentence when under two."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if len(state.losses) >= 2:
        steps, losses = zip(*state.losses)
        ax.plot(steps, losses, marker="." if len(steps) <= EARLY_STEPS else None)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    else:
        last = f"; loss {state.losses[-1][1]:.4f}" if state.losses else ""
        ax.text(0.5, 0.5, f"too few steps to plot a curve ({state.step} step{'s' * (state.step != 1)}{last})",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("step")
    ax.set_ylabel(f"epsilon MSE\n(steps 1-{EARLY_STEPS} each, then means of {LOSS_WINDOW})", fontsize=8)
    hours = state.seconds / 3600
    ax.set_title(f"{state.step} step{'s' * (state.step != 1)}, " + (f"{hours:.2f} h" if hours >= 1 else f"{state.seconds / 60:.1f} min"))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_file(path, lambda f: f.write(buf.getvalue()), overwrite=True)


PREVIEW_SAMPLES, PREVIEW_STEPS = 16, 100  # the sample grid: images, and DDPM steps when time allows
PREVIEW_SHARE = 0.25  # under --minutes, the most of the budget the preview's steps may take (at least one step)
WRITING_S = 5.0  # seconds kept under --minutes for the last checkpoint, the loss plot and reading the model back


def preview_steps(step_s: float | None, batch_size: int, budget_s: float | None) -> int:
    """DDPM steps of the sample grid: PREVIEW_STEPS, or under a budget as many as fit in PREVIEW_SHARE of it.

    A sampling step (one forward pass of PREVIEW_SAMPLES images) is taken as a third of a training step (forward
    and backward) scaled by the batch sizes."""
    if budget_s is None or step_s is None:
        return PREVIEW_STEPS
    return max(1, min(PREVIEW_STEPS, int(PREVIEW_SHARE * budget_s / forward_seconds(step_s, batch_size))))


def forward_seconds(step_s: float, batch_size: int) -> float:
    """Estimated seconds of one forward pass over the preview's images, from a training step's time."""
    return step_s / 3 * PREVIEW_SAMPLES / batch_size


def sample_grid(out: Path, path: Path, n: int = PREVIEW_SAMPLES, steps: int = PREVIEW_STEPS, seed: int = 0,
                progress: bool = False) -> Path:
    """Unconditional samples of the saved EMA model (SDEdit from pure noise, t0 = 1) as one grid PNG.

    As in DDPM's own sampling code, the denoised estimate is clipped to [-1, 1] at each step: from
    sigma ~ 157 small epsilon errors would otherwise saturate the colours.  (SDEdit from t0 <= 0.6
    is unchanged by clipping on the bundled model, so the editing engine does not clip.)  The PNG's
    metadata records what made it.
    """
    from ..engine.editing import edit_tensors
    from ..loader import load_model

    model = load_model(out, device="cpu")
    r = model.resolution
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    bar = tqdm(total=steps, desc="preview", unit="step", disable=not progress, file=sys.stderr)
    try:
        x = edit_tensors(lambda x, s: model.denoise(x, s).clamp(-1.0, 1.0), model.schedule, torch.zeros(n, 3, r, r),
                         mask=None, t0=1.0, steps=steps, repeats=1, sampler="ddpm", generator=gens,
                         callback=lambda *_: bar.update(1))
    finally:
        bar.close()
    img = grid(tensor_to_images(x), ncols=8)
    img.info["sdedit"] = json.dumps({"preview": "unconditional samples of the EMA model", "model": str(out),
                                     "t0": 1.0, "steps": steps, "sampler": "ddpm", "seeds": f"{seed}-{seed + n - 1}"})
    return save_png(img, path, overwrite=True)


BUDGET = ("max_steps", "minutes", "save_every", "precision")  # what a resumed run may change


def initial_weights(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    """The run's settings and fp32 starting weights from cfg.init_from; InputError unless the networks agree.

    The source's network must be cfg's, or the same with every width k times the source's: then the weights
    are widened exactly (research.widening) and the run keeps the source's timestep embedding. Every tensor's
    name and shape in the file's header is checked against the source's network before any tensor is read."""
    from diffusers import UNet2DModel

    from ..loading.checkpoints import plan_network, read_json, safetensors_shapes
    from ..loading.presets import BUNDLED_MODELS, bundled_path
    from .widening import SAME_LAYOUT, time_embedding, widen_weights, widened_config, widening_factor

    source = cfg.init_from
    label = f"--init-from {printable(source)}"
    folder = bundled_path(source) if source in BUNDLED_MODELS and not Path(source).exists() else Path(source)
    if not folder.is_dir():
        raise InputError(f"{label}: not a folder or a bundled model (give a model folder that `sdedit train` wrote)")
    try:
        config = read_json(folder / "config.json")
    except InputError as e:
        raise InputError(f"{label}: {e}") from None
    k = widening_factor(config, list(cfg.widths))
    want = cfg.unet_config()
    differ = [key for key in ("sample_size", "block_out_channels", *SAME_LAYOUT) if config.get(key) != want[key]
              and not (key == "block_out_channels" and k is not None)]
    if differ:
        raise InputError(f"{label}: its network differs from this run's ({', '.join(differ)}); give the same"
                         f" --size/--attn-res/--layers-per-block and the same --widths or a whole multiple")
    try:  # the run embeds t as its source does (widened: through the same frequencies, research.widening)
        time_embedding(config)
        adopted = widened_config(config, k) if k is not None else config
    except ValueError as e:
        raise InputError(f"{label}: {printable(str(e))}") from None
    source_cfg = replace(cfg, widths=tuple(config["block_out_channels"]), freq_shift=config.get("freq_shift", 0),
                         time_embedding_dim=config.get("time_embedding_dim"))
    cfg = replace(cfg, freq_shift=adopted.get("freq_shift", 0), time_embedding_dim=adopted.get("time_embedding_dim"))
    weights = folder / "diffusion_pytorch_model.safetensors"
    network = plan_network(lambda: UNet2DModel(**source_cfg.unet_config()), label)
    expected = {name: tuple(v.shape) for name, v in network.state_dict().items()}
    if not weights.is_file():
        raise InputError(f"{label}: no {weights.name} in the folder")
    try:
        found = safetensors_shapes(weights)
    except InputError as e:
        raise InputError(f"{label}: {e}") from None
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = [name for name in sorted(expected.keys() & found.keys()) if expected[name] != found[name]]
    if missing or extra or wrong:
        what = (f"tensor {printable(wrong[0])} is {found[wrong[0]]}, not {expected[wrong[0]]}" if wrong else
                f"no tensor {printable(missing[0])}" if missing else f"an unknown tensor {printable(extra[0])}")
        raise InputError(f"{label}: {printable(weights)} does not hold its config's network: {what}")
    try:
        tensors, _ = read_safetensors(weights)
    except InputError as e:
        raise InputError(f"{label}: {e}") from None
    tensors = {name: v.float() for name, v in tensors.items()}
    if k is None:
        return cfg, tensors
    wide = plan_network(lambda: UNet2DModel(**cfg.unet_config()), label)
    shapes = {name: tuple(v.shape) for name, v in wide.state_dict().items()}
    return cfg, widen_weights(tensors, shapes, k, seed=cfg.seed)


def note(progress: bool, text: str) -> None:
    """One line of progress on stderr (between the bars), unless quiet."""
    if progress:
        tqdm.write(printable(text), file=sys.stderr)


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, device: str | None = None, progress: bool = True,
          cache: Path | None = None, explicit: frozenset[str] = frozenset(),
          started: float | None = None) -> TrainState:
    """Train (or resume) a run in folder out; write the model, loss.png and samples.png.

    explicit: the fields of cfg the user set; on resume any of them other than the budget must equal the run's.
    started: time.monotonic() when the command began (default: now); cfg.minutes counts from it and covers
    everything, setup, training, the preview grid and the writing (PREVIEW_SHARE, WRITING_S).
    """
    started = time.monotonic() if started is None else started
    from diffusers import UNet2DModel

    from ..devices import pick_device
    from ..loading.checkpoints import plan_network

    state_path = out / "training" / "state.safetensors"
    if resume:
        if not state_path.is_file():
            raise InputError(f"nothing to resume: {state_path} does not exist")
        saved = read_training_meta(state_path)["config"]
        try:
            resumed = TrainConfig(**{**saved, "widths": tuple(saved["widths"]), "attn_res": tuple(saved["attn_res"])})
        except (KeyError, TypeError) as e:
            raise InputError(f"{printable(state_path)}: not an sdedit training state: {first_line(e)}") from None
        changed = [k for k in explicit - set(BUDGET) if getattr(cfg, k) != getattr(resumed, k)]
        if changed:
            k = changed[0]
            raise InputError(f"--{k.replace('_', '-')} {getattr(cfg, k)} differs from the run's "
                             f"{getattr(resumed, k)}; a resumed run keeps its settings (only --max-steps, "
                             f"--minutes and --save-every may change)")
        cfg = replace(resumed, **{k: getattr(cfg, k) for k in BUDGET})
    else:
        refuse_non_folder(out)
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out} is not empty; pass --resume to continue its run, or choose a new folder")
    cfg.check_together()
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise InputError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {printable(cfg.lr_schedule)}")
    if cfg.lr_schedule == "cosine" and cfg.max_steps is None:
        raise InputError("--lr-schedule cosine decays to 0 at --max-steps; give --max-steps")
    plan_network(lambda: UNet2DModel(**cfg.unet_config()), "the network settings (--size, --widths, --attn-res, "
                 "--layers-per-block)")
    # The starting weights are checked (and read) before the data is made: a bad --init-from fails at once.  A
    # resumed run starts from its own state instead (its saved settings already hold a widened embedding).
    init = None
    if cfg.init_from is not None and not resume:
        cfg, init = initial_weights(cfg)
    dev = pick_device(device)
    check_output_folder(out)  # it takes files: proved before the data is made
    data: Data
    if cfg.data == "synthetic":
        data = synthetic_data(cfg.num_images, cfg.size, cache)
        note(progress, f"data: {cfg.num_images} built-in landscapes at {cfg.size} px, " + (
            "read from the cache" if data.made else "each made the first time a batch draws it"))
    else:
        note(progress, f"data: reading the images of {cfg.data} at {cfg.size} px")
        data = load_folder(Path(cfg.data), cfg.size)
        note(progress, f"data: {len(data)} images")
    note(progress, "setup: building the network" + (" (--precision auto: timing fp32 against bf16 autocast)"
                                                    if requested(None, cfg.precision) == "auto" else ""))
    trainer = Trainer(cfg, data, out, dev, init)
    if resume:
        trainer.load(state_path)
    budget_s = None if cfg.minutes is None else cfg.minutes * 60

    def after_training(step_s: float) -> float:  # the preview's estimated time and the writing's
        return preview_steps(step_s, cfg.batch_size, budget_s) * forward_seconds(step_s, cfg.batch_size) + WRITING_S

    stop = [f"step {cfg.max_steps}"] if cfg.max_steps is not None else []
    if budget_s is not None:
        stop.append(f"{cfg.minutes:g} minute{'s' * (cfg.minutes != 1)} after the start, less the time kept for "
                    f"the preview and writing")
    note(progress, f"training in {'bf16 autocast' if trainer.bf16 else 'fp32'} on {dev}, until "
         + (" or ".join(stop) if stop else "Ctrl-C (the state is saved)"))
    state = trainer.run(progress=progress, started=started, reserve=after_training)
    note(progress, f"wrote the model and training/state.safetensors in {out} (step {state.step})")
    loss_plot(state, out / "training" / "loss.png")
    note(progress, f"wrote {out / 'training' / 'loss.png'}")
    steps = preview_steps(trainer.step_seconds(), cfg.batch_size, budget_s)
    note(progress, f"preview: {PREVIEW_SAMPLES} samples of the EMA model, {steps} DDPM step{'s' * (steps != 1)}"
         + (f" (as many as fit in {PREVIEW_SHARE:.0%} of --minutes)" if steps < PREVIEW_STEPS else ""))
    sample_grid(out, out / "training" / "samples.png", steps=steps, progress=progress)
    note(progress, f"wrote {out / 'training' / 'samples.png'}")
    return state
