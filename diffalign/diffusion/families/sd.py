"""SD1.x/2.x: one CLIP text encoder, its last hidden state as the cross-attention context."""

from __future__ import annotations

from diffalign.diffusion.conditioning import encode_sd_prompts
from diffalign.diffusion.families.unet import UNetFamily


class SDFamily(UNetFamily):
    name = "sd"
    title = "SD1.x/2.x"
    pipeline_class_names = ("StableDiffusionPipeline",)
    default_guidance = 7.5  # the NPO generation scripts' cfg (gen.py)

    def load_text_encoders(self, load):
        from transformers import CLIPTextModel, CLIPTokenizer

        return [load(CLIPTextModel, "text_encoder")], [load(CLIPTokenizer, "tokenizer")]

    def encode_prompts(self, text_encoders, tokenizers, prompts, resolution):
        return encode_sd_prompts(text_encoders[0], tokenizers[0], prompts)

    def pipeline_components(self, text_encoders, tokenizers):
        return dict(text_encoder=text_encoders[0], tokenizer=tokenizers[0], safety_checker=None, feature_extractor=None,
                    requires_safety_checker=False)
