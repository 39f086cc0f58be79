"""Diffusion-KTO (Li, Kallidromitis, Gokul, Kato, Kozuka, "Aligning Diffusion Models by Optimizing Human
Utility", arXiv 2404.04465; code jacklishufan/diffusion-kto ``train_kto_sd_v1.5.py``, ``exps/example.sh``;
research/diffusion_methods_B.md §4.3), and the KTO objective on denoising errors that TKTO (``tkto``)
shares with it.

Unpaired images, each with its prompt and a desirable / undesirable label. With m and r the
per-sample mean squared denoising errors of the policy and the frozen reference at (x_t, t, c)::

    g = r - m                        (the official code's policy_KL_logps - reference_KL_logps, logps = -mse)
    z = max(0, mean of g over the micro-batch, averaged across processes), no gradient
    desirable:   lambda_D [1 - sigmoid(beta (g - z))]
    undesirable: lambda_U [1 - sigmoid(beta (z - g))]
    L = the mean over the micro-batch

Through the objective core this is ``unpaired_loss(loss_type="kto")`` on the scores -m (=
``denoising_logps`` / ``DENOISING_LOGP_SCALE``, so that beta is the official ``--beta_dpo``) with the
reference point ``kto_ref_point`` of the *same* samples (the official code's sign and reference point,
the spec's ``bce_offset=none``; text KTO estimates z from mismatched completions instead), all-reduced
as ``text-kto`` does it. At initialisation g = z = 0 and every sample's loss is 0.5. A desirable sample
pulls its error below the reference's, an undesirable one pushes it above.

Defaults (official ``exps/example.sh`` and argument defaults): beta 1000, lambda_D = lambda_U = 1,
caption dropout 0.2 (``--proportion_empty_prompts``), one timestep and one noise per image (nothing
shared), t uniform. Official recipe: full-UNet fine-tune with a frozen copy as reference (the script
passes no ``--use_lora``), i.e. ``--learning-rate 1e-7 --lr-scheduler constant_with_warmup
--lr-warmup-steps 200 --max-steps 20000``, effective batch 2048 (2 per GPU x 256 accumulation x 4
GPUs), AdamW-8bit, weight decay 1e-2, grad clip 1.0, fp16, SD1.5 at 512 px.

Differences from the official trainer: its sampler draws desirable images with probability 0.8
(``--positive_ratio``); the shared loop samples rows uniformly, so the class ratio is the data's
(1:1 from preference pairs); reweight with ``--desirable-weight`` / ``--undesirable-weight`` (the KTO
rule lambda_D n_D / (lambda_U n_U) in [1, 4/3]). Its data is Pick-a-Pic with per-image labels
aggregated over all of an image's comparisons (``jacklishufan/pick-a-pick-kto-processed``; images that
both won and lost count as desirable by default): write those labels as a ``labelled_images`` jsonl to
reproduce it. Given Pick-a-Pic pairs instead, ``labelled_images`` makes each pair's winner desirable and
its loser undesirable (ties dropped and counted).

Metrics (TRL's KTO names): ``kl`` (z), ``rewards/chosen`` / ``rewards/rejected`` (mean beta g over the
step's desirable / undesirable samples, count-weighted across micro-batches and processes),
``rewards/margins`` (their difference, per step), ``logps/chosen`` / ``logps/rejected`` (mean -m).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffalign.diffusion import DENOISING_LOGP_SCALE, denoising_logps
from diffalign.diffusion.noising import sample_noise
from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP, DenoisingMethod, training_timesteps
from diffalign.methods.text_kto import _all_reduce_mean
from diffalign.objectives import ObjectiveOutput, kto_ref_point, unpaired_loss, unpaired_step_metrics
from diffalign.options import option


@dataclass
class KTOConfig(MethodConfig):
    """The KTO options of ``diffusion-kto`` and ``tkto``."""

    beta: float = option("KTO temperature on g = reference error - policy error (Diffusion-KTO's --beta_dpo)",
                         default=1000.0, gt=0)
    desirable_weight: float = option("weight lambda_D of the desirable samples' losses", default=1.0, gt=0)
    undesirable_weight: float = option("weight lambda_U of the undesirable samples' losses", default=1.0, gt=0)


@dataclass
class DiffusionKTOConfig(KTOConfig):
    caption_dropout: float = option(CAPTION_DROPOUT_HELP + " (official: 0.2)", default=0.2, ge=0, le=1)


def denoising_kto_loss(config: KTOConfig, policy_logps: torch.Tensor, ref_logps: torch.Tensor,
                       desirable: torch.Tensor) -> ObjectiveOutput:
    """Diffusion-KTO's loss (module docstring) on (N,) ``denoising_logps`` of the policy and the
    reference and a (N,) bool label; the reference point is all-reduced across processes."""
    policy, ref = policy_logps / DENOISING_LOGP_SCALE, ref_logps / DENOISING_LOGP_SCALE  # -mse: the official scale
    ref_point = kto_ref_point(policy, ref, all_reduce_mean=_all_reduce_mean)
    return unpaired_loss(policy, ref, desirable, beta=config.beta, ref_point=ref_point,
                         desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight)


class DenoisingKTOMethod(DenoisingMethod):
    """Base of ``diffusion-kto`` and ``tkto``: a step's margins are its chosen minus rejected means, as TRL."""

    needs_reference = True

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return unpaired_step_metrics(metrics)


@register_method
class DiffusionKTO(DenoisingKTOMethod):
    name = "diffusion-kto"
    summary = "Diffusion-KTO: KTO on denoising errors of unpaired desirable/undesirable images (labelled images)"
    config_class = DiffusionKTOConfig
    data_format = "labelled_images"

    def compute_loss(self, model, inputs, generator=None):
        latents = inputs["image_latents"]
        timesteps = training_timesteps(model, latents.shape[0], generator, latents.device)
        noise = sample_noise(tuple(latents.shape), generator, latents.device, latents.dtype)
        noisy, target = model.add_noise(latents, noise, timesteps), model.target(latents, noise, timesteps)
        policy = denoising_logps(model.policy(noisy, timesteps, inputs["cond"]), target)
        ref = denoising_logps(model.reference(noisy, timesteps, inputs["cond"]), target)
        desirable = torch.as_tensor(inputs["label"], dtype=torch.bool, device=policy.device)
        return denoising_kto_loss(self.config, policy, ref, desirable)
