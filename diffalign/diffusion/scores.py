"""The per-sample log-likelihood proxy of a denoising prediction.

    s = -1/2 * mean over all non-batch elements of (model_pred - target)^2

computed in float32. It is the single-timestep Gaussian log-likelihood of Diffusion-DPO's supplement
S4 up to constants; with it the objective core's ``dpo_loss`` at beta = 5000 is the official
``SalesforceAIResearch/DiffusionDPO`` loss (``scale_term = -0.5 * beta_dpo`` on mean-squared errors).
"""

from __future__ import annotations

import torch

DENOISING_LOGP_SCALE = 0.5
"""s = -DENOISING_LOGP_SCALE * error: objectives that need the error back (MaPO, SFT) take it as ``logp_scale``."""


def denoising_errors(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample over all non-batch dims, in float32, shape (B,)."""
    if model_pred.shape != target.shape:
        raise ValueError(f"model_pred has shape {tuple(model_pred.shape)} but target has shape {tuple(target.shape)}")
    squared = (model_pred.float() - target.float()) ** 2
    return squared.reshape(squared.shape[0], -1).mean(dim=1)


def denoising_logps(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-1/2 * per-sample mean squared error, float32, shape (B,)."""
    return -DENOISING_LOGP_SCALE * denoising_errors(model_pred, target)


def pseudo_huber_errors(prediction: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """Per-sample mean over all non-batch elements of the pseudo-Huber loss sqrt(d^2 + delta^2) - delta,
    d = prediction - target, in float32, shape (B,): ~ d^2 / (2 delta) for |d| << delta and ~ |d| beyond
    (Charbonnier; the consistency-model loss Self-NPO uses with delta = 1e-3)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction has shape {tuple(prediction.shape)} but target has shape {tuple(target.shape)}")
    difference = prediction.float() - target.float()
    errors = torch.sqrt(difference**2 + delta**2) - delta
    return errors.reshape(errors.shape[0], -1).mean(dim=1)
