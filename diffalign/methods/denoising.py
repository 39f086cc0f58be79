"""The pieces the diffusion methods compose: the caption-dropout encode option, a [winners; losers]
batch with one timestep per pair (for TPO: one image under its true and under a perturbed caption),
the two latent providers (forward noising, and inversion of each image by the model itself) and the
per-image denoising scores of a network on their latents.

A pairwise method's ``compute_loss`` reads, in its own module::

    latents, timesteps, cond = stack_pairs(model, inputs, generator)
    pairs = forward_noised_pairs(model, latents, timesteps, cond, generator)   # or invert_pairs(...)
    policy_chosen, policy_rejected = pairs.logps(model.policy)
    ...its objective on those scores (diffalign.objectives)...

Randomness comes from the step's ``generator``, drawn in this order: caption dropout (B uniforms) and
the VAE posterior sample in the model's encode step (``DiffusionModel.encode_batch``), then in
``compute_loss`` the timesteps (B, ``stack_pairs``) and what the latent provider draws (forward
noising: the noise, B latents; inversion with eta > 0: one normal per inverted row and step). TPO's
``caption_pairs`` draws the perturbed caption of each image (B uniforms) before its timesteps and
noise. Tests and resumed runs rely on this order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from diffalign.data.errors import DataError
from diffalign.diffusion import Conditioning, denoising_logps
from diffalign.diffusion.inversion import ddim_invert, inversion_grid
from diffalign.diffusion import noising
from diffalign.diffusion.noising import repeat_for_pair, sample_noise
from diffalign.methods.base import Method

CAPTION_DROPOUT_HELP = "probability of replacing a pair's caption by the empty one (classifier-free guidance)"

Network = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
"""``network(noisy_latents, timesteps, cond) -> prediction``: ``model.policy`` or ``model.reference``."""


class DenoisingMethod(Method):
    """Base of the diffusion methods: their config's ``caption_dropout`` is an encode option (the
    model's encode step swaps in the empty prompt's conditioning)."""

    modality = "diffusion"

    def encode_options(self) -> dict:
        return {"caption_dropout": self.config.caption_dropout}


@dataclass
class PairLatents:
    """A noised [winners; losers] batch: 2B latents at their pair's timestep, the regression target of
    each, the conditioning, and the no-grad UNet image-forwards spent making the latents (0 for forward
    noising, the inversion's count otherwise)."""

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    cond: Conditioning
    image_forwards: int = 0

    def logps(self, network: Network) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) ``denoising_logps`` (= -1/2 x mean squared error, (B,) each) of
        ``network``'s prediction on these latents: one concatenated forward of winners and losers."""
        chosen, rejected = denoising_logps(network(self.noisy, self.timesteps, self.cond), self.target).chunk(2)
        return chosen, rejected


def training_timesteps(model, count: int, generator: Optional[torch.Generator], device=None) -> torch.Tensor:
    """``count`` training timesteps of ``model`` from ``generator``: its family's (``model.sample_timesteps``:
    DDPM integers uniform on {0, ..., T - 1}, or T sigma from a flow-matching family's density); a model
    adapter without ``sample_timesteps`` (a test double) gets the DDPM draw on ``model.num_train_timesteps``."""
    sample = getattr(model, "sample_timesteps", None)
    if sample is None:
        return noising.sample_timesteps(count, model.num_train_timesteps, generator, device)
    return sample(count, generator, device)


def stack_pairs(model, inputs: dict, generator: Optional[torch.Generator]):
    """(latents, timesteps, cond) of the encoded pairs: clean latents stacked as [winners; losers]
    (2B, ...), one timestep per pair drawn from ``generator``
    (``training_timesteps``) and repeated for both images (2B,), and the conditioning repeated the same way."""
    latents = torch.cat([inputs["chosen_latents"], inputs["rejected_latents"]], dim=0)
    pairs = inputs["chosen_latents"].shape[0]
    timesteps = repeat_for_pair(training_timesteps(model, pairs, generator, latents.device))
    return latents, timesteps, inputs["cond"].repeat_for_pair()


def forward_noised_pairs(model, latents, timesteps, cond, generator) -> PairLatents:
    """Forward noising x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (flow matching: (1 - sigma) x0 +
    sigma eps), with eps drawn once per pair and shared by winner and loser (common random numbers: the
    error difference measures the images, not the noise); the target is eps (epsilon-prediction), the
    velocity (v-prediction) or eps - x0 (flow matching), as the model's family defines them."""
    pairs = latents.shape[0] // 2
    noise = repeat_for_pair(sample_noise((pairs, *latents.shape[1:]), generator, latents.device, latents.dtype))
    return PairLatents(model.add_noise(latents, noise, timesteps), model.target(latents, noise, timesteps), timesteps, cond)


