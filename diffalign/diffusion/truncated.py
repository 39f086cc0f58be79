"""The timestep arithmetic of truncated self-sampling (Self-NPO, research/diffusion_methods_B.md §2.2).

Self-NPO starts on a coarse DDIM grid, takes a few deterministic DDIM steps down it with a guided
teacher, and re-noises the end point to a higher noise level with the exact forward kernel:

- grid: ``tau_k = stride * k - 1`` for k = 1..N with ``stride = T / N`` (official: N = 25, T = 1000,
  so {39, 79, ..., 999});
- one DDIM step (eta = 0) from t to ``max(t - stride, 0)``: ``y' = sqrt(abar') x0_hat + sqrt(1 - abar') eps_hat``;
  a sample already at t = 0 stays where it is (the official per-sample mask once the grid index
  drops below 0), so K steps from ``tau_k`` end at ``max(tau_k - K * stride, 0)``;
- re-noising from t' to s > t': q(x_s | x_t') = N(sqrt(abar_s / abar_t') x_t', (1 - abar_s / abar_t') I),
  which is the official ``alpha_s (y / alpha_t' + sqrt(nsr_s^2 - nsr_t'^2) z)`` written without
  dividing by alpha_s (finite when abar_s = 0, the last step of a zero-terminal-SNR schedule).
"""

from __future__ import annotations

import torch

from diffalign.diffusion.noising import _broadcast


def ddim_grid(grid_steps: int, num_train_timesteps: int) -> torch.Tensor:
    """The N = ``grid_steps`` grid timesteps ``stride * k - 1``, k = 1..N, ascending, int64 (N,)."""
    if num_train_timesteps % grid_steps:
        raise ValueError(f"grid_steps {grid_steps} must divide the {num_train_timesteps} training timesteps")
    stride = num_train_timesteps // grid_steps
    return torch.arange(1, grid_steps + 1, dtype=torch.long) * stride - 1


def previous_timesteps(timesteps: torch.Tensor, stride: int) -> torch.Tensor:
    """The next-lower grid point of each timestep: ``max(t - stride, 0)`` (0 stays 0)."""
    return (timesteps - stride).clamp(min=0)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, previous: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update to ``previous``: sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps."""
    abar = alphas_cumprod.to(x0.device)[previous.to(x0.device)].float()
    step = _broadcast(abar.sqrt(), x0) * x0.float() + _broadcast((1 - abar).sqrt(), x0) * eps.float()
    return step.to(x0.dtype)


def renoise(latents: torch.Tensor, from_timesteps: torch.Tensor, to_timesteps: torch.Tensor, noise: torch.Tensor,
            alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A sample of q(x_s | x_t') for latents at t' = ``from_timesteps`` and s = ``to_timesteps`` >= t':
    sqrt(abar_s / abar_t') x_t' + sqrt(1 - abar_s / abar_t') z."""
    abar = alphas_cumprod.to(latents.device)
    ratio = abar[to_timesteps.to(latents.device)] / abar[from_timesteps.to(latents.device)]
    ratio = ratio.float()
    noised = _broadcast(ratio.sqrt(), latents) * latents.float() + _broadcast((1 - ratio).clamp(min=0).sqrt(), latents) * noise.float()
    return noised.to(latents.dtype)
