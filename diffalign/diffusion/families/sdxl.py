"""SDXL: CLIP-L and OpenCLIP-bigG, pooled embeddings and ``time_ids`` (``diffalign.diffusion.conditioning``)."""

from __future__ import annotations

import torch

from diffalign.diffusion.conditioning import Conditioning, encode_sdxl_prompts
from diffalign.diffusion.families.unet import UNetFamily


class SDXLFamily(UNetFamily):
    name = "sdxl"
    title = "SDXL"
    pipeline_class_names = ("StableDiffusionXLPipeline",)
    default_guidance = 5.0  # the NPO generation scripts' cfg (gen_xl.sh)

    def load_text_encoders(self, load):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        return ([load(CLIPTextModel, "text_encoder"), load(CLIPTextModelWithProjection, "text_encoder_2")],
                [load(CLIPTokenizer, "tokenizer"), load(CLIPTokenizer, "tokenizer_2")])

    def encode_prompts(self, text_encoders, tokenizers, prompts, resolution):
        return encode_sdxl_prompts(text_encoders, tokenizers, prompts, resolution)

    def null_conditioning(self, empty: Conditioning) -> Conditioning:
        """All-zero prompt and pooled embeddings with the usual time ids (``force_zeros_for_empty_prompt``,
        as the Self-NPO and NPO SDXL code)."""
        added = dict(empty.added_cond_kwargs)
        added["text_embeds"] = torch.zeros_like(added["text_embeds"])
        return Conditioning(torch.zeros_like(empty.prompt_embeds), added)

    def pipeline_components(self, text_encoders, tokenizers):
        return dict(text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], tokenizer=tokenizers[0],
                    tokenizer_2=tokenizers[1])