def caption_pairs(model, inputs: dict, generator: Optional[torch.Generator], method: str) -> PairLatents:
    """TPO's pairs (captioned images): each image under its caption and under one of its perturbed
    captions, stacked as [true; perturbed] (2B), with one timestep and one noise per image shared by
    both halves (the same x_t: the error difference measures the captions). The perturbed caption is
    drawn uniformly per image from ``generator`` (B uniforms, before the timesteps and the noise). An
    image without perturbed captions is a ``DataError`` naming its caption and ``method``."""
    counts = inputs["negative_counts"]
    if (counts == 0).any():
        prompt = inputs["prompts"][int((counts == 0).nonzero()[0])]
        raise DataError(f"{method} needs at least one perturbed caption per image, but the image captioned {prompt!r:.100} "
                        f"has no 'negative_prompts'; add them or drop the row")
    first_rows = counts.cumsum(0) - counts
    drawn = torch.minimum((torch.rand(len(counts), generator=generator) * counts).long(), counts - 1)
    rows = first_rows + drawn
    perturbed = inputs["negative_cond"].map(lambda tensor: tensor[rows.to(tensor.device)])
    image = inputs["image_latents"]
    timesteps = repeat_for_pair(training_timesteps(model, image.shape[0], generator, image.device))
    return forward_noised_pairs(model, repeat_for_pair(image), timesteps, Conditioning.concat([inputs["cond"], perturbed]),
                                generator)


def identical_captions(cond: Conditioning) -> torch.Tensor:
    """(B,) bool of a [true; perturbed] conditioning (``caption_pairs``): whether an image's perturbed
    caption conditions the model exactly as its true caption does (the same text, or a difference past
    the text encoder's token limit), a pair that carries no preference."""
    same = None
    for tensor in cond.tensors().values():
        true, perturbed = tensor.chunk(2)
        rows = (true == perturbed).reshape(true.shape[0], -1).all(dim=1)
        same = rows if same is None else same & rows
    return same


def invert_pairs(model, latents, timesteps, cond, generator, *, steps: int, renoise_steps: int, eta: float,
                 invert_with: str = "policy", exact_t: bool = False) -> PairLatents:
    """Each image inverted from its own clean latent x0 to its pair's timestep t, without grad, by
    ``diffalign.diffusion.inversion.ddim_invert`` on the N = ``steps`` grid (``renoise_steps`` ReNoise
    refinements per step, ``eta`` sigma_k noise after each step drawn from ``generator``, landing
    exactly on t with ``exact_t``), with the current policy or, ``invert_with="reference"``, the frozen
    reference.

    The latents are x_tilde; the target is tau = (x_tilde - sqrt(abar_t) x0) / sqrt(1 - abar_t) for
    epsilon-prediction models and, for v-prediction models (not in the official code), the velocity
    sqrt(abar_t) tau - sqrt(1 - abar_t) x0 of the same (x_tilde, x0); the inversion then uses the
    noise the v-prediction implies."""
    network = model.policy_no_grad if invert_with == "policy" else model.reference

    def eps_model(z, inversion_timesteps, rows):
        prediction = network(z, inversion_timesteps, cond.map(lambda tensor: tensor[rows]))
        return model.epsilon(prediction, z, inversion_timesteps)

    result = ddim_invert(
        eps_model,
        latents,
        timesteps,
        model.alphas_cumprod,
        inversion_grid(steps, model.num_train_timesteps),
        renoise_steps=renoise_steps,
        eta=eta,
        generator=generator,
        exact_t=exact_t,
    )
    target = model.target(latents, result.target, timesteps)
    return PairLatents(result.latents, target, timesteps, cond, image_forwards=result.image_forwards)


def denoising_metrics(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None) -> dict[str, torch.Tensor]:
    """The mean squared denoising errors (= -2 x the scores) of winners and losers: ``diffusion/mse_w``,
    ``diffusion/mse_l`` of the policy and, given the reference's scores, ``diffusion/ref_mse_w/_l``."""
    metrics = {"diffusion/mse_w": (-2 * policy_chosen).detach().mean(), "diffusion/mse_l": (-2 * policy_rejected).detach().mean()}
    if ref_chosen is not None:
        metrics.update({"diffusion/ref_mse_w": (-2 * ref_chosen).mean(), "diffusion/ref_mse_l": (-2 * ref_rejected).mean()})
    return metrics
