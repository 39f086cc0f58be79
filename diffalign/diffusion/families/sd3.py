"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``, ``SD3Transformer2DModel``): CLIP-L + CLIP-G +
T5 text encoders, flow matching with the SD3 scheduler's shift (3.0 for SD3.5) and the logit-normal
timestep density of diffusers' ``train_dreambooth_lora_sd3.py`` (``flow.FlowMatchingFamily``).

Prompt conditioning is the pipeline's own ``encode_prompt``: the penultimate hidden states of both CLIP
encoders concatenated on the feature axis, zero-padded to the T5 width and concatenated with T5's
last hidden state on the sequence axis; pooled = both CLIP projections concatenated. T5 reads
``MAX_SEQUENCE_LENGTH`` = 77 tokens, the DreamBooth script's ``--max_sequence_length`` default.
"""

from __future__ import annotations

from diffalign.diffusion.conditioning import Conditioning
from diffalign.diffusion.families.flow import FlowMatchingFamily

MAX_SEQUENCE_LENGTH = 77


class SD3Family(FlowMatchingFamily):
    name = "sd3"
    title = "SD3.x"
    pipeline_class_names = ("StableDiffusion3Pipeline",)
    default_guidance = 7.0  # StableDiffusion3Pipeline's guidance_scale
    lora_targets = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")  # train_dreambooth_lora_sd3.py

    @classmethod
    def denoiser_class(cls) -> type:
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    def load_text_encoders(self, load):
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        return ([load(CLIPTextModelWithProjection, "text_encoder"), load(CLIPTextModelWithProjection, "text_encoder_2"),
                 load(T5EncoderModel, "text_encoder_3")],
                [load(CLIPTokenizer, "tokenizer"), load(CLIPTokenizer, "tokenizer_2"), load(T5TokenizerFast, "tokenizer_3")])

    def encode_prompts(self, text_encoders, tokenizers, prompts, resolution):
        import torch
        from diffusers import StableDiffusion3Pipeline

        encoder = StableDiffusion3Pipeline(transformer=None, scheduler=None, vae=None,
                                           **self.pipeline_components(text_encoders, tokenizers))
        with torch.no_grad():
            prompt_embeds, _, pooled, _ = encoder.encode_prompt(list(prompts), None, None, device=text_encoders[0].device,
                                                                do_classifier_free_guidance=False,
                                                                max_sequence_length=MAX_SEQUENCE_LENGTH)
        return Conditioning(prompt_embeds, {"pooled_projections": pooled})

    def forward(self, network, noisy, timesteps, cond: Conditioning):
        return network(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=cond.prompt_embeds,
                       pooled_projections=cond.added_cond_kwargs["pooled_projections"]).sample

    def pipeline_components(self, text_encoders, tokenizers):
        return dict(text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], text_encoder_3=text_encoders[2],
                    tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], tokenizer_3=tokenizers[2])
