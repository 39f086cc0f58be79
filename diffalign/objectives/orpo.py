r"""ORPO's odds-ratio term (Hong, Lee, Thorne 2024, arXiv 2403.07691, eq. 6-7; TRL 1.16
``trl/experimental/orpo/orpo_trainer.py::odds_ratio_loss``).

With the length-averaged log-probs a_w, a_l (P = exp(a), the mean per-token probability) the log odds
ratio and the per-pair term are

    LOR = (a_w - a_l) - [log(1 - exp(a_w)) - log(1 - exp(a_l))]
    L   = -lambda * log sigmoid(LOR)

ORPO's full objective adds the chosen NLL over prompt and completion tokens (``sft_loss`` with
lengths, combined by the text method). TRL calls lambda ``beta`` (default 0.1). Text only: the
diffusion score is not a probability in (0, 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffalign.objectives.metrics import preference_metrics
from diffalign.objectives.output import ObjectiveOutput, as_float32, check_same_shape

_LOG_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, switching at -ln 2 to avoid cancellation (Maechler 2012)."""
    return torch.where(x < _LOG_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def odds_ratio_loss(
    policy_chosen_mean_logps: torch.Tensor, policy_rejected_mean_logps: torch.Tensor, beta: float = 0.1
) -> ObjectiveOutput:
    """-beta * log sigmoid(LOR) per pair on (B,) per-token-mean log-probs; TRL ORPO metric names.

    Metrics: ``rewards/*`` = beta * a, ``log_odds_ratio`` = mean log sigmoid(LOR),
    ``log_odds_chosen`` = mean LOR.
    """
    check_same_shape(policy_chosen_mean_logps=policy_chosen_mean_logps, policy_rejected_mean_logps=policy_rejected_mean_logps)
    aw, al = as_float32(policy_chosen_mean_logps, policy_rejected_mean_logps)
    log_odds = (aw - al) - (log1mexp(aw) - log1mexp(al))
    log_sigmoid = F.logsigmoid(log_odds)
    losses = -beta * log_sigmoid
    metrics = preference_metrics(beta * aw, beta * al)
    metrics["log_odds_ratio"] = log_sigmoid.detach().mean()
    metrics["log_odds_chosen"] = log_odds.detach().mean()
    return ObjectiveOutput(loss=losses.mean(), losses=losses, metrics=metrics)
