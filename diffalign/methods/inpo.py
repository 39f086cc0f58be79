"""DDIM-InPO (Lu et al., CVPR 2025, arXiv 2503.18454; code ``JaydenLyh/InPO`` ``train.py``):
Diffusion-DPO on DDIM-inverted latents (research/diffusion_methods_A.md §5).

For each pair, with the timestep t shared and each image inverted from its own clean latent x0 by
the current policy (no grad) with ``diffalign.diffusion.inversion.ddim_invert`` (through
``diffalign.methods.denoising.invert_pairs``)::

    x_tilde = Inv_{eta}(x0; t)   (N = 10 grid, one UNet call per step, + 0.1 sigma_k xi after each step)
    tau     = (x_tilde - sqrt(abar_t) x0) / sqrt(1 - abar_t)
    m_d = mean (eps_theta(x_tilde^d, t, c) - tau^d)^2,  r_d the same with the frozen reference
    L   = -log sigmoid(-(beta / 2) ((m_w - m_l) - (r_w - r_l)))

i.e. ``dpo_loss`` on ``denoising_logps`` with (x_t, eps) replaced by (x_tilde, tau). The theory (joint
reward over (x0, x_t), one-step DDIM as the generator, inversion picking x_t) is in spec §5.1.
The winner is the data's (human) winner; no smoothing.

Official defaults (``examples/sd15.sh``, ``examples/sdxl.sh``; spec §5.3) and how diffalign maps them:
beta 2000 (SD1.x, from an SFT'd UNet) / 5000 (SDXL) -- ``beta=None`` picks by family; eta 0.1; grid
N = 10 for both families; caption dropout 0.2. Training loop (``TrainConfig``): effective batch 1024
(8 GPUs x 1 x 128 accumulation), lr 1e-8 with ``--scale-lr`` (= 1.024e-5), ``constant_with_warmup``
with 200 warm-up steps, 400 steps, Adafactor for SDXL, fp16.

Open questions (spec §8), resolved as recommended: the current policy inverts (Q14; ``invert_with=
"reference"`` is offered), the level mismatch L(t) != t is reproduced (Q15; ``exact_t`` lands on t),
diffusers-0.20 inverse-scheduler semantics implemented in ``diffalign.diffusion.inversion``, not taken
from the library (Q16), the
inversion and tau in float32 with abar from float64 (Q18), no x0 clamping (Q19), eta = 0.1 (Q20).
The SFT initialisation of the SD1.5 launchers is not published (Q22): start from the base model or a
``diffalign train --method sft`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP, DenoisingMethod, denoising_metrics, invert_pairs, stack_pairs
from diffalign.objectives import dpo_loss
from diffalign.options import option

FAMILY_BETA = {"sd": 2000.0, "sdxl": 5000.0}
"""beta of the official SmPO / InPO launchers per model family (spec §4.4, §5.3, Q4)."""

INVERTERS = ("policy", "reference")


@dataclass
class InversionDPOConfig(MethodConfig):
    """The options InPO and SmPO share. ``beta`` / ``inversion_steps`` None: the official value for the
    model family (``beta_for``, ``inversion_steps_for``; each method's config sets its grid sizes)."""

    official_inversion_steps: ClassVar[dict[str, int]]

    beta: Optional[float] = option("DPO temperature (default: the official value for the model family, 2000 SD1.x / "
                                   "5000 SDXL)", default=None, gt=0)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP, default=0.2, ge=0, le=1)
    inversion_steps: Optional[int] = option("DDIM inversion grid size N, at most the model's training timesteps "
                                            "(default: the official value for the method and family)", default=None, ge=2)
    invert_with: str = option("network that inverts the images (no grad)", default="policy", choices=INVERTERS)
    exact_t: bool = option("land the inversion exactly on the sampled t (the official code stops at the grid level "
                           "L(t) != t)", default=False)

    def beta_for(self, family: str) -> float:
        return FAMILY_BETA[family] if self.beta is None else self.beta

    def inversion_steps_for(self, family: str) -> int:
        return self.official_inversion_steps[family] if self.inversion_steps is None else self.inversion_steps

    def for_family(self, family):
        return {**super().for_family(family), "beta": self.beta_for(family), "inversion_steps": self.inversion_steps_for(family)}


@dataclass
class InPOConfig(InversionDPOConfig):
    official_inversion_steps: ClassVar[dict[str, int]] = {"sd": 10, "sdxl": 10}

    eta: float = option("noise scale added after each inversion step, in units of the DDIM posterior std "
                        "(0: deterministic inversion)", default=0.1, ge=0)


@register_method
class InPO(DenoisingMethod):
    name = "inpo"
    summary = "DDIM-InPO: Diffusion-DPO on latents from the policy's noisy DDIM inversion (pairs)"
    config_class = InPOConfig
    data_format = "image_pairs"
    needs_reference = True
    needs_ddpm_unet = "DDIM inversion of the training images on a DDPM alphas_cumprod schedule"

    def compute_loss(self, model, inputs, generator=None):
        config = self.config
        # (x_tilde, tau) of each image at its pair's t: DDIM inversion with eta noise, no grad
        latents, timesteps, cond = stack_pairs(model, inputs, generator)
        pairs = invert_pairs(model, latents, timesteps, cond, generator, steps=config.inversion_steps_for(model.family),
                             renoise_steps=0, eta=config.eta, invert_with=config.invert_with, exact_t=config.exact_t)
        # Diffusion-DPO on those latents
        policy_chosen, policy_rejected = pairs.logps(model.policy)
        ref_chosen, ref_rejected = pairs.logps(model.reference)
        output = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=config.beta_for(model.family))
        output.metrics.update(denoising_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected))
        output.metrics["inversion/image_forwards"] = torch.tensor(float(pairs.image_forwards))
        return output
