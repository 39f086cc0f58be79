"""DDPM UNet families (SD1.x/2.x, SDXL): ``UNet2DConditionModel`` on the ``alphas_cumprod`` schedule of
the model's ``scheduler/`` config (read as a ``DDPMScheduler``), integer timesteps uniform on
{0, ..., T - 1}, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and the epsilon or v target of the
scheduler's ``prediction_type`` (``diffalign.diffusion.noising``)."""

from __future__ import annotations

from typing import Optional

import torch

from diffalign.diffusion import attention
from diffalign.diffusion.conditioning import Conditioning
from diffalign.diffusion.families.base import Loader, ModelFamily
from diffalign.diffusion.noising import (add_noise, epsilon_from_velocity, sample_timesteps, velocity, x0_from_epsilon,
                                         x0_from_velocity)
from diffalign.errors import ModelLoadError


class UNetFamily(ModelFamily):
    denoiser_subfolder = "unet"
    ddpm_unet = True
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")

    def __init__(self, noise_scheduler):
        super().__init__(noise_scheduler)
        self.prediction_type = noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelLoadError(f"prediction_type {self.prediction_type!r} is not supported (epsilon, v_prediction)")
        self.alphas_cumprod = noise_scheduler.alphas_cumprod.to(torch.float64)

    @classmethod
    def denoiser_class(cls) -> type:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel

    @classmethod
    def load_schedule(cls, load: Loader) -> "UNetFamily":
        from diffusers import DDPMScheduler

        return cls(load(DDPMScheduler, "scheduler"))

    def sample_timesteps(self, count: int, generator: Optional[torch.Generator], device=None) -> torch.Tensor:
        return sample_timesteps(count, self.num_train_timesteps, generator, device)

    def add_noise(self, latents, noise, timesteps):
        return add_noise(latents, noise, timesteps, self.alphas_cumprod)

    def target(self, latents, noise, timesteps):
        """The noise for epsilon-prediction, the velocity for v-prediction."""
        if self.prediction_type == "v_prediction":
            return velocity(latents, noise, timesteps, self.alphas_cumprod)
        return noise

    def epsilon(self, prediction, noisy_latents, timesteps):
        """The noise a UNet prediction implies (the prediction itself for epsilon-prediction models)."""
        if self.prediction_type == "v_prediction":
            return epsilon_from_velocity(prediction, noisy_latents, timesteps, self.alphas_cumprod)
        return prediction

    def denoised(self, prediction, noisy_latents, timesteps):
        """The clean latent x0 a UNet prediction implies (epsilon or v)."""
        if self.prediction_type == "v_prediction":
            return x0_from_velocity(prediction, noisy_latents, timesteps, self.alphas_cumprod)
        return x0_from_epsilon(prediction, noisy_latents, timesteps, self.alphas_cumprod)

    def lora_layers(self, denoiser):
        """peft's keys converted to diffusers' UNet layout, as diffusers' SD / SDXL LoRA scripts save them."""
        from diffusers.utils import convert_state_dict_to_diffusers

        return convert_state_dict_to_diffusers(super().lora_layers(denoiser))

    def forward(self, network, noisy, timesteps, cond: Conditioning):
        return network(noisy, timesteps, **cond.unet_kwargs()).sample

    def set_attention_backend(self, network, backend: str) -> None:
        attention.set_attention_backend(network, backend)
