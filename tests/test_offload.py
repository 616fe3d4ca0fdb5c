"""CPU offload (model and sequential), run with the CPU as the execution device: outputs equal the resident
model's, at most one network is resident at a time, and every weight is back home after a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdedit import edit, load_model
from sdedit.errors import InputError
from sdedit.frontends.cli import main

from .conftest import gaussian_model
from .helpers import random_image
from .tiny_sd import make_tiny_flux, make_tiny_sd

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    sd, flux = tmp_path_factory.mktemp("sd"), tmp_path_factory.mktemp("flux")
    make_tiny_sd(sd)
    make_tiny_flux(flux)
    return {"sd": sd, "flux": flux}


def run(model) -> np.ndarray:
    """One small prompted edit, as an array."""
    out = edit(model, random_image((64, 64), seed=3), t0=0.6, steps=3, seed=7, prompt="a red barn", guidance=1.0,
               precision="fp32", progress=False)
    return np.asarray(out[0])


@pytest.mark.parametrize("family", ["sd", "flux"])
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloaded_outputs_equal_the_resident_model(folders, family, mode):
    expected = run(load_model(folders[family], device="cpu", precision="fp32"))
    model = load_model(folders[family], device="cpu", precision="fp32").offload(mode, CPU)
    assert model.device == CPU and model.info["offload"] == mode
    np.testing.assert_array_equal(run(model), expected)
    np.testing.assert_array_equal(run(model), expected)  # and again, after the weights went home


def test_model_offload_keeps_one_network_resident_and_sends_it_home(folders):
    model = load_model(folders["flux"], device="cpu", precision="fp32").offload("model", CPU)
    run(model)
    moves = model.offloader.moves
    resident: set[str] = set()
    for name, way in moves:
        resident = resident | {name} if way == "in" else resident - {name}
        assert len(resident) <= 1, moves
    assert not resident and model.offloader.resident is None
    assert {n for n, _ in moves} == {"transformer", "vae", "text_encoder", "text_encoder_2"}
    assert moves.count(("transformer", "in")) == 1  # brought once for the whole sampling loop


def test_sequential_offload_leaves_weights_in_the_cpu_state_dict(folders):
    model = load_model(folders["sd"], device="cpu", precision="fp32").offload("sequential", CPU)
    run(model)
    for net in model.networks().values():
        assert {p.device.type for p in net.parameters()} == {"meta"}  # the weights live in the hooks' CPU copy


def test_bf16_weights_when_offloaded_at_bf16(folders):
    model = load_model(folders["flux"], device="cpu", precision="fp32").offload("model", CPU, torch.bfloat16)
    assert next(model.transformer.parameters()).dtype == torch.bfloat16
    assert next(model.vae.parameters()).dtype == torch.float32
    out = edit(model, random_image((64, 64), seed=3), t0=0.6, steps=3, seed=7, prompt="a red barn", progress=False)
    assert np.asarray(out[0]).std() > 0
    assert json.loads(out[0].info["sdedit"])["precision"] == "bf16"
    with pytest.raises(InputError, match="stored in bf16"):
        edit(model, random_image((64, 64), seed=3), t0=0.6, steps=3, seed=7, prompt="a red barn", progress=False,
             precision="fp32")


def test_offloaded_models_refuse_to_move_compile_or_offload_again(folders):
    model = load_model(folders["sd"], device="cpu", precision="fp32").offload("model", CPU)
    with pytest.raises(InputError, match="offloaded"):
        model.to("cpu")
    with pytest.raises(InputError, match="already offloaded"):
        model.offload("sequential", CPU)
    with pytest.raises(InputError, match="--compile"):
        model.optimize(compile=True)


def test_pixel_models_refuse_offload():
    with pytest.raises(InputError, match="pixel-space model"):
        gaussian_model().offload("model", CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_offload_needs_an_accelerator(folders):
    with pytest.raises(InputError, match="runs them on a GPU"):
        load_model(folders["sd"], offload="model")
    with pytest.raises(InputError, match="must be one of"):
        load_model(folders["sd"], offload="disk")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cli_offload_without_cuda_is_one_line_exit_2(folders, tmp_path, capsys):
    random_image((64, 64), seed=3).save(tmp_path / "in.png")
    code = main(["edit", str(tmp_path / "in.png"), "--model", str(folders["sd"]), "--offload", "model",
                 "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "GPU" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("command", [["batch", "{d}/in", "-o", "{d}/out"], ["ui", "--model", "{m}"]])
def test_batch_and_ui_refuse_offload_without_cuda(folders, tmp_path, capsys, command):
    (tmp_path / "in").mkdir()
    random_image((64, 64), seed=3).save(tmp_path / "in" / "a.png")
    argv = [a.format(d=tmp_path, m=folders["sd"]) for a in command]
    code = main([*argv, "--offload", "sequential"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "GPU" in err, err
