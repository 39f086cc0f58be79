"""TDPO, the DPO half of TPO (Text Preference Optimization: "Free Lunch Alignment of Text-to-Image
Diffusion Models without Preference Image Pairs", Cheng Xian, Li, Yang, Tao, Wan, Sigal, Liao, arXiv
2509.25771; research/diffusion_methods_B.md §4.1, §4.2, §4.4-§4.6).

No preference images: one image x is preferred under its true caption c_w over a perturbed caption
c_l (an LLM edit that makes the caption false for x). One noised latent x_t = sqrt(abar_t) z0 +
sqrt(1 - abar_t) eps is denoised under both captions::

    m_w = mse(eps_theta(x_t, t, c_w), eps),  m_l = mse(eps_theta(x_t, t, c_l), eps),  r_w, r_l: the reference
    L = -log sigmoid(-(beta / 2) * ((m_w - r_w) - (m_l - r_l)))

i.e. Diffusion-DPO with "winner" = (x, c_w) and "loser" = (x, c_l): the implicit reward
beta log p_theta(x|c) / p_ref(x|c) of the true caption is raised over the perturbed one's, which
sharpens caption sensitivity. Through the objective core this is ``dpo_loss`` on ``denoising_logps``
(= -m / 2) of a [true; perturbed] batch: one concatenated policy forward and one reference forward
of the same x_t (cost 1x Diffusion-DPO, half its VAE encodes).

Reconstructed, not read: the official code (DSL-Lab/T2I-Free-Lunch-Alignment) could not be
retrieved, so the loss is the spec's derivation from the paper's description and the Diffusion-DPO
code (spec §4.2), with these choices on its open questions (§4.6):

- **one perturbed caption per image per step**, drawn uniformly from the image's ``negative_prompts``
  with the step's generator (``caption_pairs``): the cost stays that of one DPO pair whatever the
  number of negatives, every image weighs the same whatever its count, and over the steps the loss is
  an unbiased estimate of the mean over its negatives. Using all k negatives would cost (1 + k) / 2
  DPO pairs per image and weight images by k;
- no per-timestep weighting (t uniform, as Diffusion-DPO); (t, eps) shared by both captions;
- beta = 5000 in the Salesforce form above (spec §4.4: the paper's beta is not known); the
  optimiser settings are the user's (the spec suggests Diffusion-DPO's or NPO's LoRA-8 at lr 5e-6);
  gradient clipping 1.0 is the loop's default, as the paper reportedly clips;
- caption dropout 0 (none in the spec). When set, it replaces the true caption by the empty one and
  keeps the perturbed caption, so the pair then prefers the unconditional prediction;
- no SFT term (the spec's optional ``+ gamma l_theta(x_t; c_w)``).

Data: ``captioned_images`` (jsonl ``{"image", "prompt", "negative_prompts": [...]}``); an image
without perturbed captions stops training with an error naming its caption (the format accepts such
rows for other uses, so the check is on the batch). A perturbed caption that conditions the model
exactly as the true one (the same text, or a difference past the text encoder's token limit) is a
tie: its logit is 0 for every theta, and the loss takes it as exactly 0 (loss ln 2, gradient exactly 0
rather than the rounding noise of two batch rows); ``tpo/identical_captions`` is the fraction of such
images.

Metrics: ``dpo_loss``'s (TRL names: ``rewards/chosen`` = the true caption's implicit reward,
``rewards/rejected`` = the perturbed caption's, ``rewards/accuracies``, ``rewards/margins``) and the
denoising errors ``diffusion/mse_w`` (true caption), ``diffusion/mse_l`` (perturbed), ``diffusion/ref_mse_*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import (CAPTION_DROPOUT_HELP, DenoisingMethod, caption_pairs, denoising_metrics,
                                        identical_captions)
from diffalign.diffusion import DENOISING_LOGP_SCALE
from diffalign.objectives import combine_losses, dpo_loss, sft_loss
from diffalign.options import option


@dataclass
class TDPOConfig(MethodConfig):
    beta: float = option("DPO temperature on the denoising-error margin between the true and the perturbed caption "
                         "(Diffusion-DPO's Salesforce form; the paper's value is unknown)", default=5000.0, gt=0)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP + " (the true caption only; TPO: none)", default=0.0, ge=0, le=1)
    sft_weight: float = option("weight gamma of an SFT term gamma x (true-caption denoising error) added to the loss "
                               "against DPO's 'both errors increase' drift (spec §4.2's suggestion; 0: pure TDPO)",
                               default=0.0, ge=0)


@register_method
class TDPO(DenoisingMethod):
    name = "tdpo"
    summary = "TDPO (TPO): Diffusion-DPO preferring each image under its caption to a perturbed one (captioned images)"
    config_class = TDPOConfig
    data_format = "captioned_images"
    needs_reference = True

    def compute_loss(self, model, inputs, generator=None):
        pairs = caption_pairs(model, inputs, generator, self.name)
        policy_true, policy_perturbed = pairs.logps(model.policy)
        ref_true, ref_perturbed = pairs.logps(model.reference)
        ties = identical_captions(pairs.cond)  # the perturbed score replaced by the true one: logit 0, no gradient
        policy_perturbed = torch.where(ties, policy_true, policy_perturbed)
        ref_perturbed = torch.where(ties, ref_true, ref_perturbed)
        output = dpo_loss(policy_true, policy_perturbed, ref_true, ref_perturbed, beta=self.config.beta)
        if self.config.sft_weight:
            sft = sft_loss(policy_true, logp_scale=DENOISING_LOGP_SCALE)
            output = combine_losses([("tdpo", output, 1.0), ("sft", sft, self.config.sft_weight)])
        output.metrics.update(denoising_metrics(policy_true, policy_perturbed, ref_true, ref_perturbed))
        output.metrics["tpo/identical_captions"] = ties.float().mean()
        return output
