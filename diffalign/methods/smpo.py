"""SmPO-Diffusion (Lu et al., ICML 2025, arXiv 2506.02698; code ``JaydenLyh/SmPO`` ``train.py``):
smoothed preferences from reward scores, on ReNoise-refined DDIM-inverted latents
(research/diffusion_methods_A.md §4).

Per pair, with both images' reward scores:

1. the winner is the **higher-scored** image (the reward-model winner, as the official code: human
   ties are dropped by the data reader, then PickScore decides), and
   ``kappa = gamma (2 p - 1)``, ``p = sigmoid((s_w - s_l) / (s_max - s_min))``
   (``diffalign.objectives.smoothing``; gamma = 10, PickScore-cosine s_min / s_max by default);
2. each image is inverted from its own x0 to the pair's t by the current policy (no grad), ReNoise
   K = 1 at every step of the diffusers-0.20 grid (``invert_pairs(renoise_steps=1)``)::

       e1 = eps(z, a_k);  e2 = eps(Inv(z, e1; a_k -> b_k), a_k);  z <- Inv(z, (e1 + e2) / 2; a_k -> b_k)
       tau = (x_tilde - sqrt(abar_t) x0) / sqrt(1 - abar_t)

3. ``L = -log sigmoid(-(beta / 2) kappa ((m_w - m_l) - (r_w - r_l)))`` with the errors m, r of the
   policy and the frozen reference against tau at (x_tilde, t): ``dpo_loss(..., sample_weight=kappa)``.

Equal scores give kappa = 0: the loss is ln 2 and the pair contributes no gradient.

Official defaults (``examples/sd15.sh``, ``examples/sdxl.sh``; spec §4.4): beta 2000 (SD1.x, from an
SFT'd UNet) / 5000 (SDXL) -- ``beta=None`` picks by family; gamma 10; grid N = 5 (SD1.x) / 10 (SDXL)
-- ``inversion_steps=None`` picks by family (spec Q17: the code's values, not the notes' 9);
conditional-only inversion; caption dropout 0.2. Training loop (``TrainConfig``): effective batch 1024,
lr 1e-8 with ``--scale-lr`` (= 1.024e-5), ``constant_with_warmup`` with 100 warm-up steps, 200 steps,
Adafactor for SDXL, fp16.

Open questions (spec §8), resolved as recommended: per-pair kappa, vectorised, scores as floats,
reward-model winner (Q13; the official code reads only the first pair's probability and needs a
per-device batch of 1; we do not); the code's -1/2 factor (Q21); and, as for InPO (``inpo`` module):
policy inverts (Q14), L(t) != t reproduced (Q15), 0.20 semantics (Q16), float32 (Q18), no clamping (Q19).
For a scorer other than raw PickScore cosines set ``score_min`` / ``score_max`` to its range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from diffalign.methods.base import register_method
from diffalign.methods.denoising import DenoisingMethod, denoising_metrics, invert_pairs, stack_pairs
from diffalign.methods.inpo import InversionDPOConfig
from diffalign.objectives import dpo_loss
from diffalign.objectives.smoothing import PICKSCORE_MAX, PICKSCORE_MIN, SMPO_GAMMA, order_by_score, smoothed_preference_weight
from diffalign.options import OptionError, option

SCORE_KEYS = ("chosen_scores", "rejected_scores")


@dataclass
class SmPOConfig(InversionDPOConfig):
    official_inversion_steps: ClassVar[dict[str, int]] = {"sd": 5, "sdxl": 10}

    gamma: float = option("scale of the smoothed weight kappa = gamma (2p - 1)", default=SMPO_GAMMA, gt=0)
    score_min: float = option("reward score that normalises to 0, below --score-max (the default is the raw PickScore "
                              "cosines' minimum; set both to your scorer's range)", default=PICKSCORE_MIN)
    score_max: float = option("reward score that normalises to 1, above --score-min (the default is the raw PickScore "
                              "cosines' maximum)", default=PICKSCORE_MAX)

    def __post_init__(self):
        super().__post_init__()
        if not self.score_max > self.score_min:
            raise OptionError("score_max", f"must be greater than --score-min ({self.score_min!r}), got {self.score_max!r}")


@register_method
class SmPO(DenoisingMethod):
    name = "smpo"
    summary = "SmPO: smoothed (reward-score) DPO on ReNoise-refined DDIM-inverted latents (scored pairs)"
    config_class = SmPOConfig
    data_format = "scored_image_pairs"
    needs_reference = True
    needs_ddpm_unet = "DDIM inversion of the training images on a DDPM alphas_cumprod schedule"

    def compute_loss(self, model, inputs, generator=None):
        config = self.config
        check_scores(inputs)
        # 1. the higher-scored image is the winner; kappa = gamma (2p - 1) per pair
        swap = order_by_score(inputs["chosen_scores"].float(), inputs["rejected_scores"].float())
        inputs = swap_pairs(inputs, swap)
        kappa = smoothed_preference_weight(inputs["chosen_scores"].float(), inputs["rejected_scores"].float(),
                                           config.score_min, config.score_max, config.gamma)
        # 2. (x_tilde, tau) of each image at its pair's t: ReNoise-refined inversion, no grad
        latents, timesteps, cond = stack_pairs(model, inputs, generator)
        pairs = invert_pairs(model, latents, timesteps, cond, generator, steps=config.inversion_steps_for(model.family),
                             renoise_steps=1, eta=0.0, invert_with=config.invert_with, exact_t=config.exact_t)
        # 3. Diffusion-DPO on those latents with beta scaled by kappa
        policy_chosen, policy_rejected = pairs.logps(model.policy)
        ref_chosen, ref_rejected = pairs.logps(model.reference)
        output = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=config.beta_for(model.family),
                          sample_weight=kappa)
        output.metrics.update(denoising_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected))
        output.metrics["inversion/image_forwards"] = torch.tensor(float(pairs.image_forwards))
        output.metrics["smpo/kappa"] = kappa.mean()
        output.metrics["smpo/swapped_to_score_winner"] = swap.float().mean()
        return output


def check_scores(inputs: dict) -> None:
    """KeyError naming the reward scores the batch lacks."""
    missing = [key for key in SCORE_KEYS if key not in inputs]
    if missing:
        raise KeyError(
            f"smpo needs both images' reward scores but the batch has no {', '.join(missing)}: use scored pairs "
            "(jsonl chosen_score / rejected_score from `diffalign score` / `diffalign pairs`, or ps_score_0 / ps_score_1 columns)"
        )


def swap_pairs(inputs: dict, swap: torch.Tensor) -> dict:
    """A copy of ``inputs`` with chosen and rejected latents and scores exchanged where ``swap`` (B,) is True."""
    swapped = dict(inputs)
    for chosen_key, rejected_key in (("chosen_latents", "rejected_latents"), SCORE_KEYS):
        chosen, rejected = inputs[chosen_key], inputs[rejected_key]
        mask = swap.to(chosen.device).reshape(-1, *[1] * (chosen.dim() - 1))
        swapped[chosen_key] = torch.where(mask, rejected, chosen)
        swapped[rejected_key] = torch.where(mask, chosen, rejected)
    return swapped
