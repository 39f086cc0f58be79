"""TKTO, the KTO half of TPO (Text Preference Optimization: "Free Lunch Alignment of Text-to-Image
Diffusion Models without Preference Image Pairs", Cheng Xian, Li, Yang, Tao, Wan, Sigal, Liao, arXiv
2509.25771; research/diffusion_methods_B.md §4.1, §4.3, §4.6).

Every captioned image gives a desirable sample (x, true caption c_w) and an undesirable one (x, a
perturbed caption c_l), trained with Diffusion-KTO's objective (``diffusion_kto``)::

    g(x, c) = r(x_t, c) - m(x_t, c)     (reference minus policy mean squared denoising error)
    z = max(0, mean of g over the micro-batch's 2B samples, averaged across processes), no gradient
    L = lambda_D [1 - sigmoid(beta (g(x, c_w) - z))] + lambda_U [1 - sigmoid(beta (z - g(x, c_l)))]

averaged over the 2B samples (0.5 per sample at initialisation). ``diffusion-kto`` is the same trainer
on unpaired labelled images; only the data differs.

Reconstructed, not read: the official code (DSL-Lab/T2I-Free-Lunch-Alignment) could not be
retrieved. The loss is the spec's (§4.3), i.e. Diffusion-KTO's sign and reference point, with these
choices on its open questions:

- the reference point is Diffusion-KTO's (``bce_offset=none``: the batch's own g, matched captions
  included), not one estimated from g(x, roll(c)) as text KTO's mismatched pairs would suggest;
- both samples of an image share one noised latent (one t, one eps) and go through one
  concatenated policy forward and one reference forward, as in ``tdpo`` (``caption_pairs``):
  cost 1x Diffusion-DPO per image, and the two captions see the same x_t;
- one perturbed caption per image per step, drawn uniformly from its ``negative_prompts`` (as
  ``tdpo``, for the same reasons: constant cost, equal weight per image); the classes are 1:1;
- Diffusion-KTO's defaults (spec §4.4): beta 1000 on g, lambda_D = lambda_U = 1; caption dropout 0
  (the spec gives none for TPO; when set it replaces the true caption only).

Data: ``captioned_images``; an image without perturbed captions stops training with an error naming
its caption. Metrics: Diffusion-KTO's (``kl`` = z, ``rewards/chosen`` = the true captions' mean beta g,
``rewards/rejected`` = the perturbed ones', ``rewards/margins``, ``logps/chosen|rejected`` = mean -m)
and ``diffusion/mse_w`` (true caption), ``diffusion/mse_l`` (perturbed), ``diffusion/ref_mse_*``,
``tpo/identical_captions`` (the fraction of images whose perturbed caption conditions the model
exactly as the true one: such a sample pair contributes 1 - sigmoid(a) + 1 - sigmoid(-a) = 1 whatever
theta, with equal weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffalign.methods.base import register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP, caption_pairs, denoising_metrics, identical_captions
from diffalign.methods.diffusion_kto import DenoisingKTOMethod, KTOConfig, denoising_kto_loss
from diffalign.options import option


@dataclass
class TKTOConfig(KTOConfig):
    caption_dropout: float = option(CAPTION_DROPOUT_HELP + " (the true caption only; TPO: none)", default=0.0, ge=0, le=1)


@register_method
class TKTO(DenoisingKTOMethod):
    name = "tkto"
    summary = "TKTO (TPO): KTO, each image desirable under its caption, undesirable under a perturbed one (captioned images)"
    config_class = TKTOConfig
    data_format = "captioned_images"

    def compute_loss(self, model, inputs, generator=None):
        pairs = caption_pairs(model, inputs, generator, self.name)
        policy_true, policy_perturbed = pairs.logps(model.policy)
        ref_true, ref_perturbed = pairs.logps(model.reference)
        desirable = torch.arange(2 * len(policy_true), device=policy_true.device) < len(policy_true)
        output = denoising_kto_loss(self.config, torch.cat([policy_true, policy_perturbed]),
                                    torch.cat([ref_true, ref_perturbed]), desirable)
        output.metrics.update(denoising_metrics(policy_true, policy_perturbed, ref_true, ref_perturbed))
        output.metrics["tpo/identical_captions"] = identical_captions(pairs.cond).float().mean()
        return output
