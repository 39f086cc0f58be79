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
from diffalign.methods.denoising import PairwiseDenoisingMethod, reference_metrics
from diffalign.objectives import dpo_loss
from diffalign.options import option


CAPTION_DROPOUT_HELP = "probability of replacing a pair's caption by the empty one (classifier-free guidance)"


@dataclass
class DiffusionDPOConfig(MethodConfig):
    beta: float = option("DPO temperature on the denoising-error margin (official: 5000; the paper's SD1.5 runs 2000)",
                         default=5000.0, gt=0)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP, default=0.2, ge=0, le=1)


@register_method
class DiffusionDPO(PairwiseDenoisingMethod):
    name = "diffusion-dpo"
    summary = "Diffusion-DPO: sigmoid DPO on denoising errors against a frozen reference (pairs)"
    config_class = DiffusionDPOConfig
    needs_reference = True

    def objective(self, model, pair, policy_chosen, policy_rejected, inputs):
        ref_chosen, ref_rejected = pair.logps(model.reference(pair.noisy, pair.timesteps, pair.cond))
        output = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=self.beta_for(model),
                          sample_weight=self.sample_weight(inputs))
        output.metrics.update(reference_metrics(ref_chosen, ref_rejected))
        return output

    def beta_for(self, model) -> float:
        """beta for this model (InPO/SmPO pick the official value per model family)."""
        return self.config.beta

    def sample_weight(self, inputs):
        """Per-pair multiplier of beta (None = 1); SmPO's smoothed weight overrides this."""
        return None
