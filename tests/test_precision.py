"""Precision 'auto': the faster of fp32 and bf16 by measurement (a fake clock here), cached per device and shape;
a corrupt or unwritable cache is one warning; a run's precision never changes the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdedit import edit
from sdedit.engine.precision import PROBE_BUDGET_S, Timing, proxy_sizes, time_precisions
from sdedit.errors import InputError
from sdedit import precision as P

from .conftest import gaussian_model
from .helpers import random_image


class FakeClock:
    """A clock that only moves when a fake network call says it took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_run(clock: FakeClock, cost: dict[str, float], calls: list[tuple[str, tuple[int, int]]]):
    """A network whose call in precision p at size (h, w) takes cost[p] * h * w / 1024 seconds."""
    def run(p: str, size: tuple[int, int]) -> torch.Tensor:
        calls.append((p, size))
        clock.now += cost[p] * size[0] * size[1] / 1024
        return torch.zeros(1, 3, *size) + (0.001 if p == "bf16" else 0.0)
    return run


@pytest.mark.parametrize("bf16_cost, expected", [(0.05, "fp32"), (0.005, "bf16")])
def test_the_faster_precision_is_chosen(bf16_cost, expected):
    clock, calls = FakeClock(), []
    timing = time_precisions(fake_run(clock, {"fp32": 0.01, "bf16": bf16_cost}, calls), ["fp32", "bf16"],
                             [(32, 32), (64, 64)], sigma=1.0, clock=clock)
    assert timing.fastest() == expected
    assert P.decide(timing)[0] == expected
    assert timing.side == (32, 32)  # a clear ratio decides at the smallest proxy
    assert {p for p, _ in calls} == {"fp32", "bf16"}


def test_a_close_ratio_is_measured_at_a_larger_proxy_within_the_budget():
    clock, calls = FakeClock(), []
    timing = time_precisions(fake_run(clock, {"fp32": 0.010, "bf16": 0.009}, calls), ["fp32", "bf16"],
                             [(16, 16), (32, 32), (64, 64), (128, 128)], sigma=1.0, clock=clock)
    assert timing.side in {(32, 32), (64, 64), (128, 128)} and timing.side != (16, 16)
    assert timing.fastest() == "bf16"
    # the next size is only started when its estimated cost fits: the whole stays near the budget
    assert timing.spent <= 1.5 * PROBE_BUDGET_S


def test_an_expensive_network_costs_its_warm_up_calls_and_one_timed_round_at_most():
    clock, calls = FakeClock(), []
    timing = time_precisions(fake_run(clock, {"fp32": 1.0, "bf16": 1.1}, calls), ["fp32", "bf16"], [(32, 32)],
                             sigma=1.0, clock=clock)
    assert len(calls) == 4 and timing.spent == pytest.approx(4.2)


def test_the_quality_guard_keeps_fp32_when_bf16_is_off():
    fast_but_off = Timing({"fp32": 1.0, "bf16": 0.5}, (8, 8), difference=10 * P.GUARD, spent=0.1)
    precision, why = P.decide(fast_but_off)
    assert precision == "fp32" and "guard" in why
    assert P.decide(Timing({"fp32": 1.0, "bf16": 0.5}, (8, 8), difference=0.0, spent=0.1)) == \
        ("bf16", "bf16, fp32 2.00x slower")


def test_a_gain_within_the_noise_keeps_fp32():
    """bf16 measured 1.04x faster (a shared machine's noise) stays fp32; 1.2x faster is bf16; training's 'auto' has
    the same rule (precision.faster_enough)."""
    precision, why = P.decide(Timing({"fp32": 1.04, "bf16": 1.0}, (8, 8), difference=0.0, spent=0.1))
    assert precision == "fp32" and "only 1.04x faster" in why
    assert P.decide(Timing({"fp32": 1.2, "bf16": 1.0}, (8, 8), difference=0.0, spent=0.1))[0] == "bf16"
    assert P.faster_enough(Timing({"fp32": 1.04, "bf16": 1.0}, (8, 8), difference=0.5, spent=0.1)) == "fp32"
    assert P.faster_enough(Timing({"fp32": 1.2, "bf16": 1.0}, (8, 8), difference=0.5, spent=0.1)) == "bf16"


