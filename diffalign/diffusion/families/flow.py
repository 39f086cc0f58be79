"""Rectified-flow (flow-matching) transformer families (SD3.5, FLUX.1), as diffusers' DreamBooth-LoRA
scripts for these models train them (examples/dreambooth/train_dreambooth_lora_sd3.py and
train_dreambooth_lora_flux.py, diffusers 0.3x):

- sigmas: the training grid of the model's ``FlowMatchEulerDiscreteScheduler`` config: sigma_i = i / T
  for i = T..1, shifted by the config's ``shift`` s (sigma -> s sigma / (1 + (s - 1) sigma)) unless
  the scheduler shifts dynamically (FLUX), and timesteps t_i = T sigma_i;
- timestep density: u ~ ``density`` on (0, 1) (``diffusers.training_utils.compute_density_for_timestep_sampling``,
  SD3 paper arXiv 2403.03206 §3.1): ``logit_normal`` u = sigmoid(N(logit_mean, logit_std)), ``mode``
  u = 1 - v - mode_scale (cos^2(pi v / 2) - 1 + v) with v ~ U(0, 1), ``uniform`` u ~ U(0, 1); the
  index floor(u T) picks the grid's t, sigma = t / T;
- noising x_sigma = (1 - sigma) x0 + sigma eps and the velocity target eps - x0 (the model predicts
  the flow d x_sigma / d sigma); the scripts' loss weighting (``compute_loss_weighting_for_sd3``) is 1
  for these densities, so the denoising score is the plain -1/2 mean (v_pred - (eps - x0))^2.

The models' own attention processors (joint attention, SDPA) are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from diffalign.diffusion.attention import AttentionBackendError
from diffalign.diffusion.families.base import Loader, ModelFamily
from diffalign.errors import UserError

TIMESTEP_DENSITIES = ("logit_normal", "mode", "uniform")


@dataclass
class TimestepDensity:
    """The density of u in (0, 1) that picks a flow-matching family's training timesteps (module docstring);
    defaults: the diffusers SD3 / FLUX DreamBooth scripts' ``--logit_mean 0 --logit_std 1 --mode_scale 1.29``."""

    name: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self):
        if self.name not in TIMESTEP_DENSITIES:
            raise TimestepDensityError(f"unknown timestep density {self.name!r}; choose one of {', '.join(TIMESTEP_DENSITIES)}")

    def sample(self, count: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """(count,) draws of u, float32 on the CPU generator."""
        if self.name == "logit_normal":
            return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(count, generator=generator))
        uniform = torch.rand(count, generator=generator)
        if self.name == "mode":
            return 1 - uniform - self.mode_scale * (torch.cos(math.pi * uniform / 2) ** 2 - 1 + uniform)
        return uniform


class TimestepDensityError(UserError, ValueError):
    pass


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


class FlowMatchingFamily(ModelFamily):
    ddpm_unet = False
    denoiser_subfolder = "transformer"
    prediction_type = "flow"
    default_density: str = "logit_normal"

    def __init__(self, noise_scheduler, density: Optional[TimestepDensity] = None):
        super().__init__(noise_scheduler)
        self.timesteps = noise_scheduler.timesteps.to(torch.float32)
        self.density = density if density is not None else TimestepDensity(self.default_density)

    @classmethod
    def load_schedule(cls, load: Loader) -> "FlowMatchingFamily":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return cls(load(FlowMatchEulerDiscreteScheduler, "scheduler"))

    def sample_timesteps(self, count, generator, device=None):
        """Timesteps t = T sigma (float, in (0, T]) of ``count`` draws of the timestep density."""
        indices = (self.density.sample(count, generator) * self.num_train_timesteps).long().clamp(max=self.num_train_timesteps - 1)
        return self.timesteps[indices].to(device)

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps.float() / self.num_train_timesteps

    def add_noise(self, latents, noise, timesteps):
        """x_sigma = (1 - sigma) x0 + sigma eps, computed in float32, returned in the latents' dtype."""
        sigma = _broadcast(self.sigmas(timesteps.to(latents.device)), latents)
        return ((1 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)

    def target(self, latents, noise, timesteps):
        """The flow velocity eps - x0 (independent of sigma)."""
        return (noise.float() - latents.float()).to(latents.dtype)

    def set_attention_backend(self, network, backend: str) -> None:
        """Keep the model's own (joint-)attention processors, which already run SDPA."""
        if backend != "sdpa":
            raise AttentionBackendError(f"{self.title} models keep their own joint-attention processors (SDPA); "
                                        f"--attention {backend} is for the UNet families, use --attention sdpa")
