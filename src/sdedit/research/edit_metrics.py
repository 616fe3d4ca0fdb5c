"""Learned scores of text edits, from weights already on this machine: nothing is downloaded.

CLIP score (Hessel et al. 2021, as torchmetrics computes it): 100 * max(cos(image, text), 0) of a CLIP model's
embeddings, the first of CLIP_MODELS found in the local Hugging Face cache.  LPIPS (Zhang et al. 2018): the lpips
package's AlexNet distance, when the package, torchvision and torchvision's AlexNet weights are all here.  DINO
structure distance (Tumanyan et al., Splicing ViT Features for Semantic Appearance Transfer, CVPR 2022): the mean
squared difference of the self-similarity of a DINO ViT's last-block keys, the first of DINO_MODELS in the local
Hugging Face cache.  A score whose weights are absent is not measured, and `LearnedMetrics.note` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

CLIP_MODELS = ("openai/clip-vit-large-patch14", "openai/clip-vit-base-patch16", "openai/clip-vit-base-patch32")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the OpenAI CLIP models' input normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_MODELS = ("facebook/dino-vitb8", "facebook/dino-vits8")  # ViT-B/8 is the paper's
DINO_SIDE = 224  # the shorter side of a DINO input, as in the paper
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINO's input normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)

ClipScore = Callable[[Image.Image, str], float]
ImageDistance = Callable[[Image.Image, Image.Image], float]


class WeightsUnavailable(RuntimeError):
    """A learned score's package or weights are not on this machine."""


@dataclass(frozen=True)
class LearnedMetrics:
    """The learned scores that could be loaded offline, and why each other one could not."""

    clip: ClipScore | None = None  # CLIP score of an output against its target prompt
    lpips: ImageDistance | None = None  # LPIPS of an output to its source
    dino: ImageDistance | None = None  # DINO structure distance of an output to its source
    clip_model: str | None = None  # which CLIP model scores
    dino_model: str | None = None  # which DINO ViT measures structure
    missing: dict[str, str] = field(default_factory=dict)  # score name -> why it is not measured

    def note(self) -> str | None:
        """The line saying which scores are not measured, or None when all are."""
        return f"{' / '.join(self.missing)}: weights not available offline (not measured)" if self.missing else None


def load_learned_metrics(device: torch.device | str = "cpu") -> LearnedMetrics:
    """CLIP score, LPIPS and DINO structure distance where their weights are here (on `device`); the others recorded
    as missing."""
    clip = lpips = dino = clip_model = dino_model = None
    missing = {}
    try:
        clip_model, clip = clip_scorer(device)
    except WeightsUnavailable as e:
        missing["CLIP score"] = str(e)
    try:
        lpips = lpips_distance(device)
    except WeightsUnavailable as e:
        missing["LPIPS"] = str(e)
    try:
        dino_model, dino = dino_structure_distance(device)
    except WeightsUnavailable as e:
        missing["DINO structure distance"] = str(e)
    return LearnedMetrics(clip=clip, lpips=lpips, dino=dino, clip_model=clip_model, dino_model=dino_model,
                          missing=missing)


def _clip_pixels(img: Image.Image, side: int) -> torch.Tensor:
    """CLIP's input: the shorter side resized to `side` (bicubic), the centre square, normalised; 1x3xSxS."""
    w, h = img.size
    scale = side / min(w, h)
    img = img.convert("RGB").resize((max(side, round(w * scale)), max(side, round(h * scale))),
                                    Image.Resampling.BICUBIC)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    a = np.asarray(img.crop((left, top, left + side, top + side)), np.float32) / 255.0
    a = (a - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def clip_scorer(device: torch.device | str = "cpu") -> tuple[str, ClipScore]:
    """(name, score) of the first CLIP model of CLIP_MODELS in the local Hugging Face cache; WeightsUnavailable if
    none is there (local files only: the Hub is never asked)."""
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as e:
        raise WeightsUnavailable(f"transformers is not installed ({e})") from None
    name, (model, tokenizer) = _first_cached(CLIP_MODELS, lambda n: (
        CLIPModel.from_pretrained(n, local_files_only=True).eval().to(device),
        AutoTokenizer.from_pretrained(n, local_files_only=True)))
    return name, _clip_score(model, tokenizer, torch.device(device))


def _first_cached(names: tuple[str, ...], load: Callable[[str], Any]) -> tuple[str, Any]:
    """(name, load(name)) of the first of names that loads from local files; WeightsUnavailable if none does."""
    for name in names:
        try:
            return name, load(name)
        except (OSError, ValueError):  # not in the cache: try the next
            continue
    raise WeightsUnavailable(f"none of {', '.join(names)} is in the local Hugging Face cache")


def _clip_score(model: torch.nn.Module, tokenizer: Callable[..., dict[str, torch.Tensor]],
                device: torch.device) -> ClipScore:
    """The CLIP score function of a loaded model and tokenizer."""
    side = model.config.vision_config.image_size
    length = model.config.text_config.max_position_embeddings

    @torch.inference_mode()
    def score(img: Image.Image, text: str) -> float:
        tokens = tokenizer([text], padding=True, truncation=True, max_length=length, return_tensors="pt")
        t = model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                    attention_mask=tokens["attention_mask"].to(device))
        i = model.get_image_features(pixel_values=_clip_pixels(img, side).to(device))
        t, i = _embedding(t), _embedding(i)
        return 100.0 * max(float(torch.nn.functional.cosine_similarity(i.float(), t.float()).item()), 0.0)

    return score