def test_proxy_sizes_are_halvings_the_network_takes():
    assert proxy_sizes(256, 256, 32, min_positions=1024) == [(32, 32), (64, 64), (128, 128), (256, 256)]
    assert proxy_sizes(64, 96, 8, min_positions=256) == [(16, 24), (32, 48), (64, 96)]
    assert proxy_sizes(20, 20, 8, min_positions=1) == [(20, 20)]  # 10 is no multiple of 8: the input itself


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """RunPrecision with 'measure' replaced by a counter (bf16 twice as fast), its cache in tmp_path."""
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(P.PRECISION_ENV, raising=False)
    monkeypatch.setattr(P, "bf16_runs", lambda device: True)
    count = []

    def fake_measure(denoiser, x, sigma, names, multiple, condition=None, **kw):
        count.append(tuple(x.shape))
        return Timing({"fp32": 0.2, "bf16": 0.1}, tuple(x.shape[-2:]), 0.0, 0.3)

    monkeypatch.setattr(P, "measure", fake_measure)
    return count


def choose(shape=(4, 3, 16, 16), warn=None):
    run = P.RunPrecision("auto", torch.device("cpu"), "net", 8, warn=warn or P.warn_stderr)
    return run.resolve(lambda x, s: x, torch.zeros(shape), 1.0)


def test_a_decision_is_cached_and_keyed_by_shape_batch_bucket_and_device(measured, monkeypatch):
    first = choose()
    assert first == P.Choice("bf16", "auto: measured bf16, fp32 2.00x slower") and len(measured) == 1
    assert choose() == P.Choice("bf16", "auto: cached bf16, fp32 2.00x slower") and len(measured) == 1
    choose((5, 3, 16, 16))  # batch 5 is in batch 4's bucket
    assert len(measured) == 1
    choose((8, 3, 16, 16))
    choose((4, 3, 32, 16))
    assert len(measured) == 3
    monkeypatch.setattr(P, "device_name", lambda device: "another CPU")
    choose()
    assert len(measured) == 4


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "entries": {}}', "[1, 2]", "\udcff"])
def test_a_corrupt_or_foreign_cache_is_one_warning_and_left_as_it_is(measured, tmp_path, content):
    (tmp_path / P.CACHE_FILE).write_text(content, errors="surrogateescape")
    before = (tmp_path / P.CACHE_FILE).read_bytes()
    warnings: list[str] = []
    assert choose(warn=warnings.append) == P.Choice("bf16", "auto: measured bf16, fp32 2.00x slower")
    assert len(warnings) == 1 and "ignoring the precision cache" in warnings[0] and "delete it" in warnings[0]
    assert (tmp_path / P.CACHE_FILE).read_bytes() == before  # never written over: it may not be ours
    (tmp_path / P.CACHE_FILE).unlink()
    warnings.clear()
    choose(warn=warnings.append)
    assert choose(warn=warnings.append).reason.startswith("auto: cached") and not warnings


def test_run_settings_refuse_an_unknown_grid():
    from sdedit.settings import RunSettings, SettingError

    with pytest.raises(SettingError, match="schedule must be one of uniform, karras"):
        RunSettings(grid="cosine")


