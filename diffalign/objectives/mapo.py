"""MaPO, margin-aware preference optimisation without a reference (Hong, Paul et al. 2024,
arXiv 2406.06424; code ``mapo-t2i/mapo`` ``utils.py::compute_loss``).

With per-sample errors m = -logp / logp_scale (the mean squared denoising error when the scores come
from ``denoising_logps``, logp_scale = 1/2):

    phi(m) = s * m / (exp(s * m) - 1)          (s = link_temperature)
    L      = mean(m_w) - beta * mean(log sigmoid(margin_scale * (phi(m_w) - phi(m_l))))

The defaults (beta = 0.1, margin_scale = 1000 = num_train_timesteps, link_temperature = 0.5) are the
official code's constants, which produced the released checkpoints. The paper's v2 text uses another
family (link temperature beta in {8..1024}, weight 1/beta, no x1000): set link_temperature = beta,
margin_scale = 1 and beta = 1/beta to get it (research/diffusion_methods_A.md §3.4, Q10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffalign.objectives.metrics import preference_metrics
from diffalign.objectives.output import ObjectiveOutput, as_float32, check_same_shape

_SERIES_THRESHOLD = 1e-4


def bose_link(x: torch.Tensor) -> torch.Tensor:
    """x / (exp(x) - 1), continuous at 0 (value 1, slope -1/2).

    Near 0 the ratio is 0/0 in floating point, so |x| < 1e-4 uses the series 1 - x/2 + x^2/12 (spec Q11).
    """
    small = x.abs() < _SERIES_THRESHOLD
    safe_x = torch.where(small, torch.ones_like(x), x)
    exact = safe_x / torch.expm1(safe_x)
    series = 1.0 - x / 2.0 + x * x / 12.0
    return torch.where(small, series, exact)


def mapo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    margin_scale: float = 1000.0,
    link_temperature: float = 0.5,
    logp_scale: float = 0.5,
) -> ObjectiveOutput:
    """Reference-free MaPO on (B,) policy scores; see the module docstring for the equation.

    At m_w == m_l == m the loss is m + beta * ln 2.
    """
    check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    pc, pr = as_float32(policy_chosen_logps, policy_rejected_logps)
    error_chosen = -pc / logp_scale
    error_rejected = -pr / logp_scale
    score_chosen = bose_link(link_temperature * error_chosen)
    score_rejected = bose_link(link_temperature * error_rejected)
    margin_losses = -beta * F.logsigmoid(margin_scale * (score_chosen - score_rejected))
    losses = error_chosen + margin_losses
    metrics = preference_metrics(score_chosen, score_rejected)
    metrics["mapo/margin_loss"] = margin_losses.detach().mean()
    metrics["nll_loss"] = error_chosen.detach().mean()
    metrics["logps/chosen"] = pc.detach().mean()
    metrics["logps/rejected"] = pr.detach().mean()
    return ObjectiveOutput(loss=losses.mean(), losses=losses, metrics=metrics)
