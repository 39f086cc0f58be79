"""Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908; code SalesforceAIResearch/DiffusionDPO).

    m = per-sample mean squared denoising error (policy), r = the same for the frozen reference
    L = -log sigmoid(-(beta / 2) * ((m_w - m_l) - (r_w - r_l)))

on forward-noised latents with (t, eps) shared within each pair. Through the objective core this is
``dpo_loss`` on ``denoising_logps`` (= -m / 2): beta = 5000 is the official launchers' value for
SD1.5 and SDXL (the diffusers SD1.5 port's 2500 without the 1/2 is the same objective). The paper's
SD1.5 runs use 2000 (spec Q4). Caption dropout 0.2 is the official trainer's default (spec Q5).
Official schedule: lr 1e-8 x effective batch (``--scale-lr``), 25% warm-up, grad clip 1.0 (spec Q3).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP, DenoisingMethod, denoising_metrics, forward_noised_pairs, stack_pairs
from diffalign.objectives import dpo_loss
from diffalign.options import option


@dataclass
class DiffusionDPOConfig(MethodConfig):
    beta: float = option("DPO temperature on the denoising-error margin (official: 5000; the paper's SD1.5 runs 2000)",
                         default=5000.0, gt=0)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP, default=0.2, ge=0, le=1)


@register_method
class DiffusionDPO(DenoisingMethod):
    name = "diffusion-dpo"
    summary = "Diffusion-DPO: sigmoid DPO on denoising errors against a frozen reference (pairs)"
    config_class = DiffusionDPOConfig
    data_format = "image_pairs"
    needs_reference = True

    def compute_loss(self, model, inputs, generator=None):
        latents, timesteps, cond = stack_pairs(model, inputs, generator)
        pairs = forward_noised_pairs(model, latents, timesteps, cond, generator)
        policy_chosen, policy_rejected = pairs.logps(model.policy)
        ref_chosen, ref_rejected = pairs.logps(model.reference)
        output = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=self.config.beta)
        output.metrics.update(denoising_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected))
        return output
