"""Tiled SDEdit: the layout and its weights, the blend against the untiled D, one-tile canvases bit for bit on every
family, batching, kept pixels, and the tile rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import InputError, edit, load_model
from sdedit.engine.tiles import TileLayout, TiledDenoiser, tile_starts
from sdedit.frontends.cli import main
from sdedit.images import read_settings
from sdedit.research.landscapes import landscape
from sdedit.tiling import check_tiling, min_tile

from .conftest import gaussian_model
from .helpers import random_image
from .tiny_sd import make_tiny_flux, make_tiny_qwen_image, make_tiny_sd, make_tiny_sd3, make_tiny_sdxl


@pytest.mark.parametrize("length,tile,overlap", [(640, 64, 16), (448, 64, 16), (96, 64, 16), (65, 64, 0),
                                                 (1000, 128, 127), (64, 64, 16), (40, 64, 8)])
def test_tiles_cover_the_canvas_evenly_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    side = min(tile, length)
    assert starts[0] == 0 and starts[-1] + side == length
    gaps = np.diff(starts)
    assert all(side - g >= overlap for g in gaps)  # neighbours share at least the overlap
    assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1  # spread evenly
    fewer = len(starts) - 1  # and no more tiles than the overlap needs
    assert fewer == 0 or (length - side) / fewer > side - overlap - 1e-9 or fewer == 1


def test_weights_share_out_every_cell_and_a_lone_tile_weighs_exactly_one():
    layout = TileLayout(56, 80, 24, 8)
    total = torch.zeros(56, 80)
    for (y, x, h, w), weight in zip(layout.boxes, layout.weights, strict=True):
        assert weight.min() > 0
        total[y:y + h, x:x + w] += weight[0]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    lone = TileLayout(24, 24, 24, 8)
    assert lone.boxes == [(0, 0, 24, 24)] and torch.equal(lone.weights[0], torch.ones(1, 24, 24))


def test_the_blend_of_a_per_pixel_denoiser_is_the_untiled_d_whatever_the_batching():
    """D of Gaussian data is per pixel, so the tiles' blend is D itself; chunking the tiles changes nothing."""
    model = gaussian_model()
    x = torch.randn(3, 3, 40, 56) * 2
    sigma = torch.tensor([0.5, 1.0, 3.0])
    want = model.denoise(x, sigma)
    blends = [TiledDenoiser(model.denoise, 16, 4, batch)(x, sigma) for batch in (1, 3, 7, 1000)]
    assert torch.allclose(blends[0], want, atol=1e-6)
    for other in blends[1:]:
        assert torch.equal(other, blends[0])  # each cell's sum is taken in tile order, whatever the chunks


def test_the_condition_is_cut_with_its_tile():
    seen = []

    def denoiser(x, sigma, condition):
        seen.append(condition.clone())
        assert condition.shape[-2:] == x.shape[-2:]
        return x + condition

    x, cond = torch.zeros(1, 1, 8, 12), torch.arange(96, dtype=torch.float32).reshape(1, 1, 8, 12)
    out = TiledDenoiser(denoiser, 8, 4, 2, cond)(x, torch.ones(1))
    assert torch.allclose(out, cond)
    assert len(seen) == 1 and seen[0].shape[0] == 2


def test_a_tiled_edit_of_gaussian_data_is_the_untiled_edit():
    model = gaussian_model(resolution=32)
    img = random_image((72, 40), seed=3)
    kw = dict(t0=0.6, steps=6, seed=4, progress=False, original_size=False, fit="stretch")
    whole = np.asarray(edit(model, img.resize((72, 40)), **{**kw, "fit": "stretch"}, tile=72)[0], dtype=int)
    tiled = [np.asarray(edit(model, img, **kw, tile=16, tile_overlap=o, batch_size=b)[0], dtype=int)
             for o, b in ((4, 1), (4, 5), (8, 3))]
    assert np.abs(tiled[0] - whole).max() <= 1  # the blend's float rounding only
    assert np.array_equal(tiled[0], tiled[1])  # another batching: the same bytes


def test_a_canvas_of_one_tile_is_the_untiled_edit_bit_for_bit_on_the_bundled_model():
    model = load_model("landscapes", device="cpu", precision="fp32")
    img = landscape(11, 64)
    for kw in ({}, {"mask": Image.fromarray(np.pad(np.full((20, 30), 255, np.uint8), ((10, 34), (20, 14))))}):
        plain = edit(model, img, t0=0.4, seed=2, progress=False, **kw)[0]
        tiled = edit(model, img, t0=0.4, seed=2, progress=False, tile=64, **kw)[0]
        assert np.array_equal(np.asarray(plain), np.asarray(tiled))
        meta = json.loads(tiled.info["sdedit"])
        assert meta["tile"] == 64 and meta["tile_overlap"] == 16 and "fit" not in meta


