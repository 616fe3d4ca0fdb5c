"""sdedit eval --edits: SDEdit and FlowEdit on the same rows of (image, source prompt, target prompt, mask), scored by
the structure they keep; strict reading of edits.csv; CLIP score, LPIPS and DINO structure distance only from weights
already here."""

from __future__ import annotations

import csv
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit.frontends.cli import main

from .helpers import random_image
from .tiny_sd import make_tiny_sd, make_tiny_sd3, tiny_tokenizer

RUN = ["--t0", "0.5", "0.9", "--steps", "2"]
NOT_MEASURED = "CLIP score / LPIPS / DINO structure distance: weights not available offline (not measured)"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-edits")
    make_tiny_sd3(root / "sd3")
    make_tiny_sd(root / "sd")
    return root


def edits_folder(root, rows=None, header="image,source_prompt,target_prompt,mask"):
    """Three tiny rows: the same prompt twice (FlowEdit's VAE round trip), a masked edit, an unmasked edit."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        random_image((32, 32), seed=i).save(root / f"{i}.png")  # SD3's smallest frame: fast
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 12:28] = 255
    Image.fromarray(mask).save(root / "mask.png")
    rows = rows if rows is not None else ["0.png,a red barn,a red barn,", "1.png,a red barn,a blue lake,mask.png",
                                          '2.png,"a house, at noon",a house at night,']
    (root / "edits.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_sdedit_and_flowedit_on_the_same_rows_one_table_row_per_method_and_t0(models, tmp_path, capsys):
    from sdedit import load_model
    from sdedit.images import image_to_tensor, tensor_to_images
    from sdedit.research.metrics import l2_distance

    folder = edits_folder(tmp_path / "edits")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(models / "sd3"), "--edits", str(folder), *RUN, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "eval.json").read_text())
    assert [(r["method"], r["t0"]) for r in rows] == [("sdedit", 0.5), ("flowedit", 0.5), ("sdedit", 0.9),
                                                       ("flowedit", 0.9)]
    assert [r["what"].split()[0] for r in rows] == ["SDEdit", "FlowEdit"] * 2
    for r in rows:
        assert r["masked"] == 1 and r["l2_outside_max"] == 0.0 and r["l2_inside"] > 0  # kept pixels are exact
        assert r["l2_mean"] > 0 and -1 <= r["layout"] <= 1 and r["clip_score"] is None and r["lpips"] is None
        assert r["dino_structure"] is None
    assert rows[1]["nfe"] == 2 * 2 and rows[0]["nfe"] == 2  # FlowEdit: the source's and the target's D per step
    with open(out / "eval-rows.csv") as f:
        per_output = list(csv.DictReader(f))
    assert len(per_output) == 3 * 4 and {p["line"] for p in per_output} == {"2", "3", "4"}
    assert all(p["l2_outside"] == "" for p in per_output if p["image"] != "1.png")
    # FlowEdit with the source prompt as target moves nothing: the output is the VAE round trip of row 1 (seed 0).
    model = load_model(models / "sd3", device="cpu", precision="fp32")
    src = Image.open(folder / "0.png").convert("RGB")
    trip = tensor_to_images(model.decode(model.encode(image_to_tensor(src), [torch.Generator().manual_seed(0)])))[0]
    same = [p for p in per_output if p["method"] == "flowedit" and p["image"] == "0.png"]
    assert [float(p["l2"]) for p in same] == pytest.approx([l2_distance([trip], [src])[0]] * 2, abs=1e-9)
    md = (out / "eval.md").read_text()
    assert "| L2 in mask | L2 outside mask (max) | CLIP score | LPIPS | DINO struct. |" in md and NOT_MEASURED in md
    assert sum(line.endswith(" | - | - | - |") for line in md.splitlines()) == len(rows)  # no learned score
    assert printed.count(NOT_MEASURED) == 1 and printed.count("| FlowEdit") == 2
    figure = Image.open(out / "eval.png")
    assert figure.size == (5 * 132 + 4, 3 * 132 + 4)  # the sources, then one column per table row
    assert main(["eval", "--model", str(models / "sd3"), "--edits", str(folder), "--t0", "0.5", "--steps", "2",
                 "--method", "flowedit", "--n", "1", "-o", str(out)]) == 0
    again = json.loads((out / "eval-1.json").read_text())  # a second run never replaces the first
    assert [(r["method"], r["masked"]) for r in again] == [("flowedit", 0)] and (out / "eval-1.png").is_file()


def test_a_non_flow_model_runs_sdedit_only_and_refuses_flowedit(models, tmp_path, capsys):
    folder = edits_folder(tmp_path / "edits")
    args = ["eval", "--model", str(models / "sd"), "--edits", str(folder), "--t0", "0.5", "--steps", "2", "--n", "2"]
    assert main([*args, "--method", "flowedit", "-q", "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # under transformers' own 'Loading weights' bar
    assert last.startswith("sdedit: error: --method flowedit needs a rectified-flow model") and "Traceback" not in err
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert [r["method"] for r in rows] == ["sdedit"] and rows[0]["l2_outside_max"] == 0.0


@pytest.mark.parametrize("rows, header, message", [
    (None, "image,source_prompt", "edits.csv lacks the column target_prompt"),
    (None, "image,source_prompt,target_prompt,maks", "unknown column 'maks'"),
    (None, "image,source_prompt,target_prompt,mask,mask", "a column is named twice"),
    ([], "image,source_prompt,target_prompt", "edits.csv has no rows"),
    (["0.png,a barn,"], "image,source_prompt,target_prompt", "edits.csv line 2: empty target_prompt"),
    (["0.png,,a lake"], "image,source_prompt,target_prompt", "edits.csv line 2: empty source_prompt"),
    (["0.png,a barn,a lake,extra"], "image,source_prompt,target_prompt", "line 2: 4 fields, but the header has 3"),
    (["0.png,a barn,a lake", "none.png,a barn,a lake"], "image,source_prompt,target_prompt",
     "edits.csv line 3: image not found"),
    (["../0.png,a barn,a lake"], "image,source_prompt,target_prompt", "is outside the folder"),
    (["0.png,a barn,a lake,small.png"], "image,source_prompt,target_prompt,mask", "the mask is 8x8 but the image"),
    (['0.png,"a barn,a lake'], "image,source_prompt,target_prompt", "not valid CSV"),
])
def test_bad_edits_are_refused_in_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, rows, header,
                                                                 message):
    import sdedit.loader

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before edits.csv was checked")

    monkeypatch.setattr(sdedit.loader, "load_model", no_loading)
    folder = edits_folder(tmp_path / "edits", rows, header)
    Image.new("L", (8, 8)).save(folder / "small.png")
    assert main(["eval", "--edits", str(folder), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("setup, args, message", [
    ("no-csv", [], "has no edits.csv"),
    ("latin1", [], "edits.csv: not UTF-8 text"),
    ("big", [], "pixels, the limit of one eval"),
    ("ok", ["--n", "0"], "--n with --edits must be a whole number of rows from 1 to"),
    ("ok", ["--masked"], "--masked is for stroke inputs"),
    ("ok", ["--prompt", "x"], "--prompt is for stroke inputs"),
    ("ok", ["--method", "sdedit", "--source-guidance", "2"], "--source-guidance is FlowEdit's"),
    ("ok", ["--t0", "auto", "--method", "flowedit"], "auto is SDEdit's"),
    ("none", ["--method", "flowedit"], None),  # --method without --edits
])
def test_bad_folders_and_flags_are_refused_in_one_line(tmp_path, capsys, monkeypatch, setup, args, message):
    import sdedit.loader
    from sdedit.research import text_edits

    monkeypatch.setattr(sdedit.loader, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    folder = edits_folder(tmp_path / "edits")
    if setup == "no-csv":
        (folder / "edits.csv").unlink()
    elif setup == "latin1":
        (folder / "edits.csv").write_bytes("image,source_prompt,target_prompt\n0.png,caf\xe9,bar\n".encode("latin-1"))
    elif setup == "big":
        monkeypatch.setattr(text_edits, "MAX_EVAL_PIXELS", 2 * 32 * 32)  # the third row passes it
    edits = [] if setup == "none" else ["--edits", str(folder)]
    assert main(["eval", *edits, *args, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert (message or "--method is for text edits: give --edits FOLDER") in err, err
    assert len(err.strip().splitlines()) == 1, err


def tiny_clip(folder):
    """A tiny random CLIP model and tokenizer saved as a Hub snapshot would hold them."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_tokenizer(folder)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=16,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id),
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                           num_hidden_layers=1, image_size=32, patch_size=8), projection_dim=8)
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():  # this random CLIP points images away from texts: turned round, its scores are above 0
        model.visual_projection.weight.neg_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reference_clip_score(folder, img, text):
    """100 max(cos, 0) of the embeddings, the image prepared by transformers' own CLIP image processor."""
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model, tokenizer = CLIPModel.from_pretrained(folder).eval(), CLIPTokenizer.from_pretrained(folder)
    pixels = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})(
        images=img, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        i = model.get_image_features(pixel_values=pixels).pooler_output
        tokens = tokenizer([text], truncation=True, max_length=16, return_tensors="pt")
        t = model.get_text_features(**tokens).pooler_output
    return 100 * max(torch.nn.functional.cosine_similarity(i, t).item(), 0.0)


def test_learned_metrics_load_from_local_weights_only(tmp_path, monkeypatch):
    from sdedit.research import edit_metrics
    from sdedit.research.edit_metrics import WeightsUnavailable, load_learned_metrics, lpips_distance

    monkeypatch.setattr(edit_metrics, "CLIP_MODELS", ("openai/not-cached",))  # not in the (empty) test cache
    monkeypatch.setattr(edit_metrics, "DINO_MODELS", ("facebook/not-cached",))
    monkeypatch.setitem(sys.modules, "lpips", None)  # not installed
    none = load_learned_metrics()
    assert none.clip is None and none.lpips is None and none.dino is None
    assert set(none.missing) == {"CLIP score", "LPIPS", "DINO structure distance"}
    assert none.note() == NOT_MEASURED and "not-cached" in none.missing["CLIP score"]

    monkeypatch.setattr(edit_metrics, "CLIP_MODELS", ("openai/not-cached", str(tiny_clip(tmp_path / "clip"))))
    img = random_image((48, 40), seed=3)
    clip = load_learned_metrics()
    assert clip.clip_model == str(tmp_path / "clip")
    assert clip.note() == "LPIPS / DINO structure distance: weights not available offline (not measured)"
    for text in ("a red barn", "a blue lake at night"):
        assert 0 < clip.clip(img, text) == pytest.approx(reference_clip_score(tmp_path / "clip", img, text), abs=1e-4)

    class FakeLPIPS(torch.nn.Module):  # lpips installed: it is used only when torchvision's weights are here
        def __init__(self, net, verbose):
            super().__init__()
            assert net == "alex" and verbose is False

        def forward(self, a, b):
            assert a.shape == b.shape and a.min() >= -1 and a.max() <= 1
            return (a - b).abs().mean((1, 2, 3), keepdim=True)

    weights = types.SimpleNamespace(IMAGENET1K_V1=types.SimpleNamespace(url="https://x/alexnet-owt-0.pth"))
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", types.SimpleNamespace(AlexNet_Weights=weights))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailable, match="AlexNet weights are not in"):
        lpips_distance()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "alexnet-owt-0.pth").write_bytes(b"")
    both = load_learned_metrics()
    assert both.note() == "DINO structure distance: weights not available offline (not measured)"
    assert both.lpips(img, img) == 0.0 and both.lpips(img, random_image((48, 40))) > 0.1


