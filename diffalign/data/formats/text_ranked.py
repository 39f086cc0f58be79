"""``text_ranked``: a prompt with several completions and their scores (listwise, LiPO).

``completions`` is a list of at least 2 completions, ``scores`` one number per completion (higher is
better, LiPO's graded labels psi). Batches hold one row per completion, list-major, with ``labels``
(B, K) and ``valid`` (B, K) masks for lists shorter than the longest.
"""

from __future__ import annotations

import torch

from diffalign.data.errors import DataError
from diffalign.data.registry import register_format
from diffalign.data.text_examples import TextFormat, float_field, padded_rows, text_field


def read_ranked(record: dict, where: str) -> list:
    prompt = text_field(record, "prompt", where)
    completions, scores = record.get("completions"), record.get("scores")
    if not isinstance(completions, list) or len(completions) < 2:
        raise DataError(f"{where}: field 'completions' must be a list of at least 2 completions")
    if not isinstance(scores, list) or len(scores) != len(completions):
        raise DataError(f"{where}: field 'scores' must be a list with one number per completion")
    texts = [text_field({"completion": c}, "completion", f"{where}, completions[{i}]") for i, c in enumerate(completions)]
    labels = [float_field({"score": s}, "score", f"{where}, scores[{i}]") for i, s in enumerate(scores)]
    return [(prompt, texts, labels, None)]


def collate_ranked(examples: list, pad_token_id: int, max_length) -> dict:
    prompts = [e.prompt_ids for e in examples for _ in e.completion_ids]
    completions = [c for e in examples for c in e.completion_ids]
    batch = padded_rows(prompts, completions, pad_token_id, max_length)
    size = max(len(e.completion_ids) for e in examples)
    batch["labels"] = torch.zeros(len(examples), size)
    batch["valid"] = torch.zeros(len(examples), size, dtype=torch.bool)
    for i, e in enumerate(examples):
        batch["labels"][i, : len(e.label)] = torch.tensor(e.label)
        batch["valid"][i, : len(e.label)] = True
    return batch


@register_format
class TextRanked(TextFormat):
    name = "text_ranked"
    description = "prompt + several completions with scores (listwise)"
    read = staticmethod(read_ranked)
    collate = staticmethod(collate_ranked)
