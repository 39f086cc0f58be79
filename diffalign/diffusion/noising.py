"""Forward noising with explicit randomness, shared within preference pairs.

Diffusion-DPO draws one timestep and one noise tensor per pair and uses them for both the winner and
the loser (research/diffusion_methods_A.md §1.2): common random numbers make the winner/loser error
difference measure the images, not the noise.
"""

from __future__ import annotations

import torch


def sample_timesteps(count: int, num_train_timesteps: int, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """Integer timesteps uniform on {0, ..., num_train_timesteps - 1}, shape (count,)."""
    return torch.randint(0, num_train_timesteps, (count,), generator=generator).to(device)


def sample_noise(shape: tuple[int, ...], generator: torch.Generator | None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard Gaussian noise drawn on the CPU generator (reproducible across devices), then moved."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def repeat_for_pair(per_pair: torch.Tensor) -> torch.Tensor:
    """[x_1..x_B] -> [x_1..x_B, x_1..x_B]: the layout of a batch stacked as [winners; losers]."""
    return torch.cat([per_pair, per_pair], dim=0)


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps (computed in float32, returned in the latents' dtype)."""
    abar = alphas_cumprod.to(latents.device)[timesteps.to(latents.device)].float()
    x_t = _broadcast(abar.sqrt(), latents) * latents.float() + _broadcast((1 - abar).sqrt(), latents) * noise.float()
    return x_t.to(latents.dtype)


def velocity(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar_t) * eps - sqrt(1 - abar_t) * x_0, the v-prediction target (Salimans & Ho 2022)."""
    abar = alphas_cumprod.to(latents.device)[timesteps.to(latents.device)].float()
    v = _broadcast(abar.sqrt(), latents) * noise.float() - _broadcast((1 - abar).sqrt(), latents) * latents.float()
    return v.to(latents.dtype)


def epsilon_from_velocity(v: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(abar_t) * v + sqrt(1 - abar_t) * x_t, the noise a v-prediction implies.

    Negative timesteps (the first step of a diffusers-0.20 DDIM inversion) use abar_0, as that
    inversion does (``set_alpha_to_one=False``)."""
    abar = alphas_cumprod.to(noisy.device)[timesteps.to(noisy.device).clamp(min=0)].float()
    eps = _broadcast(abar.sqrt(), noisy) * v.float() + _broadcast((1 - abar).sqrt(), noisy) * noisy.float()
    return eps.to(noisy.dtype)


def x0_from_epsilon(eps: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t), the clean latent an epsilon-prediction implies."""
    abar = alphas_cumprod.to(noisy.device)[timesteps.to(noisy.device)].float()
    x0 = (noisy.float() - _broadcast((1 - abar).sqrt(), noisy) * eps.float()) / _broadcast(abar.sqrt(), noisy)
    return x0.to(noisy.dtype)


def x0_from_velocity(v: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(abar_t) * x_t - sqrt(1 - abar_t) * v, the clean latent a v-prediction implies (finite at
    abar_t = 0, the last step of a zero-terminal-SNR schedule)."""
    abar = alphas_cumprod.to(noisy.device)[timesteps.to(noisy.device)].float()
    x0 = _broadcast(abar.sqrt(), noisy) * noisy.float() - _broadcast((1 - abar).sqrt(), noisy) * v.float()
    return x0.to(noisy.dtype)
