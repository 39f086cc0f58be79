"""MaPO: margin-aware preference optimisation, reference-free (Hong, Paul et al. 2024, arXiv 2406.06424;
code mapo-t2i/mapo, ``utils.py::compute_loss``).

    L = mean(m_w) - beta * mean(log sigmoid(margin_scale * (phi(m_w) - phi(m_l)))),  phi(m) = s m / (exp(s m) - 1)

with m the per-sample mean squared denoising error on forward-noised latents ((t, eps) shared per
pair). Defaults are the official code's: beta (lambda) 0.1, margin_scale 1000 (= T), s = 0.5, no
caption dropout, lr 1e-5 constant in the README command (research/diffusion_methods_A.md §3).
No reference model: about 3/4 of Diffusion-DPO's compute per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffalign.diffusion import DENOISING_LOGP_SCALE
from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import PairwiseDenoisingMethod
from diffalign.objectives import mapo_loss


@dataclass
class MaPOConfig(MethodConfig):
    beta: float = 0.1
    margin_scale: float = 1000.0
    snr: float = 0.5
    caption_dropout: float = 0.0


@register_method
class MaPO(PairwiseDenoisingMethod):
    name = "mapo"
    summary = "MaPO: reference-free margin-aware loss on denoising errors plus SFT on the chosen image (pairs)"
    config_class = MaPOConfig
    needs_reference = False

    def objective(self, model, pair, policy_chosen, policy_rejected, inputs):
        config = self.config
        return mapo_loss(policy_chosen, policy_rejected, beta=config.beta, margin_scale=config.margin_scale,
                         snr=config.snr, logp_scale=DENOISING_LOGP_SCALE)
