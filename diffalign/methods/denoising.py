"""What the diffusion preference methods share: caption dropout, noising a [winners; losers] batch with
the timestep and noise shared per pair, and one concatenated policy forward.

Randomness comes from the ``generator`` passed to ``compute_loss``, drawn in this order: caption
dropout (B uniforms), the VAE posterior sample, the timesteps (B), then whatever
``noisy_latents_and_targets`` draws (forward noising: the noise, B latents). Tests and resumed runs
rely on this order.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch

from diffalign.diffusion import Conditioning, denoising_logps
from diffalign.diffusion.noising import repeat_for_pair, sample_noise, sample_timesteps
from diffalign.methods.base import Method
from diffalign.objectives import ObjectiveOutput


def drop_captions(prompts: Sequence[str], probability: float, generator: torch.Generator | None) -> list[str]:
    """Replace each prompt by "" with ``probability`` (official Diffusion-DPO/SmPO/InPO: 0.2, spec Q5).

    Always draws len(prompts) uniforms so the random stream does not depend on the probability."""
    draws = torch.rand(len(prompts), generator=generator)
    return ["" if draw < probability else prompt for prompt, draw in zip(prompts, draws.tolist())]


@dataclass
class PairForward:
    """A noised [winners; losers] batch: 2B latents sharing timesteps (and noise) within each pair."""

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    cond: Conditioning

    def logps(self, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) denoising log-likelihood proxies of a (2B, ...) prediction."""
        chosen, rejected = denoising_logps(prediction, self.target).chunk(2)
        return chosen, rejected


class PairwiseDenoisingMethod(Method):
    """Base of the methods trained on image pairs: subclasses define ``objective``.

    ``noisy_latents_and_targets`` is the latent provider: forward noising here; inversion-based
    methods (InPO, SmPO) replace it.
    """

    modality = "diffusion"
    data_format = "image_pairs"

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        pair = self.forward_pair(model, batch, generator)
        policy_chosen, policy_rejected = pair.logps(model.policy(pair.noisy, pair.timesteps, pair.cond))
        output = self.objective(model, pair, policy_chosen, policy_rejected, batch)
        output.metrics["diffusion/mse_w"] = (-2 * policy_chosen).detach().mean()
        output.metrics["diffusion/mse_l"] = (-2 * policy_rejected).detach().mean()
        return output

    def forward_pair(self, model, batch, generator) -> PairForward:
        prompts = drop_captions(batch["prompts"], self.config.caption_dropout, generator)
        pixels = torch.cat([batch["chosen_pixels"], batch["rejected_pixels"]], dim=0)
        latents = model.encode_images(pixels, generator)
        timesteps = repeat_for_pair(sample_timesteps(len(prompts), model.num_train_timesteps, generator, latents.device))
        cond = model.encode_prompts(prompts).repeat_for_pair()
        noisy, target = self.noisy_latents_and_targets(model, latents, timesteps, cond, generator)
        return PairForward(noisy, target, timesteps, cond)

    def noisy_latents_and_targets(self, model, latents, timesteps, cond, generator):
        """Forward noising x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with eps shared within each pair."""
        pairs = latents.shape[0] // 2
        noise = repeat_for_pair(sample_noise((pairs, *latents.shape[1:]), generator, latents.device, latents.dtype))
        return model.add_noise(latents, noise, timesteps), model.target(latents, noise, timesteps)

    @abstractmethod
    def objective(self, model, pair: PairForward, policy_chosen, policy_rejected, batch) -> ObjectiveOutput:
        """The method's loss from the policy's (chosen, rejected) scores of ``pair``."""


def reference_metrics(ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"diffusion/ref_mse_w": (-2 * ref_chosen).mean(), "diffusion/ref_mse_l": (-2 * ref_rejected).mean()}

