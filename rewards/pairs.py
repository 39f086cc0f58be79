"""Preference pairs from generated candidates (several images per prompt), in the trainers' jsonl format.

Two recipes:

- ``best_vs_worst``: per prompt, the highest- against the lowest-scored image of a pointwise scorer,
  kept when the score gap is positive and at least ``min_margin``.
- ``rank_and_sift``: UnifiedReward's "pair ranking + point sifting" (arXiv 2503.05236 §3;
  github.com/CodeGoat24/UnifiedReward ``DiffusionDPO/sift_dpo_data.py``; spec
  ``research/rewards_bench.md`` §2.4): the images of a prompt form fixed pairs (0, 1), (2, 3), ...;
  a pairwise judge ranks each pair (ties give no chosen/rejected), a pointwise judge scores every
  image, and the pair (highest-scored winner, lowest-scored loser) is kept when its score gap is
  positive and at least ``min_margin``. Scores are compared as numbers (upstream compares strings).

Each output row holds ``prompt``, ``chosen``, ``rejected`` (paths relative to the jsonl's folder),
``chosen_score``, ``rejected_score`` and ``scorer``, so that score-aware methods (SmPO) can use them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from diffalign.rewards.base import PairwiseScorer, Scorer, compare_both_orders
from diffalign.rewards.records import ImageRecord
from diffalign.rewards.scoring import Skipped, load_images


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    scorer: str

    def to_row(self, root: str) -> dict:
        """The jsonl row, image paths relative to ``root`` (the output file's folder)."""
        row = asdict(self)
        row["chosen"] = os.path.relpath(self.chosen, root)
        row["rejected"] = os.path.relpath(self.rejected, root)
        return row


@dataclass
class PairStats:
    """What happened to each prompt and image; printed by ``diffalign pairs``."""

    prompts: int = 0
    pairs: int = 0
    too_few_images: int = 0  # prompts with fewer than 2 usable images
    below_margin: int = 0  # prompts whose (next) pair is not better by more than 0 and by at least min_margin
    no_decisive_pair: int = 0  # rank_and_sift: every ranked pair was a tie
    unscored_images: int = 0  # NaN scores (unparsable judge answer or unreadable image)
    unparsable_verdicts: int = 0
    skipped_images: int = 0


def group_by_prompt(records: Iterable[ImageRecord]) -> list[tuple[str, list[int]]]:
    """``(prompt, indices of its records)`` per prompt, in first-appearance order. Records that carry a
    ``prompt_index`` (a folder read with ``--prompts FILE``) are grouped by it, so two identical lines of
    a prompts file stay two prompts with their own candidates; the others by their prompt text."""
    groups: dict[tuple[int | None, str], tuple[str, list[int]]] = {}
    for index, record in enumerate(records):
        groups.setdefault((record.prompt_index, record.prompt), (record.prompt, []))[1].append(index)
    return list(groups.values())


def _keep(chosen_score: float, rejected_score: float, min_margin: float) -> bool:
    margin = chosen_score - rejected_score
    return margin > 0 and margin >= min_margin


def best_vs_worst(
    records: Sequence[ImageRecord], scores: torch.Tensor, scorer_name: str, min_margin: float = 0.0,
    pairs_per_prompt: int = 1,
) -> tuple[list[PreferencePair], PairStats]:
    """Per prompt, the best against the worst image by ``scores`` (NaN scores are left out); with
    ``pairs_per_prompt`` = n > 1 also the i-th best against the i-th worst for i < n (no image twice)."""
    stats = PairStats()
    pairs = []
    for prompt, indices in group_by_prompt(records):
        stats.prompts += 1
        scored = sorted((float(scores[i]), i) for i in indices if not math.isnan(scores[i]))
        stats.unscored_images += len(indices) - len(scored)
        if len(scored) < 2:
            stats.too_few_images += 1
            continue
        for rank in range(min(pairs_per_prompt, len(scored) // 2)):
            (best_score, best), (worst_score, worst) = scored[-1 - rank], scored[rank]
            if not _keep(best_score, worst_score, min_margin):
                stats.below_margin += 1
                break  # later pairs have smaller margins
            pairs.append(PreferencePair(prompt, records[best].path, records[worst].path, best_score, worst_score, scorer_name))
    stats.pairs = len(pairs)
    return pairs, stats


def _sift(
    prompt: str,
    verdicts: Sequence[tuple[int, int, int]],
    score_of: Mapping[int, float],
    records: Sequence[ImageRecord],
    scorer_name: str,
    min_margin: float,
    stats: PairStats,
) -> PreferencePair | None:
    """The (best-scored winner, worst-scored loser) pair of one prompt from its (left, right, verdict) list."""
    winners, losers = [], []
    for left, right, verdict in verdicts:
        if verdict != 0:
            winners.append(left if verdict > 0 else right)
            losers.append(right if verdict > 0 else left)
    scored_winners = [(score_of[i], i) for i in winners if not math.isnan(score_of[i])]
    scored_losers = [(score_of[i], i) for i in losers if not math.isnan(score_of[i])]
    if not scored_winners or not scored_losers:
        stats.no_decisive_pair += 1
        return None
    chosen_score, chosen = max(scored_winners)
    rejected_score, rejected = min(scored_losers)
    if not _keep(chosen_score, rejected_score, min_margin):
        stats.below_margin += 1
        return None
    return PreferencePair(prompt, records[chosen].path, records[rejected].path, chosen_score, rejected_score, scorer_name)


def rank_and_sift(
    records: Sequence[ImageRecord],
    ranker: PairwiseScorer,
    point_scorer: Scorer,
    scorer_name: str,
    min_margin: float = 0.0,
    both_orders: bool = False,
    skip_invalid: bool = False,
    prompts_per_call: int = 8,
) -> tuple[list[PreferencePair], PairStats]:
    """UnifiedReward pair ranking + point sifting over the candidates of each prompt (see module docstring).

    Judge calls are batched over ``prompts_per_call`` prompts. An odd last image of a prompt, or a pair
    with an unreadable image (``skip_invalid``), is neither ranked nor scored.
    """
    stats = PairStats()
    skipped = Skipped()
    pairs = []
    groups = group_by_prompt(records)
    for start in tqdm(range(0, len(groups), prompts_per_call), desc="rank + sift", unit="call"):
        chunk = groups[start : start + prompts_per_call]
        stats.prompts += len(chunk)
        images, fixed_pairs = {}, []  # fixed_pairs: (group position in chunk, left index, right index)
        for group, (_, indices) in enumerate(chunk):
            images.update(zip(indices, load_images([records[i] for i in indices], skip_invalid, skipped)))
            fixed_pairs += [
                (group, left, right)
                for left, right in zip(indices[0::2], indices[1::2])
                if images[left] is not None and images[right] is not None
            ]
        ranked_groups = {group for group, _, _ in fixed_pairs}
        stats.too_few_images += len(chunk) - len(ranked_groups)
        if not fixed_pairs:
            continue
        lefts = [images[left] for _, left, _ in fixed_pairs]
        rights = [images[right] for _, _, right in fixed_pairs]
        prompts = [chunk[group][0] for group, _, _ in fixed_pairs]
        verdicts = (compare_both_orders(ranker, lefts, rights, prompts) if both_orders else ranker.compare(lefts, rights, prompts))
        stats.unparsable_verdicts += verdicts.unparsable
        ranked = [left for _, left, _ in fixed_pairs] + [right for _, _, right in fixed_pairs]
        values = point_scorer.score([images[i] for i in ranked], [records[i].prompt for i in ranked])
        score_of = {index: float(value) for index, value in zip(ranked, values)}
        stats.unscored_images += sum(math.isnan(value) for value in score_of.values())
        for group, (prompt, _) in enumerate(chunk):
            if group not in ranked_groups:
                continue
            own = [(left, right, verdict) for (owner, left, right), verdict in zip(fixed_pairs, verdicts.preference.tolist()) if owner == group]
            pair = _sift(prompt, own, score_of, records, scorer_name, min_margin, stats)
            if pair is not None:
                pairs.append(pair)
    stats.pairs = len(pairs)
    stats.skipped_images = len(skipped)
    return pairs, stats


def write_pairs(pairs: Sequence[PreferencePair], path: str) -> None:
    """Write the preference jsonl (paths relative to ``path``'s folder)."""
    root = os.path.dirname(os.path.abspath(path))
    os.makedirs(root, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair.to_row(root)) + "\n")
