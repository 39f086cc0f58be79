"""UnifiedReward judges as scorers: v1 pair ranking + point score, 2.0 ACS / pair scores, and Think.

UnifiedReward (Wang et al., arXiv 2503.05236), UnifiedReward-Think (arXiv 2505.03318); models at HF
``CodeGoat24`` (MIT), formats read from github.com/CodeGoat24/UnifiedReward @ff6f520 (spec
``research/rewards_bench.md`` §2). A judge runs either locally through transformers (``model`` = a
folder or hub id of a Qwen2.5-VL checkpoint) or against an OpenAI-compatible server such as vLLM
(``base_url``, or ``DIFFALIGN_JUDGE_BASE_URL`` in the environment).

Registered scorers:

- ``unifiedreward`` (v1 models, e.g. ``UnifiedReward-qwen-7b``): ``compare`` = pair ranking,
  ``score`` = ``Final Score`` on 1..``point_scale`` (5 as in the Qwen scripts, 10 for DPO-data sifting).
- ``unifiedreward-2.0`` (``UnifiedReward-2.0-qwen-*``): ``score`` = Alignment / Coherence / Style 1-5
  (one ``dimension`` or their ``mean``), ``compare`` = pairwise relative scores, P(A) = image 1's share.
- ``unifiedreward-think`` (``UnifiedReward-Think-qwen-7b``, the Pref-GRPO reward): ``compare`` only.

Unparsable answers count as ties (pairwise) or NaN (pointwise); ``PairwiseResult.unparsable`` and the
NaN count report them. ``both_orders=True`` judges every pair as (A, B) and (B, A) to cancel position bias.
"""

from __future__ import annotations

import math
import os
from abc import abstractmethod
from typing import ClassVar, Sequence

import torch
from PIL import Image

from diffalign.errors import UsageError
from diffalign.rewards.base import (
    PairwiseResult,
    PairwiseScorer,
    Scorer,
    check_lengths,
    compare_both_orders,
    register_scorer,
)
from diffalign.rewards.unifiedreward_parsing import (
    ACS_DIMENSIONS,
    acs_matrix,
    parse_final_score,
    parse_pair_rank,
    parse_pair_scores,
    parse_think_answer,
)
from diffalign.rewards.unifiedreward_prompts import (
    acs_prompt,
    pair_rank_prompt,
    pair_score_prompt,
    point_score_prompt,
    think_pair_prompt,
)


def build_backend(
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    served_model: str = "UnifiedReward",
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 4096,
    progress: bool = True,
    **http_options,
):
    """An ``HTTPJudge`` when an endpoint is given (argument or environment), else a ``TransformersJudge``.

    ``http_options`` (timeout, max_retries, retry_backoff, max_workers) go to the ``HTTPJudge``.
    """
    from diffalign.rewards.http_judge import HTTP_OPTIONS, HTTPJudge
    from diffalign.rewards.transformers_judge import TransformersJudge

    unknown = sorted(set(http_options) - set(HTTP_OPTIONS))
    if unknown:
        raise UsageError(f"a UnifiedReward judge takes no option(s) {', '.join(unknown)}; its HTTP endpoint options: "
                         f"{', '.join(HTTP_OPTIONS)}")
    if base_url or (model is None and os.environ.get("DIFFALIGN_JUDGE_BASE_URL")):
        return HTTPJudge(base_url, api_key=api_key, model=served_model, max_tokens=max_new_tokens, **http_options)
    if model is None:
        raise UsageError("a UnifiedReward judge needs --model (local path or hub id) or --base-url (OpenAI-compatible server)")
    if http_options:
        raise UsageError(f"options {', '.join(sorted(http_options))} apply to an HTTP endpoint only (give base_url)")
    return TransformersJudge(model, device=device, dtype=dtype, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)


class _Judge:
    """Holds the backend and runs (images, instruction) requests through it."""

    def __init__(self, both_orders: bool = False, **backend_options):
        self.backend = build_backend(**backend_options)
        self.both_orders = both_orders

    def _ask(self, images: Sequence[Sequence[Image.Image]], texts: Sequence[str]) -> list[str]:
        return self.backend.generate(list(zip(images, texts)))

    @abstractmethod
    def _verdicts(self, images_a, images_b, prompts) -> PairwiseResult:
        """One judge call per pair, image A shown first."""

    def compare(self, images_a: Sequence[Image.Image], images_b: Sequence[Image.Image], prompts: Sequence[str]) -> PairwiseResult:
        check_lengths(images_a=images_a, images_b=images_b, prompts=prompts)
        if not self.both_orders:
            return self._verdicts(images_a, images_b, prompts)
        return compare_both_orders(self._verdicts, images_a, images_b, prompts)


