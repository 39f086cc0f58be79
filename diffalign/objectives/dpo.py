"""Sigmoid DPO (Rafailov et al. 2023, arXiv 2305.18290) and its diffusion form (Wallace et al. 2023).

    L = -log sigmoid(beta * ((pc - pr) - (rc - rr)))

with per-sample log-likelihood scores of the chosen / rejected samples under the policy (pc, pr) and
the reference (rc, rr). For text the scores are summed response token log-probs and beta = 0.1. For
diffusion the score is ``diffalign.diffusion.denoising_logps`` = -1/2 * per-sample mean squared
denoising error, and beta = 5000 reproduces ``SalesforceAIResearch/DiffusionDPO`` ``train.py``
(``scale_term = -0.5 * beta_dpo``) exactly; the diffusers SD1.5 port's beta = 2500 without the 1/2 is
the same objective (research/diffusion_methods_A.md §2.2, Q2).

This is ``pairwise_loss(loss_type="sigmoid")`` with a reference; the general function holds the
arithmetic.
"""

from __future__ import annotations

import torch

from diffalign.objectives.metrics import preference_metrics
from diffalign.objectives.output import ObjectiveOutput
from diffalign.objectives.pairwise import pairwise_loss

__all__ = ["dpo_loss", "preference_metrics"]


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    sample_weight: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """Sigmoid DPO on (B,) score tensors; returns the mean loss, per-pair losses and TRL metrics.

    ``sample_weight`` (B,) multiplies beta per pair before the sigmoid (SmPO's smoothed weight kappa,
    diffalign.objectives.smoothing); None means 1. At policy == reference the loss is ln 2 and
    dL/dpc = -beta/2 (dL/dm_w = +beta/4 for the diffusion error m = -2 * score).
    """
    scale = beta if sample_weight is None else beta * sample_weight.float()
    return pairwise_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, loss_type="sigmoid", beta=scale
    )
