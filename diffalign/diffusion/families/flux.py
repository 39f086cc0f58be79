"""FLUX.1 (``FluxPipeline``, ``FluxTransformer2DModel``): CLIP-L pooled + T5 prompts, packed latents and
the guidance embedding, trained as diffusers' ``train_dreambooth_lora_flux.py`` does:

- prompts: the pipeline's own ``encode_prompt`` (T5's last hidden state as the sequence, CLIP's pooled
  output as ``pooled_projections``), T5 at ``MAX_SEQUENCE_LENGTH`` = 512 tokens (the script's default);
- latents: the VAE latents (B, 16, h, w) with FLUX's scaling and shift factors, packed into 2 x 2
  patches (B, h/2 * w/2, 64) for the model call, with the image ids (0, row, column) per patch and all
  zero text ids; the prediction is unpacked back, so noising and targets stay on (B, 16, h, w);
- timesteps: the model reads t / T; the guidance-distilled models (``guidance_embeds``, FLUX.1-dev)
  read the guidance scale ``GUIDANCE`` = 3.5 (the script's ``--guidance_scale``) per sample;
- timestep density: uniform (the script's ``--weighting_scheme none``), on the scheduler's training
  grid (FLUX shifts dynamically at inference, so the training sigmas are unshifted).
"""

from __future__ import annotations

import torch

from diffalign.diffusion.conditioning import Conditioning
from diffalign.diffusion.families.flow import FlowMatchingFamily

MAX_SEQUENCE_LENGTH = 512
GUIDANCE = 3.5
DEFAULT_SAMPLE_SIZE = 128
"""FluxPipeline's ``default_sample_size`` in latent pixels (the transformer config has no sample size)."""


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): 2 x 2 patches, row-major (``FluxPipeline._pack_latents``)."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``pack`` for latents of ``height`` x ``width``."""
    batch, _, features = packed.shape
    patches = packed.view(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, features // 4, height, width)


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids (0, row, column) of the packed patches."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxFamily(FlowMatchingFamily):
    name = "flux"
    title = "FLUX.1"
    pipeline_class_names = ("FluxPipeline",)
    default_guidance = 3.5  # FluxPipeline's guidance_scale
    default_density = "uniform"
    lora_targets = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2")  # train_dreambooth_lora_flux.py

    @classmethod
    def denoiser_class(cls) -> type:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    @staticmethod
    def resolution_of(denoiser_config, vae_config) -> int:
        return DEFAULT_SAMPLE_SIZE * 2 ** (len(vae_config["block_out_channels"]) - 1)

    def load_text_encoders(self, load):
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        return ([load(CLIPTextModel, "text_encoder"), load(T5EncoderModel, "text_encoder_2")],
                [load(CLIPTokenizer, "tokenizer"), load(T5TokenizerFast, "tokenizer_2")])

    def encode_prompts(self, text_encoders, tokenizers, prompts, resolution):
        from diffusers import FluxPipeline

        encoder = FluxPipeline(transformer=None, scheduler=None, vae=None, **self.pipeline_components(text_encoders, tokenizers))
        with torch.no_grad():
            prompt_embeds, pooled, _ = encoder.encode_prompt(list(prompts), None, device=text_encoders[0].device,
                                                             max_sequence_length=MAX_SEQUENCE_LENGTH)
        return Conditioning(prompt_embeds, {"pooled_projections": pooled})

    def forward(self, network, noisy, timesteps, cond: Conditioning):
        batch, _, height, width = noisy.shape
        guidance = None
        if network.config.guidance_embeds:
            guidance = torch.full((batch,), GUIDANCE, device=noisy.device)
        text_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        packed = network(hidden_states=pack(noisy), timestep=timesteps / self.num_train_timesteps, guidance=guidance,
                         encoder_hidden_states=cond.prompt_embeds,
                         pooled_projections=cond.added_cond_kwargs["pooled_projections"],
                         img_ids=image_ids(height, width, noisy.device, noisy.dtype), txt_ids=text_ids).sample
        return unpack(packed, height, width)

    def pipeline_components(self, text_encoders, tokenizers):
        return dict(text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], tokenizer=tokenizers[0],
                    tokenizer_2=tokenizers[1])
