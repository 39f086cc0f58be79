"""Pairing: judge generated candidates and keep, per prompt, the best against the worst.

The pairs come from ``diffalign.rewards.pairs.best_vs_worst`` (kept only when strictly better by the
judge, and by at least ``min_margin``) and are written as the trainers' preference jsonl, image
paths relative to its folder, each row with both judge scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from diffalign.toy.evaluation import mean
from diffalign.toy.generation import Generated


def judge_and_pair(
    candidates: Generated,
    paths: Sequence[str | Path],
    judge,
    jsonl: str | Path,
    min_margin: float = 0.0,
    pairs_per_prompt: int = 1,
    scorer_name: str = "toy",
) -> dict:
    """Score ``candidates`` (saved at ``paths``) with ``judge``, write the best-vs-worst pairs to
    ``jsonl``; returns the statistics the demo reports under ``pairs``."""
    from diffalign.rewards.pairs import best_vs_worst, write_pairs
    from diffalign.rewards.records import ImageRecord

    prompts = candidates.image_prompts
    records = [ImageRecord(str(path), prompt, f"candidate {index}") for index, (path, prompt) in enumerate(zip(paths, prompts))]
    scores = judge.score(candidates.images, prompts)
    pairs, _ = best_vs_worst(records, scores, scorer_name=scorer_name, min_margin=min_margin, pairs_per_prompt=pairs_per_prompt)
    write_pairs(pairs, str(jsonl))
    return {
        "train_prompts": len(candidates.prompts),
        "candidates_per_prompt": candidates.per_prompt,
        "candidate_sampling": candidates.sampling,
        "candidate_reward_mean": float(scores.mean()),
        "pairs": len(pairs),
        "prompts_without_pair": len(candidates.prompts) - len({p.prompt for p in pairs}),
        "mean_pair_margin": mean(p.chosen_score - p.rejected_score for p in pairs),
    }