def _embedding(out: object) -> torch.Tensor:
    """The projected embedding of a get_*_features result (a tensor, or an output holding `pooler_output`)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


def lpips_distance(device: torch.device | str = "cpu") -> ImageDistance:
    """LPIPS (AlexNet, the lpips package's linear layers) when lpips, torchvision and torchvision's AlexNet weights are
    all on this machine; WeightsUnavailable otherwise (checked first: lpips would download the weights)."""
    try:
        import lpips
        from torchvision.models import AlexNet_Weights
    except ImportError as e:
        raise WeightsUnavailable(f"the lpips package or torchvision is not installed ({e})") from None
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name
    if not backbone.is_file():
        raise WeightsUnavailable(f"torchvision's AlexNet weights are not in {backbone.parent}")
    net = lpips.LPIPS(net="alex", verbose=False).eval().to(device)

    def pixels(img: Image.Image) -> torch.Tensor:
        a = np.asarray(img.convert("RGB"), np.float32) / 127.5 - 1.0
        return torch.from_numpy(a).permute(2, 0, 1)[None].to(device)

    @torch.inference_mode()
    def distance(a: Image.Image, b: Image.Image) -> float:
        if b.size != a.size:
            b = b.resize(a.size, Image.Resampling.LANCZOS)
        return float(net(pixels(a), pixels(b)).mean().item())

    return distance


def dino_structure_distance(device: torch.device | str = "cpu") -> tuple[str, ImageDistance]:
    """(name, distance) of the first DINO ViT of DINO_MODELS in the local Hugging Face cache; WeightsUnavailable if
    none is there (local files only: the Hub is never asked)."""
    try:
        from transformers import ViTModel
    except ImportError as e:
        raise WeightsUnavailable(f"transformers is not installed ({e})") from None
    name, model = _first_cached(DINO_MODELS, lambda n: ViTModel.from_pretrained(
        n, local_files_only=True, add_pooling_layer=False).eval().to(device))
    return name, _dino_distance(model, torch.device(device))


def _dino_pixels(img: Image.Image) -> torch.Tensor:
    """DINO's input: the shorter side resized to DINO_SIDE (bicubic, aspect kept), ImageNet-normalised; 1x3xHxW."""
    w, h = img.size
    scale = DINO_SIDE / min(w, h)
    img = img.convert("RGB").resize((max(DINO_SIDE, round(w * scale)), max(DINO_SIDE, round(h * scale))),
                                    Image.Resampling.BICUBIC)
    a = np.asarray(img, np.float32) / 255.0
    a = (a - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def _key_projection(model: torch.nn.Module) -> torch.nn.Module:
    """The key projection of a ViTModel's last block (transformers 5's module names, or 4's)."""
    if hasattr(model, "layers"):
        return model.layers[-1].attention.k_proj  # type: ignore[index,union-attr,return-value]
    return model.encoder.layer[-1].attention.attention.key  # type: ignore[index,union-attr,return-value]


def _dino_distance(model: torch.nn.Module, device: torch.device) -> ImageDistance:
    """Splice's structure distance (Tumanyan et al. CVPR 2022): MSE of the cosine self-similarity of last-block keys."""
    keys = _key_projection(model)

    @torch.inference_mode()
    def self_similarity(img: Image.Image) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = keys.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            model(pixel_values=_dino_pixels(img).to(device), interpolate_pos_encoding=True)
        finally:
            hook.remove()
        k = torch.nn.functional.normalize(seen[-1][0].float(), dim=-1)
        return k @ k.T

    def distance(a: Image.Image, b: Image.Image) -> float:
        if b.size != a.size:
            b = b.resize(a.size, Image.Resampling.LANCZOS)
        return float(((self_similarity(a) - self_similarity(b)) ** 2).mean().item())

    return distance
