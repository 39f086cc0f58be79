"""HPSv2 / HPSv2.1: Human Preference Score v2 (Wu et al., arXiv 2306.09341).

An open_clip CLIP (``ViT-H-14`` for the released models) fine-tuned on HPD v2; the reward is the
cosine similarity of the L2-normalised image and text embeddings (spec ``research/rewards_bench.md``
§1.5). The official benchmark reports 100 x cosine (``report_scale``). Read from
github.com/tgxs002/HPSv2 @866735e (``hpsv2/img_score.py``, ``hpsv2/src/open_clip/transform.py``);
the model, tokenizer and transform are rebuilt here on ``open_clip_torch`` and plain torch instead
of the PyPI ``hpsv2`` wheel, which lacks the BPE file and pins conflicting test dependencies (§1.9).

Checkpoints (HF ``xswu/HPSv2``, apache-2.0) are dicts holding fp16 weights under ``"state_dict"``;
they are read with ``torch.load(weights_only=True)`` and loaded strictly into an fp32 (or ``dtype``)
model. ``checkpoint`` is a local file, a version name (``"v2.0"``, ``"v2.1"``) or ``"repo_id:filename"``
resolved through the HF hub cache.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from diffalign.data.images import to_rgb
from diffalign.errors import UserError
from diffalign.rewards.base import Scorer, batched, check_lengths, register_scorer, resolve_device, resolve_dtype

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

HPS_HUB_REPO = "xswu/HPSv2"
HPS_VERSIONS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or does not match the model architecture."""


def hps_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """HPSv2's eval transform (``light_augmentation=True``, spec §1.4) as a float32 (3, size, size) tensor.

    RGB -> [0, 1] tensor -> bicubic resize (on the tensor, antialiased as torchvision >= 0.17 does) so the
    longest side is ``size``, with new sides ``round(side * size / max(H, W))`` -> zero pad to
    ``size`` x ``size`` (left/top get floor(pad / 2)) -> OpenAI mean/std normalisation. Unlike upstream we
    always pad, so a non-square image whose long side already equals ``size`` still comes out square.
    """
    rgb = to_rgb(image)
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
    tensor = pixels.permute(2, 0, 1).float().div(255)
    height, width = tensor.shape[-2:]
    scale = size / max(height, width)
    new_height, new_width = round(height * scale), round(width * scale)
    if (new_height, new_width) != (height, width):
        tensor = F.interpolate(tensor[None], size=(new_height, new_width), mode="bicubic", align_corners=False, antialias=True)[0]
    pad_h, pad_w = size - new_height, size - new_width
    tensor = F.pad(tensor, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return (tensor - mean) / std


def open_clip_config(architecture: str | dict[str, Any]) -> dict[str, Any]:
    """The open_clip model config for a registered name (``"ViT-H-14"``), a JSON file path, or a dict."""
    import open_clip

    if isinstance(architecture, dict):
        return architecture
    if architecture.endswith(".json"):
        try:
            with open(architecture) as handle:
                return json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"cannot read open_clip config {architecture}: {getattr(error, 'strerror', None) or error}") from error
    config = open_clip.get_model_config(architecture)
    if config is None:
        raise CheckpointError(f"unknown open_clip architecture {architecture!r} (give a registered name or a .json config)")
    return config


def build_clip(architecture: str | dict[str, Any]):
    """An open_clip ``CLIP`` with random weights and ``output_dict=True`` (HPS uses a plain CLIP)."""
    import open_clip

    config = dict(open_clip_config(architecture))
    if config.get("custom_text") or "hf_model_name" in config.get("text_cfg", {}):
        raise CheckpointError("HPSv2 uses a plain open_clip CLIP; custom / HF text towers are not supported")
    return open_clip.CLIP(**config, output_dict=True)


def resolve_checkpoint(checkpoint: str | os.PathLike) -> str:
    """A local file path for ``checkpoint`` (a path, a version name, or ``repo_id:filename`` on the HF hub)."""
    checkpoint = os.fspath(checkpoint)
    if os.path.isfile(checkpoint):
        return checkpoint
    if checkpoint in HPS_VERSIONS:
        repo_id, filename = HPS_HUB_REPO, HPS_VERSIONS[checkpoint]
    elif ":" in checkpoint and not os.path.exists(checkpoint):
        repo_id, filename = checkpoint.split(":", 1)
    else:
        raise CheckpointError(
            f"HPSv2 checkpoint not found: {checkpoint!r} (give a local .pt file, 'v2.0', 'v2.1' or 'repo_id:filename')"
        )
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception as error:  # offline, missing repo or file: all mean "no checkpoint here"
        raise CheckpointError(f"cannot fetch HPSv2 checkpoint {filename!r} from hub repo {repo_id!r}: {error}") from error


def load_hps_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors under ``"state_dict"`` of an HPS checkpoint (a bare state dict is accepted too)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read HPSv2 checkpoint {path}: {error}") from error
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointError(f"{path} is not an HPSv2 checkpoint: expected a dict with tensors under 'state_dict'")
    return state_dict


def _load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str, architecture) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                details.append(f"{len(keys)} {label} key(s), e.g. {', '.join(keys[:3])}")
        name = architecture if isinstance(architecture, str) else "the given config"
        raise CheckpointError(f"checkpoint {path} does not match open_clip architecture {name}: " + "; ".join(details))
    model.load_state_dict(state_dict, strict=True)


@register_scorer("hpsv2")
class HPSv2Scorer(Scorer):
    """HPSv2 / HPSv2.1 reward: cosine(image, prompt) under the HPS-fine-tuned CLIP (typically 0.2-0.35).

    Args:
        checkpoint: local ``.pt`` file, ``"v2.0"`` / ``"v2.1"`` (hub repo ``xswu/HPSv2``) or ``"repo_id:filename"``.
        architecture: open_clip model name, JSON config path or config dict (``"ViT-H-14"`` for real checkpoints).
        device, dtype: where and in which precision the model runs (default: CUDA + fp16 if available, else CPU fp32).
        batch_size: images per forward pass.
        progress: show a tqdm bar over images.
    """

    name: ClassVar[str] = "hpsv2"
    report_scale: ClassVar[float] = 100.0  # the HPD v2 benchmark prints 100 x cosine

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        architecture: str | dict[str, Any] = "ViT-H-14",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ):
        import open_clip

        path = resolve_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.progress = progress
        self.model = build_clip(architecture)
        _load_strict(self.model, load_hps_state_dict(path), path, architecture)
        self.model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.image_size = self.model.visual.image_size[0]
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.model.context_length)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        check_lengths(images=images, prompts=prompts)
        scores = []
        pairs = list(zip(images, prompts))
        for chunk in batched(pairs, self.batch_size, desc="hpsv2", progress=self.progress):
            pixels = torch.stack([hps_preprocess(image, self.image_size) for image, _ in chunk])
            tokens = self.tokenizer([prompt for _, prompt in chunk])
            output = self.model(pixels.to(self.device, self.dtype), tokens.to(self.device))
            scores.append((output["image_features"].float() * output["text_features"].float()).sum(-1).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)
