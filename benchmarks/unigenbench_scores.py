"""UniGenBench aggregation: pooled pass rates per sub-dimension, primary dimension and theme, and Overall.

Rules (``research/rewards_bench.md`` §3.5, checked against the published tables):

- **sub-dimension score** = passed / judged test-point judgements of that sub-dimension, pooled over
  all prompts x 4 images;
- **primary-dimension score** = the same pooled ratio over every judgement of its sub-dimensions: a
  *micro* average, not the mean of its sub-dimension scores (SDXL's Attribute 44.34 is the micro
  average of its six sub-dimensions; their mean would be 44.80);
- **Overall** = the unweighted mean of the primary-dimension scores (FLUX.1-dev: the mean of its 10
  primaries is 61.30), ``None`` when a primary dimension has no judgement; upstream computes no
  Overall, the leaderboards print this one;
- **themes**: the same scores over the prompts of one theme;
- scores are percentages rounded to 2 decimals at the end (Overall averages the unrounded primary
  percentages).

Images whose judgement failed are left out of numerators and denominators alike (as upstream drops
them), but here they are counted and listed by the caller; every score carries the ``passed`` and
``total`` counts it rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from diffalign.benchmarks.unigenbench_data import primary_of


@dataclass(frozen=True)
class JudgedImage:
    """One image's verdicts: ``scores[i]`` (0 or 1) for ``testpoints[i]``."""

    image: str
    prompt_index: int
    theme: str
    testpoints: Sequence[str]
    scores: Sequence[int]


@dataclass
class Tally:
    """Passed and judged test-point judgements."""

    passed: int = 0
    total: int = 0

    def add(self, score: int) -> None:
        self.passed += int(score == 1)
        self.total += 1

    @property
    def percent(self) -> Optional[float]:
        """100 x passed / total, unrounded; ``None`` when nothing was judged."""
        return 100.0 * self.passed / self.total if self.total else None

    def as_dict(self) -> dict:
        return {"passed": self.passed, "total": self.total, "score": rounded(self.percent)}


def rounded(value: Optional[float]) -> Optional[float]:
    """A percentage rounded to 2 decimals (``None`` stays ``None``)."""
    return None if value is None else round(value, 2)


def overall_score(primary_percentages: Iterable[Optional[float]]) -> Optional[float]:
    """The unweighted mean of the primary-dimension percentages, rounded to 2 decimals; ``None`` when
    any of them is ``None`` (a primary with no judgement) or there are none."""
    values = list(primary_percentages)
    if not values or any(value is None for value in values):
        return None
    return round(sum(values) / len(values), 2)


def _primary_block(tallies: dict[str, Tally], primary_order: Sequence[str]) -> dict:
    return {
        "overall": overall_score(tallies[primary].percent for primary in primary_order),
        "primary": {primary: tallies[primary].as_dict() for primary in primary_order},
    }


def aggregate(judged: Iterable[JudgedImage], primary_order: Sequence[str], sub_order: Sequence[str],
              theme_order: Sequence[str] = ()) -> dict:
    """``{"overall", "primary", "sub", "themes"}`` over the judged images (module docstring).

    ``primary`` lists every primary of ``primary_order``, ``sub`` every sub-dimension of ``sub_order``
    (with its ``primary``), judged or not (``score`` ``None`` and ``total`` 0 when not); ``themes``
    lists the themes of ``theme_order`` first, then any other theme met, each with its ``overall`` and
    ``primary`` block. A test point outside ``sub_order`` is a ``ValueError``."""
    primary = {name: Tally() for name in primary_order}
    sub = {name: Tally() for name in sub_order}
    themes: dict[str, dict[str, Tally]] = {theme: {name: Tally() for name in primary_order} for theme in theme_order}
    for image in judged:
        theme = themes.setdefault(image.theme, {name: Tally() for name in primary_order})
        for testpoint, score in zip(image.testpoints, image.scores, strict=True):
            if testpoint not in sub or primary_of(testpoint) not in primary:
                raise ValueError(f"test point {testpoint!r} of {image.image} is not a sub-dimension of this benchmark")
            sub[testpoint].add(score)
            primary[primary_of(testpoint)].add(score)
            theme[primary_of(testpoint)].add(score)
    return {
        **_primary_block(primary, primary_order),
        "sub": {name: {"primary": primary_of(name), **tally.as_dict()} for name, tally in sub.items()},
        "themes": {theme: _primary_block(tallies, primary_order) for theme, tallies in themes.items()},
    }


def select_examples(judged: Iterable[JudgedImage], primary_order: Sequence[str], per_kind: int = 4) -> dict:
    """Example images per primary dimension for the report: ``{"passed": [...], "failed": [...]}``, up to
    ``per_kind`` image names each, one image per prompt, in prompt order. An image passed a primary
    when every one of its test points of that primary scored 1, failed it when any scored 0."""
    examples = {name: {"passed": [], "failed": []} for name in primary_order}
    used = {name: {"passed": set(), "failed": set()} for name in primary_order}
    for image in sorted(judged, key=lambda item: (item.prompt_index, item.image)):
        verdicts: dict[str, bool] = {}
        for testpoint, score in zip(image.testpoints, image.scores):
            name = primary_of(testpoint)
            verdicts[name] = verdicts.get(name, True) and score == 1
        for name, passed in verdicts.items():
            kind = "passed" if passed else "failed"
            if name in examples and len(examples[name][kind]) < per_kind and image.prompt_index not in used[name][kind]:
                examples[name][kind].append(image.image)
                used[name][kind].add(image.prompt_index)
    return examples
