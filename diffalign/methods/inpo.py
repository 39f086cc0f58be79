"""DDIM-InPO (Lu et al., CVPR 2025, arXiv 2503.18454; code ``JaydenLyh/InPO`` ``train.py``):
Diffusion-DPO on DDIM-inverted latents (research/diffusion_methods_A.md §5).

For each pair, with the timestep t shared and each image inverted from its own clean latent x0 by
the current policy (no grad) with ``diffalign.diffusion.inversion.ddim_invert``::

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
diffusers-0.20 inverse-scheduler semantics implemented here, not taken from the library (Q16), the
inversion and tau in float32 with abar from float64 (Q18), no x0 clamping (Q19), eta = 0.1 (Q20).
The SFT initialisation of the SD1.5 launchers is not published (Q22): start from the base model or a
``diffalign train --method sft`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from diffalign.diffusion.inversion import ddim_invert, inversion_grid
from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.diffusion_dpo import CAPTION_DROPOUT_HELP, DiffusionDPO
from diffalign.options import option

FAMILY_BETA = {"sd": 2000.0, "sdxl": 5000.0}
"""beta of the official SmPO / InPO launchers per model family (spec §4.4, §5.3, Q4)."""

INVERTERS = ("policy", "reference")


@dataclass
class InversionDPOConfig(MethodConfig):
    """Shared by InPO and SmPO. ``beta`` / ``inversion_steps`` None: the official value for the family."""

    beta: Optional[float] = option("DPO temperature (default: the official value for the model family, 2000 SD1.x / "
                                   "5000 SDXL)", default=None, gt=0)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP, default=0.2, ge=0, le=1)
    inversion_steps: Optional[int] = option("DDIM inversion grid size N, at most the model's training timesteps "
                                            "(default: the official value for the method and family)", default=None, ge=2)
    invert_with: str = option("network that inverts the images (no grad)", default="policy", choices=INVERTERS)
    exact_t: bool = option("land the inversion exactly on the sampled t (the official code stops at the grid level "
                           "L(t) != t)", default=False)


@dataclass
class InPOConfig(InversionDPOConfig):
    eta: float = option("noise scale added after each inversion step, in units of the DDIM posterior std "
                        "(0: deterministic inversion)", default=0.1, ge=0)


class InversionDPO(DiffusionDPO):
    """Diffusion-DPO whose latent provider is the inversion of each image by the model itself.

    Subclasses set ``renoise_steps``, ``eta`` (through their config) and the family's grid size."""

    renoise_steps = 0
    family_inversion_steps = {"sd": 10, "sdxl": 10}

    def eta(self) -> float:
        return 0.0

    def beta_for(self, model) -> float:
        return self.config.beta if self.config.beta is not None else FAMILY_BETA[model.family]

    def inversion_steps_for(self, model) -> int:
        steps = self.config.inversion_steps
        return steps if steps is not None else self.family_inversion_steps[model.family]

    def noisy_latents_and_targets(self, model, latents, timesteps, cond, generator):
        """(x_tilde, regression target) of every image of the [winners; losers] batch at its pair's
        timestep: the target is tau for epsilon-prediction models and, for v-prediction models (not in
        the official code), the velocity sqrt(abar_t) tau - sqrt(1 - abar_t) x0 of the same (x_tilde, x0);
        the inversion then uses the noise the v-prediction implies."""
        network = model.policy_no_grad if self.config.invert_with == "policy" else model.reference

        def eps_model(z, inversion_timesteps, rows):
            prediction = network(z, inversion_timesteps, cond.map(lambda tensor: tensor[rows]))
            return model.epsilon(prediction, z, inversion_timesteps)

        result = ddim_invert(
            eps_model,
            latents,
            timesteps,
            model.alphas_cumprod,
            inversion_grid(self.inversion_steps_for(model), model.num_train_timesteps),
            renoise_steps=self.renoise_steps,
            eta=self.eta(),
            generator=generator,
            exact_t=self.config.exact_t,
        )
        self._inversion_forwards = result.image_forwards
        return result.latents, model.target(latents, result.target, timesteps)

    def objective(self, model, pair, policy_chosen, policy_rejected, inputs):
        output = super().objective(model, pair, policy_chosen, policy_rejected, inputs)
        output.metrics["inversion/image_forwards"] = torch.tensor(float(self._inversion_forwards))
        return output


@register_method
class InPO(InversionDPO):
    name = "inpo"
    summary = "DDIM-InPO: Diffusion-DPO on latents from the policy's noisy DDIM inversion (pairs)"
    config_class = InPOConfig

    def eta(self) -> float:
        return self.config.eta
