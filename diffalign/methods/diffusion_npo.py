"""Diffusion-NPO, DPO-based (Wang et al., "Diffusion-NPO: Negative Preference Optimization for Better
Preference Aligned Generation of Diffusion Models", ICLR 2025, openreview.net/forum?id=iJi7nz5Cxc, no
arXiv id given by the authors; code ``G-U-N/Diffusion-NPO`` ``DPO-DPO-NPO/train_sd15.py``,
``train_sdxl.py``, ``run_sd15.sh``, ``run_sdxl.sh``; research/diffusion_methods_B.md §1.1-§1.6).

Trains a *negative* model: Diffusion-DPO with the preference reversed, so the model learns what people
disprefer. The human-dispreferred image fills the DPO winner slot::

    m = per-sample mean squared denoising error (policy), r = the same for the frozen reference
    Delta_theta = m(dispreferred) - m(preferred),  Delta_ref = r(dispreferred) - r(preferred)
    L = -log sigmoid(-(beta / 2) * (Delta_theta - Delta_ref))

on forward-noised latents with (t, eps) drawn once per pair and shared by both images, exactly as in
``diffusion-dpo``: the same code with ``chosen`` and ``rejected`` swapped. Through the objective core
this is ``dpo_loss`` on ``denoising_logps`` (= -m / 2), i.e. the Salesforce form above, and ``beta`` is
stored in that form. The official scripts differ in their beta convention (spec §1.2, §1.6):

- SD1.5 (``train_sd15.py``) uses ``-log sigmoid(beta_dpo * (Delta_ref - Delta_theta))`` with
  ``--beta_dpo 500`` and no 1/2: the Salesforce-form beta is 2 x 500 = **1000** (family ``sd``);
- SDXL (``train_sdxl.py``) uses the Salesforce form with ``--beta_dpo 2000``: beta = **2000** (``sdxl``).

``beta=None`` picks that value by family (the SD1.5 value also serves SD2.x, for which there is no
official run). Caption dropout is 0: both official scripts tokenize every caption unchanged (read in
the official code; the spec does not mention it).

Data: ``image_pairs`` with the usual meaning (chosen = the human-preferred image); the method does the
reversal. Ties (Pick-a-Pic ``label_0 = 0.5``) are dropped and counted by the format. The official code
keeps them in file order (jpg_0 in the winner slot): a tie carries no preference, and in file order
it would teach an arbitrary one (spec §1.6 recommends dropping them). The official data is Pick-a-Pic
v1 (``yuvalkirstain/pickapic_v1``, same schema as v2).

Official recipe (run scripts): a LoRA of rank 8 (alpha 8, Gaussian A, B = 0, on ``to_q/to_k/to_v/
to_out.0``: diffalign's LoRA defaults) trained on the *base* model, the reference being the base with
adapters disabled, i.e. ``--lora-rank 8 --learning-rate 5e-6 --lr-scheduler constant`` with AdamW-8bit
(``--optimizer adamw8bit``), weight decay 1e-2, grad clip 1.0, batch 64 (SD1.5) / 30 x 2 accumulation
(SDXL), fp16; the released checkpoints stop at 2000 steps. The trained LoRA is not a model to sample
from alone: it is the negative branch of NPO-guided classifier-free guidance (its weight offset added
to the positive model, used for the unconditional / negative-prompt prediction; ``diffalign.pipelines``,
spec §1.4).

Metrics: those of ``diffusion-dpo``, in the method's slots, so ``rewards/chosen``,
``rewards/accuracies``, ``diffusion/mse_w`` ... refer to the human-**dis**preferred image and
``rewards/rejected``, ``diffusion/mse_l`` to the preferred one. ``npo/original_label_accuracy`` is the
strict implicit accuracy with the *original* labels (the fraction of pairs whose human-preferred image
has the larger implicit reward); like ``rewards/accuracies`` it is 0 at initialisation (all ties) and
it should stay below 0.5 as the negative model trains (spec §1.6 (iii)).

The RL (SPO) and differentiable-reward (VADER) NPO variants (spec §1.3) are not implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP, DenoisingMethod, denoising_metrics, forward_noised_pairs, stack_pairs
from diffalign.objectives import dpo_loss
from diffalign.options import option

FAMILY_BETA = {"sd": 1000.0, "sdxl": 2000.0, "sd3": 1000.0, "flux": 1000.0}
"""beta of the official NPO run scripts per model family, in diffalign's (Salesforce) form: SD1.5's
``--beta_dpo 500`` has no 1/2 factor, hence 1000; SDXL's 2000 is already in this form (spec §1.2).
SD3.x and FLUX.1 have no official run: the SD1.5 value on the same -1/2 mean squared (velocity) error,
untuned."""


@dataclass
class DiffusionNPOConfig(MethodConfig):
    beta: Optional[float] = option("DPO temperature in the -log sigmoid(-(beta/2)(Delta_theta - Delta_ref)) form "
                                   "(default: the official value for the model family, 1000 SD1.x = the SD1.5 "
                                   "script's beta_dpo 500 without the 1/2, 2000 SDXL; SD3.x and FLUX.1: 1000, "
                                   "untuned)", default=None, gt=0)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP + " (the official NPO scripts: none)", default=0.0, ge=0, le=1)

    def beta_for(self, family: str) -> float:
        return FAMILY_BETA[family] if self.beta is None else self.beta

    def for_family(self, family):
        return {**super().for_family(family), "beta": self.beta_for(family)}


@register_method
class DiffusionNPO(DenoisingMethod):
    name = "diffusion-npo"
    summary = ("Diffusion-NPO: Diffusion-DPO with the preference reversed (chosen slot = dispreferred image): a "
               "negative model for NPO-guided CFG (pairs)")
    config_class = DiffusionNPOConfig
    data_format = "image_pairs"
    needs_reference = True
    negative_model = True

    def compute_loss(self, model, inputs, generator=None):
        # the reversal: the human-dispreferred image takes the DPO winner slot
        reversed_pairs = {**inputs, "chosen_latents": inputs["rejected_latents"], "rejected_latents": inputs["chosen_latents"]}
        latents, timesteps, cond = stack_pairs(model, reversed_pairs, generator)
        pairs = forward_noised_pairs(model, latents, timesteps, cond, generator)
        policy_chosen, policy_rejected = pairs.logps(model.policy)
        ref_chosen, ref_rejected = pairs.logps(model.reference)
        output = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=self.config.beta_for(model.family))
        output.metrics.update(denoising_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected))
        # implicit reward margin with the original labels: preferred (our rejected slot) minus dispreferred
        original_margin = (policy_rejected.float() - ref_rejected.float()) - (policy_chosen.float() - ref_chosen.float())
        output.metrics["npo/original_label_accuracy"] = (original_margin.detach() > 0).float().mean()
        return output
