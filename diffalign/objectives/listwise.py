r"""LiPO-lambda, listwise preference optimisation with LambdaLoss weights (Liu et al. 2024,
arXiv 2402.01878, §4; LambdaLoss: Wang et al. 2018).

For one prompt with K responses, graded labels psi_i (higher is better) and scores
s_i = beta * (l_i - r_i):

    L = sum_{i, j: psi_i > psi_j} Delta_ij * [-log sigmoid(s_i - s_j)]
    Delta_ij = |G_i - G_j| * |1 / D(tau_i) - 1 / D(tau_j)|,  G = 2^psi - 1,  D(tau) = log2(1 + tau)

tau_i is the 1-based rank of item i under the current scores s (descending; ties broken by list
index, a stable sort). Delta is a constant (no gradient through the ranks). The batch loss is the mean
of L over prompts. For K = 2 it is DPO with the pair weight 1 - 1/log2(3). The labels psi come with the
data (human ranks or reward-model scores); their construction is not part of the loss.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from diffalign.objectives.output import ObjectiveOutput, as_float32


def lambda_weights(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Delta_ij of (B, K) scores and labels, zero for pairs that are not (valid, valid, psi_i > psi_j)."""
    masked = scores.detach().masked_fill(~valid, float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    gain = torch.pow(2.0, labels) - 1
    inverse_discount = 1.0 / torch.log2(1.0 + ranks.float())
    weights = (gain[:, :, None] - gain[:, None, :]).abs() * (inverse_discount[:, :, None] - inverse_discount[:, None, :]).abs()
    return weights * _ordered_pairs(labels, valid)


def _ordered_pairs(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    both_valid = valid[:, :, None] & valid[:, None, :]
    return ((labels[:, :, None] > labels[:, None, :]) & both_valid).float()


def lipo_lambda_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    *,
    beta: float = 0.1,
) -> ObjectiveOutput:
    """LiPO-lambda on (B, K) summed log-probs and labels; ``valid`` (B, K) masks padded list slots.

    Metrics: ``rewards/accuracies`` and ``rewards/margins`` over the ordered valid pairs
    (s_i > s_j, mean s_i - s_j); ``rewards/chosen`` / ``rewards/rejected`` are the mean s of the
    top- / bottom-label items of each list.
    """
    if policy_logps.dim() != 2 or policy_logps.shape != ref_logps.shape or policy_logps.shape != labels.shape:
        raise ValueError(
            f"policy_logps, ref_logps and labels must share a (B, K) shape, got "
            f"{tuple(policy_logps.shape)}, {tuple(ref_logps.shape)}, {tuple(labels.shape)}"
        )
    valid = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid.bool()
    policy, ref, labels = as_float32(policy_logps, ref_logps, labels)
    scores = beta * (policy - ref.detach())
    weights = lambda_weights(scores, labels, valid)
    differences = scores[:, :, None] - scores[:, None, :]
    losses = (weights * F.softplus(-differences)).sum(dim=(1, 2))

    pairs = _ordered_pairs(labels, valid)
    n_pairs = pairs.sum().clamp(min=1.0)
    detached = differences.detach()
    top = valid & (labels == labels.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True))
    bottom = valid & (labels == labels.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True))
    metrics = {
        "rewards/chosen": scores.detach()[top].mean(),
        "rewards/rejected": scores.detach()[bottom].mean(),
        "rewards/accuracies": ((detached > 0).float() * pairs).sum() / n_pairs,
        "rewards/margins": (detached * pairs).sum() / n_pairs,
        "logps/chosen": policy.detach()[top].mean(),
        "logps/rejected": policy.detach()[bottom].mean(),
    }
    return ObjectiveOutput(loss=losses.mean(), losses=losses, metrics=metrics)
