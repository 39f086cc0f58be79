"""Supervised fine-tuning on the chosen samples only: the negative log-likelihood proxy.

    L = mean_i(-logp_i / logp_scale)                      (default)
    L = -sum_i logp_i / sum_i n_i                         (``lengths`` given)

For diffusion (``denoising_logps``, logp_scale = 1/2) the default is the plain epsilon-MSE of the
official Diffusion-DPO ``--sft`` branch, mean over batch and latent elements
(research/diffusion_methods_A.md §2.5). For text with per-token mean log-probs and logp_scale = 1 it
is the per-sequence mean NLL. With summed log-probs and their completion ``lengths`` it is the
token-mean NLL over every chosen token of the micro-batch, TRL 1.16's ``loss_type="sft"`` term (RPO,
MPO) and ``CPOTrainer``'s ``nll_loss``; the per-sample ``losses`` are then that scalar broadcast.
"""

from __future__ import annotations

from typing import Optional

import torch

from diffalign.objectives.output import ObjectiveOutput, as_float32, check_same_shape


def sft_loss(
    policy_chosen_logps: torch.Tensor, logp_scale: float = 1.0, lengths: Optional[torch.Tensor] = None
) -> ObjectiveOutput:
    check_same_shape(policy_chosen_logps=policy_chosen_logps)
    (pc,) = as_float32(policy_chosen_logps)
    if lengths is None:
        losses = -pc / logp_scale
        loss = losses.mean()
    else:
        check_same_shape(policy_chosen_logps=policy_chosen_logps, lengths=lengths)
        loss = -pc.sum() / (logp_scale * lengths.float().sum().clamp(min=1.0))
        losses = loss.expand(pc.shape[0])
    metrics = {"nll_loss": loss.detach(), "logps/chosen": pc.detach().mean()}
    return ObjectiveOutput(loss=loss, losses=losses, metrics=metrics)
