"""One run's settings: every default and every validation rule of t0, steps, sampler, seeds and prompts, once.

Front-ends (the CLI, the released command line, batch, the UI, sweep, eval) parse their own
input into a `RunSettings`; nothing downstream validates these values again.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Any

from .engine.samplers import SAMPLERS, evaluations
from .engine.schedules import GRIDS
from .errors import InputError

DEFAULT_T0 = 0.5  # the paper's choice for its 256 px models; a model may recommend its own (Model.recommended_t0)
AUTO_T0 = "auto"  # t0 chosen per image: the largest within the faithfulness budget (api.choose_t0)
# The faithfulness budget of --t0 auto, as a root-mean-square distance per pixel and channel (images in [0, 1]),
# so that it means the same at every resolution: L2 = rms * sqrt(3 * width * height) at the model's resolution.
# 0.0762 is how far the originals of the stroke paintings are from their strokes (L2 8.45 at 64x64,
# docs/quality-default.md): an output may differ from its guide as much as a real image the guide was painted
# from.
DEFAULT_FAITHFULNESS_RMS = 0.0762
DEFAULT_SAMPLER = "dpm++2m-sde"
DEFAULT_GRID = "uniform"  # the step grid from t0 (engine.schedules.GRIDS); karras did not win (README)
DEFAULT_GUIDANCE = 7.5  # classifier-free guidance weight of text-conditioned models
MAX_STRENGTH_LEVELS = 64  # distinct grey levels of a strength map (each adds one network evaluation)
DEFAULT_STRENGTH_LEVELS = 8  # a map with more is posterized to this many (a smooth gradient: 8 steps, not 255)
NO_GUIDANCE = 1.0  # the guidance weight that means none (the conditional prediction alone)
DEFAULT_BATCH_SIZE = 8  # samples per network call
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# 'auto': the faster of fp32 and bf16 autocast (bf16 by at least 1.1x), timed once per machine, network, input shape and batch bucket and
# cached (sdedit/precision.py); bf16 has the same L2 and KID as fp32 within their noise on the bundled model
# (benchmarks/precision.py), and its speed against fp32 ranges from 3-7x slower (AVX2 only) to 4x faster (AMX)
# (README 'Precision: measured, not assumed').
DEFAULT_PRECISION = "auto"
METHODS = ("sdedit", "flowedit")  # SDEdit (any model), FlowEdit (Kulikov et al. 2025; flow models: engine/flowedit.py)
DEFAULT_METHOD = "sdedit"
# FlowEdit's Euler steps per unit of t0: its SD3 recipe takes 33 of a 50-step grid from n_max = 33 (t0 0.66)
FLOWEDIT_STEPS_PER_T0 = 50
MAX_FLOWEDIT_SAMPLES = 16  # noise draws averaged per step (the paper's n_avg; each costs two network calls)
MAX_SEED = 2**63 - 1

# Steps per unit of t0 for each sampler, chosen from benchmarks/quality_per_cost.py (docs/quality-per-cost.md):
# at t0 = 0.5 on the bundled model, dpm++2m-sde with 10 steps matches the released recipe (ddpm, 500 steps):
# L2 11.63 vs 11.62, KID 0.119 vs 0.113 (+- 0.08).  The ODE samplers stop improving near 20 steps; the
# first-order stochastic ones need about 100 per unit of t0.
STEPS_PER_T0 = {"dpm++2m-sde": 20, "dpm++3m-sde": 20, "ddim": 40, "dpm++2m": 40, "heun": 20, "ddpm": 100,
                "euler-maruyama": 100}
MIN_STEPS = {"dpm++2m-sde": 5, "dpm++3m-sde": 5, "ddim": 5, "dpm++2m": 5, "heun": 3, "ddpm": 10, "euler-maruyama": 10}


class SettingError(InputError):
    """A run setting that breaks its rule; `field` names the RunSettings field, so front-ends can name their flag."""

    def __init__(self, field: str, label: str, rule: str):
        super().__init__(f"{label} {rule}")
        self.field, self.rule = field, rule


def default_steps(sampler: str, t0: float, method: str = DEFAULT_METHOD) -> int:
    """Steps used when none are given: ceil(k * t0) per sampler (10 for dpm++2m-sde at t0 = 0.5), with a floor;
    FlowEdit's own Euler steps: FLOWEDIT_STEPS_PER_T0."""
    if method == "flowedit":
        return max(5, math.ceil(FLOWEDIT_STEPS_PER_T0 * t0 - 1e-9))
    return max(MIN_STEPS[sampler], math.ceil(STEPS_PER_T0[sampler] * t0 - 1e-9))


def check_t0(t0: Any) -> float:
    """The t0 rule: a number in (0, 1] (SDEdit's perturbation time; 0 would return the input unchanged)."""
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not 0.0 < float(t0) <= 1.0:
        raise SettingError("t0", "t0", f"must be in (0, 1] or 'auto', got {t0!r}")
    return float(t0)


