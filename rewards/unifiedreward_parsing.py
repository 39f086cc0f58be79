"""Parsers for UnifiedReward judge outputs (spec ``research/rewards_bench.md`` §2.3).

Each parser returns ``None`` (or NaN entries) when the text carries no verdict; the scorers count
those as unparsable (a tie for pairwise judges, NaN for pointwise scores) and report the count.
Deliberate departures from the upstream scripts, which are noted in the spec:

- pair ranking matches image 1, image 2 and the tie phrase explicitly (upstream falls back to image 1);
  when several verdict phrases appear the last one (the conclusion) counts;
- v1 point scores are numbers compared as numbers (upstream sifting compares strings, so "9" > "10");
- a Think answer that names both images or neither is unparsable (upstream: image 1 if it is named).
"""

from __future__ import annotations

import math
import re

import torch

PAIR_VERDICTS = {"image 1 is better": 1, "image 2 is better": -1, "both images are equally good": 0}
_PAIR_VERDICT = re.compile("|".join(re.escape(phrase) for phrase in PAIR_VERDICTS), re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ACS = re.compile(r"(\w+) Score \(1-5\):\s*([0-5](?:\.\d+)?)")
_PAIR_SCORE = re.compile(r"(\w+) Score:\s*Image 1:\s*(\d+(?:\.\d+)?)\s*Image 2:\s*(\d+(?:\.\d+)?)")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

ACS_DIMENSIONS = ("alignment", "coherence", "style")
FINAL_SCORE = "Final Score:"


def parse_pair_rank(text: str) -> int | None:
    """1 (image 1 better), -1 (image 2 better), 0 (equally good) from the last verdict phrase; else None."""
    matches = _PAIR_VERDICT.findall(text or "")
    return PAIR_VERDICTS[matches[-1].lower()] if matches else None


def parse_final_score(text: str) -> float | None:
    """The first number after the last ``Final Score:`` (``"Final Score: 10/10"`` -> 10.0); else None."""
    text = text or ""
    if FINAL_SCORE not in text:
        return None
    match = _NUMBER.search(text.rsplit(FINAL_SCORE, 1)[1])
    return float(match.group()) if match else None


def parse_acs(text: str) -> dict[str, float]:
    """The 2.0 ``<Dimension> Score (1-5): x`` values found in ``text``, keyed by lower-case dimension."""
    return {name.lower(): float(value) for name, value in _ACS.findall(text or "") if name.lower() in ACS_DIMENSIONS}


def acs_matrix(texts: list[str], fill_missing: bool = False) -> torch.Tensor:
    """(N, 3) Alignment / Coherence / Style scores; missing entries are NaN, or with ``fill_missing`` the
    batch mean of that dimension over the responses that have it (0 when none has it), as Pref-GRPO does."""
    rows = [parse_acs(text) for text in texts]
    matrix = torch.tensor([[row.get(name, math.nan) for name in ACS_DIMENSIONS] for row in rows], dtype=torch.float32)
    matrix = matrix.reshape(len(texts), len(ACS_DIMENSIONS))
    if fill_missing:
        present = ~matrix.isnan()
        counts = present.sum(0)
        means = torch.where(present, matrix, 0).sum(0) / counts.clamp(min=1)
        matrix = torch.where(present, matrix, means.expand_as(matrix))
    return matrix


def parse_pair_scores(text: str) -> dict[str, tuple[float, float]]:
    """The 2.0 pairwise relative scores ``{dimension: (image 1, image 2)}`` found in ``text``."""
    return {
        name.lower(): (float(first), float(second))
        for name, first, second in _PAIR_SCORE.findall(text or "")
        if name.lower() in ACS_DIMENSIONS
    }


def parse_think_answer(text: str) -> int | None:
    """1 / -1 from the last ``<answer>...</answer>`` naming exactly one of the two images; else None."""
    answers = _ANSWER.findall(text or "")
    if not answers:
        return None
    answer = answers[-1].strip().lower()
    first, second = "image 1 is better" in answer, "image 2 is better" in answer
    if first == second:
        return None
    return 1 if first else -1