def test_clip_score_fills_its_column_when_the_weights_are_here(models, tmp_path, capsys, monkeypatch):
    from sdedit.research import edit_metrics

    monkeypatch.setattr(edit_metrics, "CLIP_MODELS", (str(tiny_clip(tmp_path / "clip")),))
    monkeypatch.setitem(sys.modules, "lpips", None)
    folder = edits_folder(tmp_path / "edits")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(models / "sd3"), "--edits", str(folder), "--t0", "0.5", "--steps", "2",
                 "--method", "sdedit", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "eval.json").read_text())
    assert len(rows) == 1 and 0 < rows[0]["clip_score"] <= 100 and rows[0]["lpips"] is None
    assert "LPIPS / DINO structure distance: weights not available offline (not measured)" in printed
    assert "CLIP score /" not in printed
    assert f"CLIP score by {tmp_path / 'clip'}" in (out / "eval.md").read_text()


def tiny_dino(folder):
    """A tiny random DINO-style ViT saved as a Hub snapshot would hold it."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, image_size=32,
                       patch_size=8)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def reference_dino_distance(folder, a, b):
    """MSE of the cosine self-similarity of the last block's keys, the images prepared by transformers' ViT image
    processor (square images: their shorter side is 224) and the keys read from the last block's input."""
    from transformers import ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    model = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    process = ViTImageProcessorPil(size={"height": 224, "width": 224}, resample=Image.Resampling.BICUBIC,
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])

    def self_similarity(img):
        pixels = process(images=img, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hidden = model(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
            last = model.layers[-1]
            keys = last.attention.k_proj(last.layernorm_before(hidden.hidden_states[-2]))[0]
        keys = torch.nn.functional.normalize(keys, dim=-1)
        return keys @ keys.T

    return ((self_similarity(a) - self_similarity(b)) ** 2).mean().item()


def test_dino_structure_distance_loads_from_local_weights_only(tmp_path, monkeypatch):
    from sdedit.research import edit_metrics
    from sdedit.research.edit_metrics import WeightsUnavailable, dino_structure_distance, load_learned_metrics

    monkeypatch.setattr(edit_metrics, "DINO_MODELS", ("facebook/not-cached",))  # not in the (empty) test cache
    with pytest.raises(WeightsUnavailable, match="none of facebook/not-cached is in the local Hugging Face cache"):
        dino_structure_distance()
    monkeypatch.setattr(edit_metrics, "DINO_MODELS", ("facebook/not-cached", str(tiny_dino(tmp_path / "dino"))))
    monkeypatch.setattr(edit_metrics, "CLIP_MODELS", ("openai/not-cached",))
    monkeypatch.setitem(sys.modules, "lpips", None)
    metrics = load_learned_metrics()
    assert metrics.dino_model == str(tmp_path / "dino") and "DINO" not in metrics.note()
    img, other = random_image((40, 40), seed=3), random_image((40, 40), seed=4)
    assert metrics.dino(img, img) == 0.0 and metrics.dino(img, other) > 0
    assert metrics.dino(img, other) == pytest.approx(reference_dino_distance(tmp_path / "dino", img, other), rel=1e-4)
    wide = random_image((48, 32), seed=5)  # not square, and not the model's size: its position embeddings interpolated
    assert metrics.dino(wide, wide) == 0.0 and metrics.dino(wide, random_image((48, 32), seed=6)) > 0


def test_dino_structure_fills_its_column_when_the_weights_are_here(models, tmp_path, capsys, monkeypatch):
    from sdedit.research import edit_metrics

    monkeypatch.setattr(edit_metrics, "DINO_MODELS", (str(tiny_dino(tmp_path / "dino")),))
    monkeypatch.setitem(sys.modules, "lpips", None)
    folder = edits_folder(tmp_path / "edits")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(models / "sd3"), "--edits", str(folder), "--t0", "0.5", "--steps", "2",
                 "--method", "sdedit", "--n", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "eval.json").read_text())
    assert len(rows) == 1 and rows[0]["dino_structure"] > 0 and rows[0]["clip_score"] is None
    assert "CLIP score / LPIPS: weights not available offline (not measured)" in printed
    assert "DINO structure distance:" not in printed
    with open(out / "eval-rows.csv") as f:
        assert all(float(p["dino_structure"]) > 0 for p in csv.DictReader(f))
    md = (out / "eval.md").read_text()
    assert f"DINO structure distance by {tmp_path / 'dino'}" in md
    assert f"| - | - | {rows[0]['dino_structure']:.3f} |" in md  # CLIP score and LPIPS not measured, DINO filled
