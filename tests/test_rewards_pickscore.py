"""PickScore on a tiny transformers CLIPModel: exp(logit_scale) x cosine, the cosine variant, batching."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffalign  # noqa: F401
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffalign.rewards import get_scorer
from tiny_rewards import save_tiny_pickscore


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    return save_tiny_pickscore(str(tmp_path_factory.mktemp("pick")))


def test_pickscore_formula_and_variants(tiny_pickscore):
    from transformers import CLIPModel, CLIPProcessor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)), Image.new("RGBA", (300, 300), "red")]
    prompts = ["a red circle on a blue background", "a photo of a cat " * 40]
    scorer = get_scorer("pickscore", model=tiny_pickscore, processor=tiny_pickscore, device="cpu", progress=False)
    scores = scorer.score(images, prompts)

    model, processor = CLIPModel.from_pretrained(tiny_pickscore).eval(), CLIPProcessor.from_pretrained(tiny_pickscore)
    pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 224, 224)
    with torch.no_grad():
        image_embeds = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
        text = processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_embeds = F.normalize(model.text_projection(model.text_model(**text).pooler_output), dim=-1)
    cosine = (image_embeds * text_embeds).sum(-1)
    torch.testing.assert_close(scores, model.logit_scale.exp().detach() * cosine, rtol=0, atol=1e-5)
    cosine_scorer = get_scorer("pickscore", model=tiny_pickscore, processor=tiny_pickscore, scale="cosine", device="cpu", progress=False)
    torch.testing.assert_close(cosine_scorer.score(images, prompts), cosine, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([scorer.score([i], [p]) for i, p in zip(images, prompts)]), scores, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="scale must be one of"):
        get_scorer("pickscore", model=tiny_pickscore, processor=tiny_pickscore, scale="x100")