@pytest.fixture(scope="module")
def family_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    made = {}
    for name, make in (("sd", make_tiny_sd), ("sdxl", make_tiny_sdxl), ("sd3", make_tiny_sd3),
                       ("flux", make_tiny_flux), ("qwen", make_tiny_qwen_image)):
        make(root / name)
        made[name] = root / name
    return made


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "qwen"])
def test_a_canvas_of_one_tile_is_the_untiled_edit_bit_for_bit_on_every_latent_family(family_folders, family):
    model = load_model(family_folders[family], device="cpu", precision="fp32")
    side = min_tile(model)  # the smallest tile: 32 px for the tiny SD models, 512 px for FLUX and Qwen-Image
    img = random_image((side, side), seed=5)
    kw = dict(t0=0.7, steps=2, seed=9, progress=False, prompt="a hill")
    plain = edit(model, img, **kw)[0]
    tiled = edit(model, img, tile=side, **kw)[0]
    assert np.array_equal(np.asarray(plain), np.asarray(tiled))
    # three tiles: the canvas at its own size, the kept pixels exact
    mask = np.zeros((side, 2 * side), np.uint8)
    mask[side // 4:, side // 2:side + side // 2] = 255
    big = random_image((2 * side, side), seed=6)
    out = edit(model, big, mask=Image.fromarray(mask), tile=side, tile_overlap=side // 2, **kw)[0]
    a, b = np.asarray(out), np.asarray(big)
    assert out.size == (2 * side, side) and np.array_equal(a[mask == 0], b[mask == 0])
    assert not np.array_equal(a[mask > 0], b[mask > 0])
    assert json.loads(out.info["sdedit"])["tile"] == side


def test_tiles_bring_detail_and_no_grid_on_the_bundled_model(tmp_path):
    """A landscape photo larger than the model, tiled at 64 px with 16 px overlaps: at its own size, sharper than
    the 64 px edit scaled up, and no jump at the tiles' borders beyond the picture's own."""
    from sdedit.research.metrics import sharpness, tile_seam_ratio

    photo = landscape(3, 320).crop((0, 48, 224, 208))  # 224x160: 5x4 tiles
    model = load_model("landscapes", device="cpu", precision="fp32")
    tiled = edit(model, photo, seed=0, progress=False, tile=64, tile_overlap=16)[0]
    scaled = edit(model, photo, seed=0, progress=False, fit="stretch")[0]
    assert tiled.size == scaled.size == (224, 160)
    assert sharpness([tiled])[0] > 1.5 * sharpness([scaled])[0]
    assert max(tile_seam_ratio(tiled, 64, 16)) < 1.3


def test_memory_follows_the_tile_not_the_canvas():
    """The network only ever sees batch x tile x tile inputs."""
    shapes = []
    model = gaussian_model(resolution=32)

    def spy(x, sigma):
        shapes.append(tuple(x.shape))
        return model.denoise(x, sigma)

    TiledDenoiser(spy, 16, 4, 2)(torch.zeros(1, 3, 200, 120), torch.ones(1))
    assert set(shapes) <= {(2, 3, 16, 16), (1, 3, 16, 16)} and len(shapes) > 50


@pytest.mark.parametrize("args,needle", [
    (["--tile", "16"], "below"), (["--tile", "60"], "multiple of 8"), (["--tile", "64", "--tile-overlap", "64"],
                                                                       "below the tile"),
    (["--tile", "64", "--tile-overlap", "-1"], "from 0"), (["--tile", "big"], "whole number"),
    (["--tile-overlap", "8"], "needs --tile"), (["--tile", "64", "--fit", "stretch"], "--fit does not act"),
])
def test_bad_tiles_are_one_line_and_exit_2(tmp_path, capsys, args, needle):
    landscape(1, 64).save(tmp_path / "in.png")
    code = main(["edit", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_tile_rules_name_the_model_and_auto_is_its_resolution():
    model = load_model("landscapes", device="cpu", precision="fp32")
    assert check_tiling(model, "auto").size == 64 and check_tiling(model, "auto").overlap == 16
    with pytest.raises(InputError, match="landscapes"):
        check_tiling(model, 24)


def test_the_command_line_edits_a_large_photo_tiled_and_records_it(tmp_path):
    landscape(4, 160).crop((0, 0, 160, 96)).save(tmp_path / "in.png")
    assert main(["edit", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "-q", "--seed", "1",
                 "--tile", "auto", "--steps", "3"]) == 0
    (out,) = (tmp_path / "out").iterdir()
    meta = read_settings(out)
    assert Image.open(out).size == (160, 96) and meta["tile"] == 64 and meta["tile_overlap"] == 16


@pytest.mark.parametrize("family", ["sd3", "flux", "qwen"])
def test_every_latent_family_encodes_and_decodes_a_large_canvas_in_vae_tiles(family_folders, family, monkeypatch):
    model = load_model(family_folders[family], device="cpu", precision="fp32")
    model.tile_vae = True  # as for a canvas over 1024 px, on a small one
    calls = []
    for name in ("tiled_encode" if family == "qwen" else "_tiled_encode", "tiled_decode"):
        real = getattr(model.vae, name)
        monkeypatch.setattr(model.vae, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    side = min_tile(model)
    width = max(2 * side, 160)  # wider than the tiny VAEs' 64 px tiles (Qwen-Image's: 256)
    img = random_image((width, side), seed=2)
    mask = np.zeros((side, width), np.uint8)
    mask[:, side:] = 255
    out = edit(model, img, mask=Image.fromarray(mask), tile=side, t0=0.6, steps=2, seed=1, prompt="x",
               progress=False)[0]
    assert len(set(calls)) == 2, calls
    assert np.array_equal(np.asarray(out)[mask == 0], np.asarray(img)[mask == 0])
    assert not model.vae.use_tiling


def test_batch_edits_every_photo_tiled_at_its_own_size(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    landscape(1, 96).crop((0, 0, 96, 80)).save(inp / "a.png")
    landscape(2, 128).save(inp / "b.png")
    assert main(["batch", str(inp), "-o", str(tmp_path / "out"), "-q", "--tile", "64", "--tile-overlap", "8",
                 "--steps", "2", "--color-match"]) == 0
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "out").glob("*.png")}
    assert sorted(sizes.values()) == [(96, 80), (128, 128)], sizes
    meta = read_settings(next((tmp_path / "out").glob("a*.png")))
    assert meta["tile"] == 64 and meta["tile_overlap"] == 8 and meta["color_match"] is True
    # another tiling is another job: the manifest does not take the first run's outputs for it, they are redone
    assert main(["batch", str(inp), "-o", str(tmp_path / "out"), "-q", "--tile", "64", "--steps", "2",
                 "--color-match"]) == 0
    assert read_settings(next((tmp_path / "out").glob("a*.png")))["tile_overlap"] == 16


# Hostile-input review of tiling.

@pytest.mark.parametrize("overlap", [33, 48, 63])
def test_an_overlap_over_half_the_tile_is_refused_before_any_work(tmp_path, capsys, overlap):
    """Near the tile the network would run (tile / (tile - overlap))^2 times the canvas: 4096x at 63 of 64 px."""
    landscape(1, 64).save(tmp_path / "in.png")
    code = main(["edit", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "-q", "--tile", "64",
                 "--tile-overlap", str(overlap)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "half the tile (32)" in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_overlaps_up_to_half_the_tile_are_taken_on_every_grid(tmp_path):
    model = load_model("landscapes", device="cpu", precision="fp32")
    assert check_tiling(model, 64, 32).overlap == 32 and check_tiling(model, 72, 0).overlap == 0
    make_tiny_sd(tmp_path / "sd")
    latent = load_model(tmp_path / "sd", device="cpu", precision="fp32")  # 8 px cells, tiles of 16 px multiples
    assert check_tiling(latent, 48, 24).cells(8) == (6, 3)
    for overlap in (32, 4):  # over half; off the latent grid
        with pytest.raises(InputError):
            check_tiling(latent, 48, overlap)
    with pytest.raises(InputError, match="needs a tile size"):
        edit(model, landscape(1, 64), tile_overlap=16, progress=False)


def test_a_tiled_edit_whose_box_is_the_whole_input_records_no_crop():
    """An all-black mask (or one whose padded box covers the photo) crops nothing: no `crop` in the metadata, the
    photo back whole and, for the all-black mask, untouched."""
    model = load_model("landscapes", device="cpu", precision="fp32")
    photo = landscape(4, 96).crop((0, 0, 96, 80))
    black, wide = np.zeros((80, 96), np.uint8), np.zeros((80, 96), np.uint8)
    wide[4:76, 4:92] = 255
    for mask in (black, wide):
        out = edit(model, photo, mask=Image.fromarray(mask), tile=64, steps=2, seed=1, progress=False)[0]
        meta = json.loads(out.info["sdedit"])
        assert out.size == (96, 80) and "crop" not in meta and meta["size"] == [96, 80]
        assert np.array_equal(np.asarray(out)[mask == 0], np.asarray(photo)[mask == 0])
    small = np.zeros((80, 96), np.uint8)
    small[30:40, 60:70] = 255  # a real box still crops, and says so
    out = edit(model, photo, mask=Image.fromarray(small), tile=64, steps=2, seed=1, progress=False)[0]
    assert json.loads(out.info["sdedit"])["crop"] != [0, 0, 96, 80]
