r"""Unpaired objectives: KTO (Ethayarajh et al. 2024, arXiv 2402.01306, eq. 7-8) and APO-zero-unpaired
(D'Oosterlinck et al. 2024, arXiv 2408.06266), as TRL 1.16 ``trl/trainer/kto_trainer.py::_compute_loss``.

Each example i has a policy score l_i, a reference score r_i, u_i = l_i - r_i and a label
(desirable or not). With the reference point z0 (``kto_ref_point``):

    kto               desirable:   lambda_D * [1 - s(beta (u_i - z0))]
                      undesirable: lambda_U * [1 - s(beta (z0 - u_i))]
    apo_zero_unpaired desirable:   lambda_D * [1 - s(beta u_i)]
                      undesirable: lambda_U * s(beta u_i)

The loss is the mean over all examples of the micro-batch (TRL's nanmean over the concatenated
desirable and undesirable halves; a batch with one label only is fine).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from diffalign.objectives.output import ObjectiveOutput, as_float32, check_same_shape

UNPAIRED_LOSSES = ("kto", "apo_zero_unpaired")


def kto_ref_point(
    policy_mismatched_logps: torch.Tensor,
    ref_mismatched_logps: torch.Tensor,
    all_reduce_mean: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """KTO's z0 = max(0, mean_j(l(x_j, y'_j) - r(x_j, y'_j))), detached.

    y'_j are mismatched completions (TRL rotates the completions of a batch by one). The mean is
    taken across processes by ``all_reduce_mean`` (for example ``accelerator.gather(x).mean()``)
    before the clamp, as TRL does.
    """
    check_same_shape(policy_mismatched_logps=policy_mismatched_logps, ref_mismatched_logps=ref_mismatched_logps)
    policy, ref = as_float32(policy_mismatched_logps, ref_mismatched_logps)
    kl = (policy - ref).mean().detach()
    if all_reduce_mean is not None:
        kl = all_reduce_mean(kl)
    return kl.clamp(min=0)


def unpaired_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    *,
    loss_type: str = "kto",
    beta: float = 0.1,
    ref_point: Optional[torch.Tensor] = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> ObjectiveOutput:
    """KTO / APO-zero-unpaired on (N,) scores and a (N,) bool label; see the module docstring.

    ``ref_point`` is z0 for ``kto`` (required) and must be None for ``apo_zero_unpaired``.
    Metrics (TRL names): ``kl`` (z0), ``rewards/chosen|rejected`` (mean beta * u over desirable /
    undesirable examples, present only when there are any; ``metric_counts`` holds how many),
    ``rewards/margins`` (when both are; a training step recomputes it with ``unpaired_step_metrics``),
    ``logps/chosen|rejected`` (same subsets and counts). Like TRL's KTO there is no ``rewards/accuracies``.
    """
    if loss_type not in UNPAIRED_LOSSES:
        raise ValueError(f"unknown unpaired loss_type {loss_type!r}; expected one of {UNPAIRED_LOSSES}")
    if loss_type == "kto" and ref_point is None:
        raise ValueError("kto needs ref_point (kto_ref_point of mismatched completions)")
    if loss_type == "apo_zero_unpaired" and ref_point is not None:
        raise ValueError("apo_zero_unpaired has no reference point")
    check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    policy, ref = as_float32(policy_logps, ref_logps)
    desirable = desirable.bool()
    logratio = policy - ref.detach()
    if loss_type == "kto":
        z0 = ref_point.detach().float()
        desirable_losses = 1 - torch.sigmoid(beta * (logratio - z0))
        undesirable_losses = 1 - torch.sigmoid(beta * (z0 - logratio))
    else:
        z0 = torch.zeros((), device=policy.device)
        desirable_losses = 1 - torch.sigmoid(beta * logratio)
        undesirable_losses = torch.sigmoid(beta * logratio)
    losses = torch.where(desirable, desirable_weight * desirable_losses, undesirable_weight * undesirable_losses)

    rewards = beta * logratio.detach()
    metrics, counts = {"kl": z0.reshape(())}, {}
    for key, mask in (("chosen", desirable), ("rejected", ~desirable)):
        if mask.any():
            metrics[f"rewards/{key}"] = rewards[mask].mean()
            metrics[f"logps/{key}"] = policy.detach()[mask].mean()
            counts[f"rewards/{key}"] = counts[f"logps/{key}"] = mask.sum()
    if desirable.any() and (~desirable).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return ObjectiveOutput(loss=losses.mean(), losses=losses, metrics=metrics, metric_counts=counts)


def unpaired_step_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``rewards/margins`` of a whole optimiser step from its reduced metrics: the step's
    ``rewards/chosen`` minus its ``rewards/rejected`` (each the mean over all the step's desirable /
    undesirable examples), as TRL's ``KTOTrainer.log``; left out when either is."""
    metrics = {key: value for key, value in metrics.items() if key != "rewards/margins"}
    if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics
