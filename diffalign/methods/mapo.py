"""MaPO: margin-aware preference optimisation, reference-free (Hong, Paul et al. 2024, arXiv 2406.06424;
code mapo-t2i/mapo, ``utils.py::compute_loss``).

    L = mean(m_w) - beta * mean(log sigmoid(margin_scale * (phi(m_w) - phi(m_l)))),  phi(m) = s m / (exp(s m) - 1)

with m the per-sample mean squared denoising error on forward-noised latents ((t, eps) shared per
pair) and s the link temperature. Defaults are the official code's: beta (lambda) 0.1, margin_scale
1000 (= T), s = 0.5, no caption dropout, lr 1e-5 constant in the README command
(research/diffusion_methods_A.md §3). No reference model: about 3/4 of Diffusion-DPO's compute per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffalign.diffusion import DENOISING_LOGP_SCALE
from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP, DenoisingMethod, denoising_metrics, forward_noised_pairs, stack_pairs
from diffalign.objectives import mapo_loss
from diffalign.options import option


@dataclass
class MaPOConfig(MethodConfig):
    beta: float = option("weight (lambda) of the margin term against the chosen-image MSE (0: SFT on the chosen image)",
                         default=0.1, ge=0)
    margin_scale: float = option("multiplier of the phi margin inside log sigmoid (official: 1000 = T)", default=1000.0,
                                 gt=0)
    link_temperature: float = option("temperature s of the link phi(m) = s m / (exp(s m) - 1) on the denoising error m "
                                     "(official code: 0.5)", default=0.5, gt=0)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP, default=0.0, ge=0, le=1)


@register_method
class MaPO(DenoisingMethod):
    name = "mapo"
    summary = "MaPO: reference-free margin-aware loss on denoising errors plus SFT on the chosen image (pairs)"
    config_class = MaPOConfig
    data_format = "image_pairs"
    needs_reference = False

    def compute_loss(self, model, inputs, generator=None):
        config = self.config
        latents, timesteps, cond = stack_pairs(model, inputs, generator)
        pairs = forward_noised_pairs(model, latents, timesteps, cond, generator)
        policy_chosen, policy_rejected = pairs.logps(model.policy)
        output = mapo_loss(policy_chosen, policy_rejected, beta=config.beta, margin_scale=config.margin_scale,
                           link_temperature=config.link_temperature, logp_scale=DENOISING_LOGP_SCALE)
        output.metrics.update(denoising_metrics(policy_chosen, policy_rejected))
        return output
