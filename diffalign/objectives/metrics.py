"""TRL-named reward metrics shared by the pairwise objectives."""

from __future__ import annotations

import torch


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL's reward metrics: means of the implicit rewards, strict accuracy and margins.

    ``rewards/accuracies`` is strict (TRL, official Diffusion-DPO: 0 at initialisation);
    ``rewards/accuracies_ties_half`` counts ties as 1/2 (the diffusers port's ``implicit_acc``).
    """
    chosen_rewards = chosen_rewards.detach()
    rejected_rewards = rejected_rewards.detach()
    wins = (chosen_rewards > rejected_rewards).float()
    ties = (chosen_rewards == rejected_rewards).float()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": wins.mean(),
        "rewards/accuracies_ties_half": (wins + 0.5 * ties).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
    }
