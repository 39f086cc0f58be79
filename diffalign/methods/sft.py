"""Supervised fine-tuning on preferred images: the plain denoising loss on the chosen image only.

The official Diffusion-DPO ``--sft`` branch (research/diffusion_methods_A.md §2.5): keep the winner
of each pair, L = mean over batch and latent elements of (eps_theta(x_t, t, c) - eps)^2 (the
velocity for v-prediction models), no reference, caption dropout 0.2. The paper trains it with the
DPO schedule at lr 1e-9.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffalign.diffusion import DENOISING_LOGP_SCALE, denoising_logps
from diffalign.diffusion.noising import sample_noise
from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP, DenoisingMethod, training_timesteps
from diffalign.objectives import sft_loss
from diffalign.options import option


@dataclass
class SFTConfig(MethodConfig):
    caption_dropout: float = option(CAPTION_DROPOUT_HELP, default=0.2, ge=0, le=1)


@register_method
class SFT(DenoisingMethod):
    name = "sft"
    summary = "SFT: denoising loss on the preferred image of each pair, no reference (images)"
    config_class = SFTConfig
    data_format = "chosen_images"
    needs_reference = False

    def compute_loss(self, model, inputs, generator=None):
        latents = inputs["image_latents"]
        timesteps = training_timesteps(model, latents.shape[0], generator, latents.device)
        noise = sample_noise(tuple(latents.shape), generator, latents.device, latents.dtype)
        prediction = model.policy(model.add_noise(latents, noise, timesteps), timesteps, inputs["cond"])
        logps = denoising_logps(prediction, model.target(latents, noise, timesteps))
        return sft_loss(logps, logp_scale=DENOISING_LOGP_SCALE)
