"""Group win-rate reward from any pairwise judge, and the group-normalised advantages of Pref-GRPO.

Pref-GRPO (Wang et al., arXiv 2508.20751; github.com/CodeGoat24/Pref-GRPO, read at 3e787f6, not reused)
replaces a pointwise reward by each image's win rate inside its group of G images of one prompt
(spec ``research/rewards_bench.md`` §2.5):

- every unordered pair (i < j) is judged once, image i shown first (``both_orders=True`` also judges
  (j, i) and averages the points, an addition of ours against position bias);
- the winner of a comparison gets 1 point, a tie or unparsable verdict 1/2 to each;
- win_rate_i = points_i / (G - 1).  The points of a group sum to C(G, 2), so the rates sum to G / 2.
  Pref-GRPO rounds the rates to 3 decimals; we keep full precision so that invariant holds exactly.

Advantages: A_i = (r_i - mean(r)) / (std(r) + 1e-8) per group with the unbiased (N - 1) std, then an
optional clip (Pref-GRPO clips at +-5). Several rewards are normalised separately, summed with
weights and then clipped (``combine_advantages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Sequence

import torch
from PIL import Image

from diffalign.rewards.base import PairwiseResult, PairwiseScorer, compare_both_orders, mean_preference

ADVANTAGE_EPS = 1e-8


@dataclass
class WinRates:
    """Win rates of one group.

    Attributes:
        win_rate: float32 (G,), points_i / (G - 1); sums to G / 2.
        points: float32 (G,), wins with ties counted 1/2 (averaged over both orders when requested).
        comparisons: number of judge calls (C(G, 2), doubled with both orders).
        unparsable: verdicts the judge could not give (counted as ties).
    """

    win_rate: torch.Tensor
    points: torch.Tensor
    comparisons: int
    unparsable: int


def group_win_rates(
    judge: PairwiseScorer, images: Sequence[Image.Image], prompt: str, both_orders: bool = False
) -> WinRates:
    """Round-robin win rates of ``images`` (one group, one prompt) under a pairwise ``judge``."""
    group_size = len(images)
    if group_size < 2:
        raise ValueError(f"a win-rate group needs at least 2 images, got {group_size}")
    pairs = list(combinations(range(group_size), 2))
    first = [images[i] for i, _ in pairs]
    second = [images[j] for _, j in pairs]
    prompts = [prompt] * len(pairs)
    if both_orders:
        preference, unparsable = compare_both_orders(judge, first, second, prompts, merge=_mean_over_orders)
    else:
        result = judge.compare(first, second, prompts)
        preference, unparsable = result.preference.float(), result.unparsable
    points_first = (1 + preference) / 2  # 1 for a win, 1/2 for a tie, 0 for a loss
    points = torch.zeros(group_size)
    index_first = torch.tensor([i for i, _ in pairs])
    index_second = torch.tensor([j for _, j in pairs])
    points.index_add_(0, index_first, points_first)
    points.index_add_(0, index_second, 1 - points_first)
    return WinRates(points / (group_size - 1), points, len(pairs) * (2 if both_orders else 1), unparsable)


def _mean_over_orders(ab: PairwiseResult, ba: PairwiseResult) -> tuple[torch.Tensor, int]:
    """The float preference for the first image averaged over both orders (a win and a tie: 1/2), and
    the unparsable verdicts of both."""
    return mean_preference(ab, ba), ab.unparsable + ba.unparsable


def normalized_advantages(rewards: torch.Tensor, clip: float | None = None, eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """(r - mean) / (std + eps) over the last dim (one group per row), unbiased std, optionally clipped.

    A group whose rewards are all equal gets advantages 0.
    """
    rewards = rewards.float()
    if rewards.shape[-1] < 2:
        raise ValueError("advantages need groups of at least 2 rewards")
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, unbiased=True)
    advantages = (rewards - mean) / (std + eps)
    return advantages.clamp(-clip, clip) if clip is not None else advantages


def combine_advantages(
    rewards: Mapping[str, torch.Tensor], weights: Mapping[str, float], clip: float | None = None
) -> torch.Tensor:
    """sum_k w_k * A_k with each reward normalised on its own (e.g. 0.7 win rate + 1.4 CLIP score, the
    original Pref-GRPO release), then the optional clip applied to the sum as the policy loss does."""
    if set(rewards) != set(weights):
        raise ValueError(f"rewards {sorted(rewards)} and weights {sorted(weights)} must name the same streams")
    combined = sum(weights[name] * normalized_advantages(values) for name, values in rewards.items())
    return combined.clamp(-clip, clip) if clip is not None else combined