def test_an_unwritable_cache_is_one_warning_never_fatal(measured, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv(P.CACHE_ENV, str(blocker))  # the cache folder's name is taken by a file
    warnings: list[str] = []
    assert choose(warn=warnings.append).precision == "bf16"
    assert len(warnings) == 1 and "cannot save" in warnings[0]
    assert blocker.read_text() == "x"


def test_a_named_precision_is_not_measured_and_the_environment_sets_the_default(measured, monkeypatch):
    run = P.RunPrecision(P.requested("fp32", "auto"), torch.device("cpu"), "net", 8)
    assert run.resolve(lambda x, s: x, torch.zeros(1, 3, 8, 8), 1.0) == P.Choice("fp32", "asked")
    monkeypatch.setenv(P.PRECISION_ENV, "bf16")
    assert P.requested(None, "auto") == "bf16"
    assert P.requested("fp32", "auto") == "fp32" and P.requested(None, "fp32") == "fp32"
    monkeypatch.setenv(P.PRECISION_ENV, "fp64")
    with pytest.raises(InputError, match="SDEDIT_PRECISION must be one of"):
        P.requested(None, "auto")
    assert not measured


def test_a_run_records_its_precision_and_never_changes_the_model(measured):
    model = gaussian_model()
    img = random_image((32, 32), seed=1)
    before = edit(model, img, t0=0.5, steps=4, seed=3, progress=False, precision="fp32")[0]
    low = edit(model, img, t0=0.5, steps=4, seed=3, progress=False)[0]  # auto: the fake timing picks bf16
    after = edit(model, img, t0=0.5, steps=4, seed=3, progress=False, precision="fp32")[0]
    meta = json.loads(low.info["sdedit"])
    assert meta["precision"] == "bf16" and meta["precision_reason"].startswith("auto: measured bf16")
    assert json.loads(after.info["sdedit"])["precision_reason"] == "asked"
    assert np.array_equal(np.asarray(before), np.asarray(after))  # the bf16 run left nothing behind
    assert model.default_precision == "auto"


def test_the_real_measurement_times_a_network_within_its_budget(tmp_path, monkeypatch):
    """On this machine's real clock: both precisions timed on a proxy of the input, the decision one of them."""
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    timing = P.measure(lambda x, s: net(x), torch.zeros(2, 3, 64, 64), 1.0, ["fp32", "bf16"], 1)
    assert set(timing.seconds) == {"fp32", "bf16"} and all(v > 0 for v in timing.seconds.values())
    assert timing.side[0] * timing.side[1] * 2 >= P.MIN_PROXY_CELLS
    assert timing.difference < P.GUARD and timing.spent < 10 * PROBE_BUDGET_S


def test_sdedit_models_lists_the_decisions_made_here(measured, capsys):
    from sdedit.frontends.cli import main

    choose()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "network net, input 3x16x16, batch 4+" in out and "bf16 (bf16, fp32 2.00x slower" in out


@pytest.mark.parametrize("family", ["sd", "sd-inpainting", "sd3", "flux", "flux-fill", "pixel"])
def test_auto_measures_on_every_family_and_records_why(family, tmp_path, monkeypatch):
    """The real measurement on proxies of each family's input (latents, packed tokens, inpainting channels)."""
    from sdedit import load_model

    from .tiny_sd import make_tiny_flux, make_tiny_sd, make_tiny_sd3

    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(P.PRECISION_ENV, raising=False)
    folder = tmp_path / family
    if family == "pixel":
        source = "landscapes"
    else:
        {"sd": lambda f: make_tiny_sd(f), "sd-inpainting": lambda f: make_tiny_sd(f, in_channels=9),
         "sd3": make_tiny_sd3, "flux": make_tiny_flux, "flux-fill": lambda f: make_tiny_flux(f, fill=True)}[family](folder)
        source = folder
    model = load_model(source, device="cpu")
    prompt = {} if family == "pixel" else {"prompt": "a red barn"}
    mask = None if "fill" not in family and "inpainting" not in family else random_image((64, 64), seed=4).convert("L")
    out = edit(model, random_image((64, 64), seed=3), mask=mask, t0=0.6, steps=2, seed=1, progress=False, **prompt)[0]
    meta = json.loads(out.info["sdedit"])
    assert meta["precision"] in ("fp32", "bf16") and meta["precision_reason"].startswith("auto: measured ")
    entries = json.loads((tmp_path / "cache" / P.CACHE_FILE).read_text())["entries"]
    assert len(entries) == 1 and next(iter(entries.values()))["precision"] == meta["precision"]
    again = edit(model, random_image((64, 64), seed=3), mask=mask, t0=0.6, steps=2, seed=1, progress=False, **prompt)[0]
    assert json.loads(again.info["sdedit"])["precision_reason"].startswith("auto: cached ")
    assert np.array_equal(np.asarray(out), np.asarray(again))
