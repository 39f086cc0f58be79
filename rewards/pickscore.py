"""PickScore (Kirstain et al., arXiv 2305.01569): a CLIP-H fine-tuned on Pick-a-Pic preferences.

Read from github.com/yuvalkirstain/PickScore @f79607f (README inference snippet; spec
``research/rewards_bench.md`` §4.1). The model is a transformers ``CLIPModel``
(``yuvalkirstain/PickScore_v1``) with the LAION CLIP-H processor
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: shortest side to 224 bicubic, centre crop, OpenAI mean/std;
text truncated to 77 tokens). score = exp(logit_scale) * cosine(image, text) (``scale="logit"``, the
official number, about 100 x cosine), or the raw cosine (``scale="cosine"``, Pref-GRPO's reward).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from PIL import Image

from diffalign.data.images import to_rgb
from diffalign.errors import ModelLoadError, UsageError
from diffalign.rewards.base import Scorer, batched, check_lengths, register_scorer, resolve_device, resolve_dtype

SCALES = ("logit", "cosine")


@register_scorer("pickscore")
class PickScore(Scorer):
    """PickScore reward.

    Args:
        model: ``CLIPModel`` folder or hub id.
        processor: ``CLIPProcessor`` folder or hub id (PickScore ships none; the LAION CLIP-H one is used).
        scale: ``"logit"`` (exp(logit_scale) x cosine) or ``"cosine"``.
        device, dtype, batch_size, progress: as for the other scorers.
    """

    name: ClassVar[str] = "pickscore"

    def __init__(
        self,
        model: str = "yuvalkirstain/PickScore_v1",
        processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        scale: str = "logit",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ):
        from transformers import CLIPModel, CLIPProcessor

        if scale not in SCALES:
            raise UsageError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.processor = CLIPProcessor.from_pretrained(processor)
            self.model = CLIPModel.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load PickScore model {model!r} / processor {processor!r}: {error}") from error
        self.model.to(self.device).eval().requires_grad_(False)
        self.scale = scale
        self.batch_size = batch_size
        self.progress = progress

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        check_lengths(images=images, prompts=prompts)
        scores = []
        for chunk in batched(list(zip(images, prompts)), self.batch_size, desc="pickscore", progress=self.progress):
            inputs = self.processor(
                images=[to_rgb(image) for image, _ in chunk],
                text=[prompt for _, prompt in chunk],
                padding=True,
                truncation=True,
                max_length=77,
                return_tensors="pt",
            ).to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            output = self.model(**inputs)
            cosine = (output.image_embeds.float() * output.text_embeds.float()).sum(-1)
            if self.scale == "logit":
                cosine = self.model.logit_scale.exp().float() * cosine
            scores.append(cosine.cpu())
        return torch.cat(scores) if scores else torch.zeros(0)