def _pairwise_result(verdicts: list[int | None], probability_a: list[float] | None = None) -> PairwiseResult:
    preference = torch.tensor([0 if v is None else v for v in verdicts], dtype=torch.int64)
    probability = torch.tensor(probability_a if probability_a is not None else [math.nan] * len(verdicts), dtype=torch.float32)
    return PairwiseResult(preference, probability, sum(v is None for v in verdicts))


@register_scorer("unifiedreward")
class UnifiedReward(_Judge, Scorer, PairwiseScorer):
    """UnifiedReward v1: pair ranking (``compare``) and ``Final Score`` point scores (``score``).

    Args:
        model / base_url / api_key / served_model: the judge (see ``build_backend``).
        point_scale: top of the point-score scale, 5 (Qwen v1 scripts) or 10 (DPO-data sifting).
        both_orders: judge each pair in both presentation orders.
        device, dtype, batch_size, max_new_tokens, progress: backend options.
    """

    name: ClassVar[str] = "unifiedreward"

    def __init__(self, point_scale: int = 5, both_orders: bool = False, **backend_options):
        super().__init__(both_orders=both_orders, **backend_options)
        self.point_scale = point_scale

    def _verdicts(self, images_a, images_b, prompts) -> PairwiseResult:
        answers = self._ask(list(zip(images_a, images_b)), [pair_rank_prompt(p) for p in prompts])
        return _pairwise_result([parse_pair_rank(answer) for answer in answers])

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Float32 (N,) scores on 1..``point_scale``; NaN where the answer has no ``Final Score``."""
        check_lengths(images=images, prompts=prompts)
        answers = self._ask([[image] for image in images], [point_score_prompt(p, self.point_scale) for p in prompts])
        values = [parse_final_score(answer) for answer in answers]
        return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)


@register_scorer("unifiedreward-2.0")
class UnifiedReward2(_Judge, Scorer, PairwiseScorer):
    """UnifiedReward-2.0: Alignment / Coherence / Style point scores and pairwise relative scores.

    Args:
        dimension: ``"alignment"``, ``"coherence"``, ``"style"`` or ``"mean"`` (of the three) for ``score``.
        fill_missing: replace a dimension missing from an answer by its batch mean (Pref-GRPO) instead of NaN.
        both_orders, model / base_url / ...: as for ``UnifiedReward``.
    """

    name: ClassVar[str] = "unifiedreward-2.0"

    def __init__(self, dimension: str = "mean", fill_missing: bool = False, both_orders: bool = False, **backend_options):
        if dimension not in ACS_DIMENSIONS + ("mean",):
            raise UsageError(f"dimension must be one of {', '.join(ACS_DIMENSIONS)} or mean, got {dimension!r}")
        super().__init__(both_orders=both_orders, **backend_options)
        self.dimension = dimension
        self.fill_missing = fill_missing

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Float32 (N,) 1-5 scores of ``dimension``; NaN where the answer lacks it (or any, for ``mean``)."""
        check_lengths(images=images, prompts=prompts)
        answers = self._ask([[image] for image in images], [acs_prompt(p) for p in prompts])
        matrix = acs_matrix(answers, fill_missing=self.fill_missing)
        if self.dimension == "mean":
            return matrix.mean(-1)
        return matrix[:, ACS_DIMENSIONS.index(self.dimension)]

    def _verdicts(self, images_a, images_b, prompts) -> PairwiseResult:
        answers = self._ask(list(zip(images_a, images_b)), [pair_score_prompt(p) for p in prompts])
        verdicts, probabilities = [], []
        for answer in answers:
            scores = parse_pair_scores(answer)
            first = sum(a for a, _ in scores.values())
            total = sum(a + b for a, b in scores.values())
            if len(scores) < len(ACS_DIMENSIONS) or total <= 0:
                verdicts.append(None)
                probabilities.append(math.nan)
                continue
            probabilities.append(first / total)
            verdicts.append(1 if 2 * first > total else -1 if 2 * first < total else 0)
        return _pairwise_result(verdicts, probabilities)


@register_scorer("unifiedreward-think")
class UnifiedRewardThink(_Judge, PairwiseScorer):
    """UnifiedReward-Think: chain-of-thought pairwise judge, verdict in ``<answer>`` (the Pref-GRPO reward).

    Args: as for ``UnifiedReward`` without ``point_scale``; keep ``max_new_tokens`` large (reasoning is long).
    """

    name: ClassVar[str] = "unifiedreward-think"

    def _verdicts(self, images_a, images_b, prompts) -> PairwiseResult:
        answers = self._ask(list(zip(images_a, images_b)), [think_pair_prompt(p) for p in prompts])
        return _pairwise_result([parse_think_answer(answer) for answer in answers])
