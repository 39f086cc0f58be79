"""SmPO's smoothed preference: a per-pair weight kappa from two reward scores (Lu et al., ICML 2025,
arXiv 2506.02698; code ``JaydenLyh/SmPO`` ``train.py``; research/diffusion_methods_A.md §4.1).

With reward scores s_w >= s_l of the winner and the loser, min-max normalised with global constants,
``r' = (s - s_min) / (s_max - s_min)``, the smoothed preference probability and weight are

    p     = exp(r'_w) / (exp(r'_w) + exp(r'_l)) = sigmoid((s_w - s_l) / (s_max - s_min))
    kappa = gamma * (2 p - 1) = gamma * tanh((r'_w - r'_l) / 2)            (gamma = 10)

In the paper's notation p = alpha / gamma and kappa = 2 alpha - gamma: the winner's and loser's
likelihoods are mixed geometrically, which multiplies the DPO implicit-reward margin by kappa.
kappa multiplies beta inside any pairwise loss (``dpo_loss(..., sample_weight=kappa)``), so

* equal scores give p = 1/2, kappa = 0: the loss is the constant ln 2 and its gradient is exactly 0;
* the winner being the higher-scored image, p is in [1/2, sigmoid(1)] and kappa in [0, 10 tanh(1/2)]
  = [0, 4.6211716] whenever the scores lie inside [s_min, s_max].

p depends on the scores only through (s_w - s_l) / (s_max - s_min): the normalisation constants act
as a temperature. The defaults are the constants hard-coded in SmPO's ``train.py`` for raw PickScore
cosines (text-image cosine without ``logit_scale``: PickScore 22.5 is 0.225); a scorer on another
scale (HPSv2, the toy judge, PickScore x 100) needs its own ``score_min`` / ``score_max``, for example
the min and max over the training pairs' scores.

Resolutions of spec Q13: kappa is computed per pair, vectorised (the official code reads the first
pair only and needs a per-device batch of 1), scores are plain floats, and the winner is the
higher-scored image. Keeping a data-given winner with the signed kappa = gamma (2 p - 1) computed from
(chosen, rejected) scores is algebraically the same loss (swapping winner and loser flips both the
margin's and kappa's sign), so no separate option exists for it.
"""

from __future__ import annotations

import torch

PICKSCORE_MIN = 0.11543526500463486
"""s_min of SmPO's ``train.py`` (raw PickScore cosine over Pick-a-Pic v2)."""
PICKSCORE_MAX = 0.28201571106910706
"""s_max of SmPO's ``train.py``."""
SMPO_GAMMA = 10.0
"""gamma of SmPO's ``train.py`` (the paper's ablation optimum)."""


def smoothed_preference(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    score_min: float = PICKSCORE_MIN,
    score_max: float = PICKSCORE_MAX,
) -> torch.Tensor:
    """p = softmax over the pair of the min-max normalised scores, taken at the chosen one, float32 (B,).

    Computed as sigmoid((s_c - s_r) / (s_max - s_min)) in float64, the same value without exp overflow."""
    return _preference64(chosen_scores, rejected_scores, score_min, score_max).float()


def _preference64(chosen_scores, rejected_scores, score_min, score_max) -> torch.Tensor:
    if not score_max > score_min:
        raise ValueError(f"score_max must exceed score_min, got score_min={score_min}, score_max={score_max}")
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.dim() != 1:
        raise ValueError(
            f"chosen_scores and rejected_scores must both have shape (B,), got "
            f"{tuple(chosen_scores.shape)} and {tuple(rejected_scores.shape)}"
        )
    difference = chosen_scores.double() - rejected_scores.double()
    return torch.sigmoid(difference / (score_max - score_min))


def smoothing_weight(probability: torch.Tensor, gamma: float = SMPO_GAMMA) -> torch.Tensor:
    """kappa = gamma * (2 p - 1), the per-pair multiplier of beta (``sample_weight`` of pairwise losses)."""
    return gamma * (2 * probability - 1)


def smoothed_preference_weight(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    score_min: float = PICKSCORE_MIN,
    score_max: float = PICKSCORE_MAX,
    gamma: float = SMPO_GAMMA,
) -> torch.Tensor:
    """kappa (float32, (B,)) of each (chosen, rejected) pair from their reward scores, computed in float64.

    Negative where the rejected image scored higher; ``order_by_score`` first makes every kappa >= 0."""
    probability = _preference64(chosen_scores, rejected_scores, score_min, score_max)
    return smoothing_weight(probability, gamma).float()


def order_by_score(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Bool (B,): True where the pair must be swapped so that the higher-scored image is the winner
    (SmPO: the reward-model winner, not the human one). Equal scores are left as they are (kappa = 0)."""
    return rejected_scores > chosen_scores
