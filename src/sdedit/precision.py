"""Which precision a run uses: the one asked for, or for 'auto' the faster of fp32 and bf16 as measured on this
machine, for this network and input shape, once, then read from a cache in the user's cache folder.

A flag (AMX, AVX-512 BF16, a GPU's compute capability) says bf16 runs, not that it is faster: on a
Xeon with AVX-512 BF16 but no AMX it is 1.3x slower than fp32.  So 'auto' times both
(engine/precision.py: proxies of the run's own input, at most PROBE_BUDGET_S seconds), keeps bf16
only if its output passes the quality guard, and caches the decision under the device's name, the
torch version, the thread count, the network's signature, the input's shape and the batch bucket.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .devices import bf16_runs, device_name
from .engine.precision import AUTOCAST_DTYPES, PROBE_BUDGET_S, Timing, proxy_sizes, time_precisions, under_precision
from .engine.samplers import Denoiser
from .errors import InputError, SdeditError
from .files import printable, write_file
from .settings import PRECISIONS

PRECISION_ENV = "SDEDIT_PRECISION"  # forces a precision for every run that does not name one
CACHE_ENV = "SDEDIT_CACHE_DIR"  # where measured decisions are kept (default: the user's cache folder)
CACHE_FILE = "precision.json"
CACHE_VERSION = 1
GUARD = 0.02  # bf16's D may differ from fp32's by at most this rms per (1 + sigma), on the data scale
MIN_GAIN = 1.1  # a reduced precision must be measured this much faster to replace fp32: a closer ratio is within
# the noise of a shared machine (measured under load: 1.04x "faster" bf16 that is 2x slower when quiet) and fp32
# is the more exact; the decision is cached, so a coin flip would stick
MIN_PROXY_CELLS = 1024  # the smallest proxy measured: batch x height x width cells of the sampler's space
MAX_CACHE_ENTRIES = 1000  # decisions kept; older ones are dropped first
MAX_CACHE_BYTES = 4_000_000  # a cache file larger than this is not one this package wrote
Warn = Callable[[str], None]


def warn_stderr(message: str) -> None:
    """The default way a decision's problem is told: one line on standard error."""
    print(f"sdedit: warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class Choice:
    """The precision a run used, and why (recorded in every output's metadata)."""

    precision: str  # fp32, bf16 or fp16
    reason: str  # e.g. "asked", "auto: measured bf16 1.8x faster", "auto: cached fp32 (bf16 5.1x slower)"


def cache_path() -> Path:
    """The decisions' file: $SDEDIT_CACHE_DIR/precision.json, else in the user's cache folder (platformdirs)."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        from platformdirs import user_cache_dir

        folder = user_cache_dir("sdedit", appauthor=False)
    return Path(folder) / CACHE_FILE


def requested(asked: str | None, default: str) -> str:
    """The run's precision name: asked (a run setting), else the model's own default if not 'auto', else
    $SDEDIT_PRECISION, else 'auto'."""
    if asked is not None:
        return asked
    if default != "auto":
        return default
    env = os.environ.get(PRECISION_ENV, "").strip()
    if env and env not in PRECISIONS:
        raise InputError(f"{PRECISION_ENV} must be one of {', '.join(PRECISIONS)}, got {printable(env)!r}")
    return env or "auto"


def candidates(device: torch.device, stored: str | None) -> list[str]:
    """What 'auto' chooses from: the precision weights are stored in (offload), else fp32 and, where it runs, bf16."""
    if stored is not None:
        return [stored]
    return ["fp32", "bf16"] if bf16_runs(device) else ["fp32"]


def read_cache(path: Path, warn: Warn) -> dict[str, Any] | None:
    """The cached decisions ({} when there is no file yet); None, with one warning, for a file that cannot be read
    or is not a cache of this version: measure again, and leave that file as it is (it may not be ours)."""
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            raise ValueError(f"over {MAX_CACHE_BYTES} bytes")
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_CACHE_BYTES))
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
            raise ValueError("not a precision cache of this version")
    except (FileNotFoundError, NotADirectoryError):
        return {}  # not written yet (a file in the way of the folder is reported when the decision is saved)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0][:80]
        warn(f"ignoring the precision cache {printable(path)} ({why}); measuring again and leaving it as it is "
             f"(delete it to let sdedit keep its decisions there)")
        return None
    return data["entries"]


def write_cache(path: Path, entries: dict[str, Any], warn: Warn) -> None:
    """Write the decisions whole (the one safe writer); a failure is one warning, never fatal."""
    kept = dict(list(entries.items())[-MAX_CACHE_ENTRIES:])
    payload = json.dumps({"version": CACHE_VERSION, "entries": kept}, indent=1).encode()
    try:
        write_file(path, lambda f: f.write(payload), overwrite=True)
    except (SdeditError, OSError) as e:
        warn(f"cannot save the precision decision in {printable(path)} ({str(e).splitlines()[0][:120]}); "
             f"the next run measures again")


def decisions(path: Path, device: torch.device, warn: Warn = warn_stderr) -> list[str]:
    """The cached decisions for this device and torch build, one readable line each."""
    rows = []
    for key, entry in (read_cache(path, warn) or {}).items():
        try:
            name, version, threads, network, shape, bucket = json.loads(key)
            shown = "x".join(str(int(v)) for v in shape)
            rows.append(f"network {network}, input {shown}, batch {bucket}+, {threads} threads: {entry['precision']} "
                        f"({entry['why']}; measured in {float(entry['spent']):.2f} s, {entry['measured']})")
        except (ValueError, TypeError, KeyError):
            continue  # an entry this version did not write: never used by a run either
        if name != device_name(device) or version != torch.__version__:
            rows.pop()
    return rows


def batch_bucket(batch: int) -> int:
    """The power of two at or below the batch size: decisions are shared within a bucket."""
    return 1 << (max(1, batch).bit_length() - 1)


def decision_key(device: torch.device, network: str, shape: tuple[int, ...]) -> str:
    """What a measured decision depends on: device, torch, threads, network, input shape, batch bucket."""
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return json.dumps([device_name(device), torch.__version__, threads, network, list(shape[1:]),
                       batch_bucket(shape[0])])


def measure(denoiser: Denoiser, x: torch.Tensor, sigma: float, names: list[str], multiple: int,
            condition: torch.Tensor | None = None, *, budget: float = PROBE_BUDGET_S,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time D in each precision on proxies of x (its top-left crops that the network takes), within budget."""
    device = x.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device) * sigma + x
    s = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=device)
    wrapped = {p: under_precision(denoiser, device, p) for p in names}

    def run(precision: str, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        kwargs = {} if condition is None else {"condition": condition[..., :h, :w]}
        # the probe's outputs are thrown away: a library's UserWarning about them (e.g. torch's rms_norm dtype
        # note under bf16) is nothing a user can act on, and would break -q
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = wrapped[precision](probe[..., :h, :w], s, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    cells = max(1, MIN_PROXY_CELLS // x.shape[0])
    sizes = proxy_sizes(x.shape[-2], x.shape[-1], multiple, min_positions=cells)
    return time_precisions(run, names, sizes, sigma=sigma, budget=budget, clock=clock)


def faster_enough(timing: Timing) -> str:
    """The fastest precision of a timing, unless it beats fp32 by less than MIN_GAIN (then fp32): the speed rule of
    every 'auto' decision (editing and training)."""
    fastest = timing.fastest()
    if fastest != "fp32" and "fp32" in timing.seconds and timing.seconds["fp32"] / timing.seconds[fastest] < MIN_GAIN:
        return "fp32"
    return fastest


def decide(timing: Timing) -> tuple[str, str]:
    """The precision a timing picks (fastest passing the guard) and the reason, e.g. 'measured bf16 1.8x faster'."""
    fastest = timing.fastest()
    ratio = timing.ratio()
    if fastest != "fp32" and timing.difference > GUARD:
        return "fp32", f"{fastest} {ratio:.2f}x faster but off by {timing.difference:.3g} (guard {GUARD})"
    if faster_enough(timing) != fastest:
        gain = timing.seconds["fp32"] / timing.seconds[fastest]
        return "fp32", f"{fastest} only {gain:.2f}x faster (under the {MIN_GAIN}x that replaces fp32)"
    slower = [p for p in timing.seconds if p != fastest]
    return fastest, f"{fastest}, {', '.join(slower)} {ratio:.2f}x slower"


@dataclass
class RunPrecision:
    """The precision of one run, decided on its first batch and kept for all its batches (so every output of a
    run is made at one precision).  Owned by the run; the model is never changed."""

    asked: str  # auto, fp32, bf16 or fp16 (after `requested`)
    device: torch.device
    network: str  # the model's network signature
    multiple: int  # the network's input sides are multiples of this, in the sampler's space
    stored: str | None = None  # the precision offloaded weights are stored in (then the only candidate)
    warn: Warn = warn_stderr
    choice: Choice | None = None

    def resolve(self, denoiser: Denoiser, x: torch.Tensor, sigma: float,
                condition: torch.Tensor | None = None) -> Choice:
        """The run's choice, measured (or read from the cache) on the first call."""
        if self.choice is None:
            self.choice = self._choose(denoiser, x, sigma, condition)
        return self.choice

    def _choose(self, denoiser: Denoiser, x: torch.Tensor, sigma: float, condition: torch.Tensor | None) -> Choice:
        if self.asked != "auto":
            if self.stored is not None and self.asked != self.stored:
                raise InputError(f"the model was offloaded with its weights stored in {self.stored}: it runs in "
                                 f"{self.stored} only; load it again for {self.asked}")
            return Choice(self.asked, "asked")
        names = candidates(self.device, self.stored)
        if len(names) == 1:
            return Choice(names[0], f"auto: only {names[0]} runs here")
        path = cache_path()
        key = decision_key(self.device, self.network, tuple(x.shape))
        entries = read_cache(path, self.warn)
        hit = (entries or {}).get(key)
        if isinstance(hit, dict) and hit.get("precision") in names and isinstance(hit.get("why"), str):
            return Choice(hit["precision"], f"auto: cached {hit['why']}")
        timing = measure(denoiser, x, sigma, names, self.multiple, condition)
        precision, why = decide(timing)
        if entries is None:  # a file that is not our cache: left alone
            return Choice(precision, f"auto: measured {why}")
        entries.pop(key, None)
        entries[key] = {"precision": precision, "why": why, "seconds": timing.seconds, "proxy": list(timing.side),
                        "difference": timing.difference, "spent": round(timing.spent, 3),
                        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_cache(path, entries, self.warn)
        return Choice(precision, f"auto: measured {why}")

    def wrap(self, denoiser: Denoiser) -> Denoiser:
        """D under the chosen precision (after resolve)."""
        assert self.choice is not None
        return under_precision(denoiser, self.device, self.choice.precision)


def offload_storage(asked: str, device: torch.device) -> str:
    """The precision offloaded weights are stored in: the one asked for; for 'auto' bf16 where it runs (a memory
    choice: offload is for GPUs short of memory), else fp32."""
    if asked != "auto":
        return asked
    return "bf16" if bf16_runs(device) and device.type == "cuda" else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None: fp32)."""
    return AUTOCAST_DTYPES[precision]
