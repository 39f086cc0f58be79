"""Local VLM judge backend: greedy generation with a transformers image-text-to-text model.

Serves the Qwen2.5-VL UnifiedReward checkpoints (``CodeGoat24/UnifiedReward-qwen-7b``, ...) from a
local folder or hub id through ``AutoProcessor`` + ``AutoModelForImageTextToText``. One chat message
per request holds the images first, then the instruction, as the official inference scripts send it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from diffalign.data.images import to_rgb
from diffalign.errors import ModelLoadError
from diffalign.rewards.base import batched, resolve_device, resolve_dtype

JudgeRequest = tuple[Sequence[Image.Image], str]


def load_image_text_model(model: str, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                          role: str = "judge"):
    """``(processor, model, device, dtype)``: ``AutoProcessor`` + ``AutoModelForImageTextToText`` from a folder
    or hub id, in eval mode on ``device`` (default CUDA + bfloat16 when available, else CPU float32), the
    tokenizer padding on the left for batched generation. ``role`` names the model in the load error."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = resolve_device(device)
    dtype = torch.bfloat16 if dtype is None and device.type == "cuda" else resolve_dtype(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(model)
        loaded = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load {role} model {model!r}: {error}") from error
    processor.tokenizer.padding_side = "left"
    return processor, loaded.to(device).eval(), device, dtype


def chat_prompt(processor, content: list[dict]) -> str:
    """The chat-template text of one user message of ``content`` parts (``{"type": "image"}``,
    ``{"type": "text", "text": ...}``), ending with the opening of the assistant's answer."""
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class TransformersJudge:
    """Greedy-decoding VLM judge.

    Args:
        model: local folder or hub id of a model with a chat template and an image processor.
        device, dtype: default CUDA + bfloat16 when available, else CPU float32.
        batch_size: requests per ``generate`` call (left-padded).
        max_new_tokens: generation budget per answer.
        progress: show a tqdm bar over requests.
    """

    def __init__(
        self,
        model: str,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 4,
        max_new_tokens: int = 1024,
        progress: bool = True,
    ):
        self.processor, self.model, self.device, self.dtype = load_image_text_model(model, device, dtype, role="judge")
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.progress = progress

    def _chat_text(self, num_images: int, text: str) -> str:
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
        return chat_prompt(self.processor, content)

    @torch.inference_mode()
    def generate(self, requests: Sequence[JudgeRequest]) -> list[str]:
        """The decoded answer (new tokens only, special tokens dropped) for each (images, text) request."""
        answers: list[str] = []
        for chunk in batched(list(requests), self.batch_size, desc="judge", progress=self.progress):
            texts = [self._chat_text(len(images), text) for images, text in chunk]
            images = [[to_rgb(image) for image in request_images] for request_images, _ in chunk]
            inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(self.device)
            output = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            answers += self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return answers