def parse_t0(text: str) -> float | str:
    """A t0 as typed by a user: 'auto' or a number in (0, 1]."""
    if text.strip().lower() == AUTO_T0:
        return AUTO_T0
    try:
        value = float(text)
    except ValueError:
        raise SettingError("t0", "t0", f"must be in (0, 1] or 'auto', got {text!r}") from None
    return check_t0(value)


# Upper bounds of the counts, far above any real use (the released recipe is 1,000 steps, K = 3) and low enough
# that a typo (-n 1000000000) is refused at once instead of allocating or looping for minutes.
MAX_COUNTS = {"steps": 10_000, "repeats": 100, "num_samples": 10_000, "batch_size": 4_096}


def _count(value: Any, field: str, label: str) -> int:
    top = MAX_COUNTS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        shown = repr(value) if isinstance(value, (int, float, str)) and len(repr(value)) < 40 else type(value).__name__
        raise SettingError(field, label, f"must be an integer from 1 to {top}, got {shown}")
    return value


@dataclass(frozen=True)
class RunSettings:
    """How to run SDEdit once: validated on construction; steps and seed filled in when not given."""

    t0: float | str | None = None  # perturbation time in (0, 1] (higher = more realistic, less faithful);
    # None = the model's recommended t0, "auto" = per image, the largest within the faithfulness budget
    steps: int | None = None  # reverse steps from t0 to 0; None = default_steps(sampler, t0) once t0 is known
    sampler: str = DEFAULT_SAMPLER  # one of engine.samplers.SAMPLERS
    repeats: int = 1  # K: re-noise and denoise again (the paper's Alg. 2, the released --sample_step)
    num_samples: int = 1  # outputs per guide
    seed: int | None = None  # sample j of a guide uses seed + j; None = a random seed, recorded in the output
    batch_size: int = DEFAULT_BATCH_SIZE  # samples per network call
    precision: str | None = None  # auto, fp32, or bf16/fp16 autocast; None = the model's default (load_model)
    prompt: str = ""  # text-conditioned models: what the result should show
    negative_prompt: str = ""  # ... and what it should not (the unconditional branch)
    guidance: float | None = None  # classifier-free guidance weight (1 = none); None = the model's recommended
    faithfulness: float | None = None  # t0 auto: L2 budget at the model's resolution; None = DEFAULT_FAITHFULNESS_RMS
    grid: str = DEFAULT_GRID  # spacing of the steps from t0: "uniform" in t or "karras" (rho = 7) in sigma
    color_match: bool = False  # keep the guide's colour statistics after each repeat (sdedit/color_match.py)
    method: str = DEFAULT_METHOD  # "sdedit", or "flowedit": the source prompt's velocity against the prompt's
    source_prompt: str = ""  # FlowEdit: what the input shows (the prompt says what it should show)
    source_guidance: float | None = None  # FlowEdit: the source branch's guidance; None = the run's guidance
    flowedit_samples: int = 1  # FlowEdit: noise draws averaged per step (n_avg)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.t0 is not None and self.t0 != AUTO_T0:
            set_(self, "t0", check_t0(self.t0))
        if self.sampler not in SAMPLERS:
            raise SettingError("sampler", "sampler", f"{self.sampler!r} is unknown; choose one of: {', '.join(SAMPLERS)}")
        if self.method not in METHODS:
            raise SettingError("method", "method", f"must be one of {', '.join(METHODS)}, got {self.method!r:.40}")
        if self.steps is not None:
            _count(self.steps, "steps", "steps")
        elif isinstance(self.t0, float):
            set_(self, "steps", default_steps(self.sampler, self.t0, self.method))
        _count(self.repeats, "repeats", "repeats")
        _count(self.num_samples, "num_samples", "the number of samples")
        _count(self.batch_size, "batch_size", "batch size")
        if self.seed is None:
            set_(self, "seed", secrets.randbits(31))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or \
                not 0 <= self.seed <= MAX_SEED - self.num_samples:
            raise SettingError("seed", "seed", f"must be an integer from 0 to 2^63 - 1 - samples, got {self.seed!r}")
        self._check_flowedit()
        if not isinstance(self.color_match, bool):
            raise SettingError("color_match", "color match", f"must be true or false, got {self.color_match!r:.40}")
        if self.grid not in GRIDS:
            raise SettingError("grid", "schedule", f"must be one of {', '.join(GRIDS)}, got {self.grid!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise SettingError("precision", "precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for what in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, what), str):
                raise SettingError(what, what.replace("_", " "), f"must be text, got {getattr(self, what)!r}")
        g = self.guidance
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
                raise SettingError("guidance", "guidance", f"must be a finite number >= 0, got {g!r}")
            set_(self, "guidance", float(g))
        f = self.faithfulness
        if f is not None:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < math.inf:
                raise SettingError("faithfulness", "faithfulness", f"must be a positive L2 distance, got {f!r}")
            if self.t0 != AUTO_T0:
                raise SettingError("faithfulness", "faithfulness", "is the budget of t0 auto; give --t0 auto too")
            set_(self, "faithfulness", float(f))

    def _check_flowedit(self) -> None:
        """FlowEdit's settings: only with method flowedit, and each within its rule."""
        flowedit = self.method == "flowedit"
        if not isinstance(self.source_prompt, str):
            raise SettingError("source_prompt", "source prompt", f"must be text, got {self.source_prompt!r:.40}")
        n = self.flowedit_samples
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_FLOWEDIT_SAMPLES:
            raise SettingError("flowedit_samples", "FlowEdit samples",
                               f"must be an integer from 1 to {MAX_FLOWEDIT_SAMPLES}, got {n!r:.40}")
        g = self.source_guidance
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0):
            raise SettingError("source_guidance", "source guidance", f"must be a finite number >= 0, got {g!r:.40}")
        if not flowedit:
            for field, label, given in (("source_prompt", "source prompt", self.source_prompt),
                                        ("source_guidance", "source guidance", g is not None),
                                        ("flowedit_samples", "FlowEdit samples", n != 1)):
                if given:
                    raise SettingError(field, label, "is FlowEdit's: it needs method flowedit")
        if flowedit and self.t0 == AUTO_T0:
            raise SettingError("t0", "t0", "auto is SDEdit's: FlowEdit needs a number")

    @property
    def resolved(self) -> bool:
        """Whether t0 (and so the steps) and the guidance are known numbers."""
        return isinstance(self.t0, float) and self.guidance is not None

    def resolve(self, t0: float, guidance: float) -> RunSettings:
        """A copy with the model's recommended t0 and guidance where none was given ('auto' stays for the caller)."""
        changes: dict[str, Any] = {}
        if self.t0 is None:
            changes.update(t0=t0, steps=self.steps)  # steps the user gave stay
        if self.guidance is None:
            changes["guidance"] = guidance
        return self.with_(**changes) if changes else self

    def budget(self, size: tuple[int, int]) -> float:
        """t0 auto's L2 budget for outputs of (width, height) at the model's resolution."""
        if self.faithfulness is not None:
            return self.faithfulness
        return DEFAULT_FAITHFULNESS_RMS * math.sqrt(3 * size[0] * size[1])

    @property
    def nfe(self) -> int:
        """Denoiser evaluations per sample (classifier-free guidance doubles the batch, not the count)."""
        assert self.steps is not None
        if self.method == "flowedit":  # the source's and the target's D for each noise draw
            return 2 * self.flowedit_samples * self.steps * self.repeats
        return evaluations(self.sampler, self.steps) * self.repeats

    @property
    def total_steps(self) -> int:
        """Sampler steps per sample over all repeats (what a progress bar counts)."""
        assert self.steps is not None
        return self.steps * self.repeats

    @property
    def text(self) -> bool:
        """Whether the run asks for text conditioning."""
        return bool(self.prompt or self.negative_prompt)

    def label(self) -> str:
        """Short description for tables: sampler, steps, grid (if not uniform) and K."""
        steps = f"{self.steps} steps" if self.steps is not None else "default steps"
        auto = ", t0 auto" if self.t0 == AUTO_T0 else ""
        grid = f", {self.grid} grid" if self.grid != DEFAULT_GRID else ""
        method = "flowedit" if self.method == "flowedit" else self.sampler
        return f"{method}, {steps}{grid}{auto}" + (f", K={self.repeats}" if self.repeats > 1 else "")

    def with_(self, **changes: Any) -> RunSettings:
        """A copy with some fields changed; steps are recomputed unless given (or kept when t0 and sampler are)."""
        if "steps" not in changes and ({"t0", "sampler", "method"} & changes.keys()):
            changes["steps"] = None
        if changes.get("t0", self.t0) != AUTO_T0 and "faithfulness" not in changes and self.t0 == AUTO_T0:
            changes["faithfulness"] = None  # the budget belongs to t0 auto
        return dataclasses.replace(self, **changes)

    def metadata(self, *, text_conditioned: bool, takes_guidance: bool | None = None) -> dict[str, Any]:
        """What decides the outputs, for PNG metadata and manifests (seed per sample is added by the caller).

        The guidance is recorded only where it acts (`takes_guidance`, by default whenever text conditioning does).
        """
        meta: dict[str, Any] = {"t0": self.t0, "steps": self.steps, "sampler": self.sampler, "repeats": self.repeats}
        if self.method == "flowedit":  # its own Euler steps: no sampler acts
            meta.update(sampler="flowedit", method="flowedit", source_prompt=self.source_prompt,
                        flowedit_samples=self.flowedit_samples)
            if self.source_guidance is not None:
                meta["source_guidance"] = self.source_guidance
        if self.faithfulness is not None:
            meta["faithfulness"] = self.faithfulness
        if self.grid != DEFAULT_GRID:  # older outputs (and every uniform run) carry none: uniform
            meta["grid"] = self.grid
        if self.color_match:
            meta["color_match"] = True
        if text_conditioned:
            meta.update(prompt=self.prompt, negative_prompt=self.negative_prompt)
        if text_conditioned if takes_guidance is None else takes_guidance:
            meta["guidance"] = self.guidance
        return meta
