"""What the diffusion preference methods share: the encode options (caption dropout), noising a
[winners; losers] batch with the timestep and noise shared per pair, and one concatenated policy forward.

Randomness comes from the step's ``generator``, drawn in this order: caption dropout (B uniforms) and
the VAE posterior sample in the model's encode step (``DiffusionModel.encode_batch``), then in
``compute_loss`` the timesteps (B) and whatever ``noisy_latents_and_targets`` draws (forward noising:
the noise, B latents). Tests and resumed runs rely on this order.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
import torch

from diffalign.diffusion import Conditioning, denoising_logps
from diffalign.diffusion.noising import repeat_for_pair, sample_noise, sample_timesteps
from diffalign.methods.base import Method
from diffalign.objectives import ObjectiveOutput


class DenoisingMethod(Method):
    """Base of the diffusion methods: their config's ``caption_dropout`` is an encode option (the
    model's encode step swaps in the empty prompt's conditioning)."""

    modality = "diffusion"

    def encode_options(self) -> dict:
        return {"caption_dropout": self.config.caption_dropout}


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


class PairwiseDenoisingMethod(DenoisingMethod):
    """Base of the methods trained on image pairs: subclasses define ``objective``.

    ``noisy_latents_and_targets`` is the latent provider: forward noising here; inversion-based
    methods (InPO, SmPO) replace it.
    """

    data_format = "image_pairs"

    def compute_loss(self, model, inputs, generator=None) -> ObjectiveOutput:
        pair = self.forward_pair(model, inputs, generator)
        policy_chosen, policy_rejected = pair.logps(model.policy(pair.noisy, pair.timesteps, pair.cond))
        output = self.objective(model, pair, policy_chosen, policy_rejected, inputs)
        output.metrics["diffusion/mse_w"] = (-2 * policy_chosen).detach().mean()
        output.metrics["diffusion/mse_l"] = (-2 * policy_rejected).detach().mean()
        return output

    def forward_pair(self, model, inputs, generator) -> PairForward:
        latents = torch.cat([inputs["chosen_latents"], inputs["rejected_latents"]], dim=0)
        pairs = inputs["chosen_latents"].shape[0]
        timesteps = repeat_for_pair(sample_timesteps(pairs, model.num_train_timesteps, generator, latents.device))
        cond = inputs["cond"].repeat_for_pair()
        noisy, target = self.noisy_latents_and_targets(model, latents, timesteps, cond, generator)
        return PairForward(noisy, target, timesteps, cond)

    def noisy_latents_and_targets(self, model, latents, timesteps, cond, generator):
        """Forward noising x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with eps shared within each pair."""
        pairs = latents.shape[0] // 2
        noise = repeat_for_pair(sample_noise((pairs, *latents.shape[1:]), generator, latents.device, latents.dtype))
        return model.add_noise(latents, noise, timesteps), model.target(latents, noise, timesteps)

    @abstractmethod
    def objective(self, model, pair: PairForward, policy_chosen, policy_rejected, inputs) -> ObjectiveOutput:
        """The method's loss from the policy's (chosen, rejected) scores of ``pair``."""


def reference_metrics(ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"diffusion/ref_mse_w": (-2 * ref_chosen).mean(), "diffusion/ref_mse_l": (-2 * ref_rejected).mean()}

