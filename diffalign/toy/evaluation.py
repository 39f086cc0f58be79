"""Evaluation: a base and an aligned model on the same evaluation prompts and seeds, judged alike.

Both models draw image ``j`` of evaluation prompt ``i`` from seed ``EVAL_IMAGE_SEED + 1000 * i + j``
(``generation.image_seeds``), so each aligned image has a base image from the same starting noise.
The judge scores both; the summary holds the mean reward before and after, the win rate of aligned
over base over those paired comparisons (ties count 1/2) with its standard error, and the mean of
every judge term.

The protocol is fixed here, not by a method's options: which prompts (``evaluation_prompts``, drawn
with ``EVAL_PROMPT_SEED``), which seeds, and the preset's sampler (``preset.SAMPLING``). A demo whose
aligned model is sampled differently (another guidance, another pipeline) passes that pipeline and
its ``aligned_sampling``; the base keeps the preset's unless ``base_sampling`` says otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from diffalign.errors import UsageError
from diffalign.toy import world
from diffalign.toy.generation import Generated, generate_per_prompt
from diffalign.toy.judge import WEIGHTS, judge_terms

EVAL_PROMPT_SEED = 20240601  # which held-out prompts, in which order
EVAL_IMAGE_SEED = 10_000_000  # evaluation image j of prompt i uses seed EVAL_IMAGE_SEED + 1000 * i + j
EVAL_SPLITS = ("held-out", "validation")


def check_eval_split(split: str) -> None:
    """A ``ValueError`` naming the valid splits unless ``split`` is one of ``EVAL_SPLITS``."""
    if split not in EVAL_SPLITS:
        raise UsageError(f"--eval-split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")


def evaluation_prompts(split: str, n: int, used_prompts: Sequence[str]) -> list[str]:
    """``held-out``: the held-out split (the reported evaluation). ``validation``: training-split
    prompts not in ``used_prompts`` (those the alignment trained on), for choosing training settings
    without looking at held-out results."""
    check_eval_split(split)
    train, held_out = world.split_prompts()
    if split == "held-out":
        pool = held_out
    else:
        used = set(used_prompts)
        pool = [p for p in train if p not in used]
    if not pool:
        raise UsageError("no validation prompts left: every training prompt built pairs (lower --train-prompts)")
    return world.sample_prompts(pool, n, seed=EVAL_PROMPT_SEED)


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean; NaN for no values."""
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


def win_rate(after: Sequence[float], before: Sequence[float]) -> dict[str, float]:
    """Wins, losses, ties of ``after`` over ``before`` (paired), the win rate (ties 1/2) and its standard error."""
    wins = sum(a > b for a, b in zip(after, before))
    losses = sum(a < b for a, b in zip(after, before))
    n = len(after)
    ties = n - wins - losses
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    return {"win_rate": rate, "wins": wins, "losses": losses, "ties": ties,
            "win_rate_stderr": math.sqrt(rate * (1 - rate) / n) if n else float("nan")}


def term_means(images, prompts: Sequence[str]) -> dict[str, float]:
    """The mean of each toy-judge term (``judge.WEIGHTS``' names) over ``images`` and their prompts."""
    terms = [judge_terms(image, prompt) for image, prompt in zip(images, prompts)]
    return {name: mean(getattr(t, name) for t in terms) for name in WEIGHTS}


@dataclass
class Evaluation:
    """The images of both models (same prompts and seeds) and their judge scores."""

    base: Generated
    aligned: Generated
    before: list[float]  # judge score of each base image
    after: list[float]  # judge score of each aligned image

    def summary(self) -> dict:
        """Counts, mean rewards, the win rate of aligned over base (``win_rate``) and the judge terms."""
        prompts = self.base.image_prompts
        return {
            "n_prompts": len(self.base.prompts),
            "n_comparisons": len(prompts),
            "reward_before": mean(self.before),
            "reward_after": mean(self.after),
            **win_rate(self.after, self.before),
            "terms_before": term_means(self.base.images, prompts),
            "terms_after": term_means(self.aligned.images, prompts),
        }

    def save(self, folder: str | Path) -> None:
        """Every image (``base/``, ``aligned/``) and ``eval.jsonl``: per comparison its prompt, seed,
        both image paths (relative to ``folder``) and both scores."""
        folder = Path(folder)
        names = {}
        for side, generated in (("base", self.base), ("aligned", self.aligned)):
            names[side] = [path.relative_to(folder).as_posix() for path in generated.save(folder / side, name="{index:04d}.png")]
        with open(folder / "eval.jsonl", "w", encoding="utf-8") as handle:
            for index, (prompt, seed) in enumerate(zip(self.base.image_prompts, self.base.seeds)):
                handle.write(json.dumps({"prompt": prompt, "seed": seed, "base": names["base"][index], "aligned": names["aligned"][index],
                                         "base_score": self.before[index], "aligned_score": self.after[index]}) + "\n")


def evaluate(
    base_pipe,
    aligned_pipe,
    prompts: Sequence[str],
    judge,
    seeds_per_prompt: int = 2,
    batch_size: int = 64,
    progress: bool = True,
    base_sampling: Optional[dict] = None,
    aligned_sampling: Optional[dict] = None,
) -> Evaluation:
    """Generate ``seeds_per_prompt`` images per prompt from both pipelines with the same seeds
    (``preset.SAMPLING``, overridden per model by ``*_sampling``) and score them with ``judge``."""
    options = {"batch_size": batch_size, "progress": progress}
    base = generate_per_prompt(base_pipe, prompts, seeds_per_prompt, EVAL_IMAGE_SEED, desc="eval base", **options, **(base_sampling or {}))
    aligned = generate_per_prompt(aligned_pipe, prompts, seeds_per_prompt, EVAL_IMAGE_SEED, desc="eval aligned", **options,
                                  **(aligned_sampling or {}))
    before = judge.score(base.images, base.image_prompts).tolist()
    after = judge.score(aligned.images, aligned.image_prompts).tolist()
    return Evaluation(base, aligned, before, after)
