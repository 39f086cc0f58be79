"""TRL-format text datasets: validation, tokenisation and collation into stacked rows.

Formats (TRL's dataset formats, text_objectives.md §7.3), each standard (strings) or
conversational (message lists):

- ``text_pairs``: ``prompt``, ``chosen``, ``rejected`` (no ``prompt``: the implicit prompt is the
  common prefix); optional precomputed ``ref_chosen_logps``, ``ref_rejected_logps``.
- ``text_unpaired``: ``prompt``, ``completion``, ``label`` (bool: desirable). Paired rows are unpaired (chosen -> True, rejected -> False), as TRL's ``unpair_preference_dataset``.
- ``text_ranked``: ``prompt``, ``completions`` (list), ``scores`` (list of numbers, higher is better,
  used as LiPO's graded labels psi).

A bad row raises a ``DataError`` naming the row and field, or is skipped and counted with
``skip_bad_rows``. Sequences longer than ``max_length`` keep their start (TRL ``keep_start``);
examples whose prompt alone fills ``max_length`` are dropped and counted, as TRL drops them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from diffalign.data.errors import DataError, SkipReport
from diffalign.text.tokenize import extract_prompt, is_conversational, tokenize_completions


@dataclass
class TokenizedExample:
    prompt_ids: list[int]
    completion_ids: list[list[int]]  # pairs: [chosen, rejected]; unpaired: [completion]; ranked: K
    label: Any = None  # unpaired: bool; ranked: list of scores
    ref_logps: Optional[list[float]] = None  # precomputed reference scores, one per completion


class TextDataset(Dataset):
    """Tokenised examples plus the ``SkipReport`` of what was left out."""

    def __init__(self, examples: list[TokenizedExample], skipped: SkipReport, has_reference_logps: bool):
        self.examples, self.skipped, self.has_reference_logps = examples, skipped, has_reference_logps

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> TokenizedExample:
        return self.examples[index]


def _text_field(record: dict, field: str, where: str) -> Any:
    value = record.get(field)
    if isinstance(value, str) and value:
        return value
    if is_conversational(value):
        return value
    if value is None:
        raise DataError(f"{where}: missing field {field!r}")
    raise DataError(f"{where}: field {field!r} must be a non-empty string or a list of {{role, content}} messages")


def _same_kind(where: str, prompt: Any, completions: list) -> None:
    kinds = {isinstance(value, list) for value in [prompt, *completions]}
    if len(kinds) != 1:
        raise DataError(f"{where}: mixes conversational (message list) and standard (string) fields")


def _float(record: dict, field: str, where: str) -> float:
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: field {field!r} must be a finite number, got {value!r}")
    return float(value)


def _pair_records(record: dict, where: str) -> list[tuple[Any, list, Any, Optional[list[float]]]]:
    chosen, rejected = _text_field(record, "chosen", where), _text_field(record, "rejected", where)
    if "prompt" in record:
        prompt = _text_field(record, "prompt", where)
    else:
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
    refs = None
    if "ref_chosen_logps" in record or "ref_rejected_logps" in record:
        refs = [_float(record, "ref_chosen_logps", where), _float(record, "ref_rejected_logps", where)]
    return [(prompt, [chosen, rejected], None, refs)]


def _unpaired_records(record: dict, where: str) -> list[tuple[Any, list, Any, Optional[list[float]]]]:
    if any(field in record for field in ("ref_logps", "ref_chosen_logps", "ref_rejected_logps")):
        raise DataError(f"{where}: precomputed reference log-probs are not read for unpaired data: KTO's reference "
                        "point needs the reference on the mismatched completions of each micro-batch")
    if "completion" not in record and "chosen" in record:
        (prompt, (chosen, rejected), _, _), = _pair_records(record, where)
        return [(prompt, [chosen], True, None), (prompt, [rejected], False, None)]
    prompt, completion = _text_field(record, "prompt", where), _text_field(record, "completion", where)
    label = record.get("label")
    if not isinstance(label, bool):
        raise DataError(f"{where}: field 'label' must be true or false, got {label!r}")
    return [(prompt, [completion], label, None)]


def _ranked_records(record: dict, where: str) -> list[tuple[Any, list, Any, Optional[list[float]]]]:
    prompt = _text_field(record, "prompt", where)
    completions, scores = record.get("completions"), record.get("scores")
    if not isinstance(completions, list) or len(completions) < 2:
        raise DataError(f"{where}: field 'completions' must be a list of at least 2 completions")
    if not isinstance(scores, list) or len(scores) != len(completions):
        raise DataError(f"{where}: field 'scores' must be a list with one number per completion")
    texts = [_text_field({"completion": c}, "completion", f"{where}, completions[{i}]") for i, c in enumerate(completions)]
    labels = [_float({"score": s}, "score", f"{where}, scores[{i}]") for i, s in enumerate(scores)]
    return [(prompt, texts, labels, None)]


_READERS = {"text_pairs": _pair_records, "text_unpaired": _unpaired_records, "text_ranked": _ranked_records}


def build_text_dataset(
    table, name: str, data_format: str, tokenizer, max_length: Optional[int], skip_bad_rows: bool, max_rows: Optional[int] = None
) -> TextDataset:
    """Validate and tokenise every row of ``table`` (a ``datasets.Dataset`` or a list of dicts)."""
    if data_format not in _READERS:
        raise DataError(f"text data format {data_format!r} is not one of {sorted(_READERS)}")
    reader = _READERS[data_format]
    examples, skipped = [], SkipReport()
    for index in range(len(table)):
        if max_rows is not None and len(examples) >= max_rows:
            break
        where = f"{name}: row {index}"
        try:
            for prompt, completions, label, refs in reader(dict(table[index]), where):
                _same_kind(where, prompt, completions)
                prompt_ids, completion_ids = tokenize_completions(tokenizer, prompt, completions)
                if max_length is not None and len(prompt_ids) >= max_length:
                    skipped.add("prompt fills max_length", f"{where} ({len(prompt_ids)} prompt tokens)")
                    continue
                examples.append(TokenizedExample(prompt_ids, completion_ids, label, refs))
        except DataError as error:
            if not skip_bad_rows:
                raise
            skipped.add("bad rows", str(error))
    if not examples:
        raise DataError(f"{name}: no usable rows ({skipped.summary()})")
    with_refs = {example.ref_logps is not None for example in examples}
    if len(with_refs) > 1:
        raise DataError(f"{name}: precomputed reference log-probs are present in some rows but not all")
    return TextDataset(examples, skipped, with_refs == {True})


def _rows(prompts: list[list[int]], completions: list[list[int]], pad_token_id: int, max_length: Optional[int]) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + completion`` rows with their attention and completion masks."""
    ids = [p + c for p, c in zip(prompts, completions)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)]
    if max_length is not None:
        ids, masks = [row[:max_length] for row in ids], [row[:max_length] for row in masks]
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    completion_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (row, mask) in enumerate(zip(ids, masks)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        completion_mask[i, : len(row)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


class TextCollator:
    """Stacks a micro-batch into model rows.

    - pairs: 2B rows ``[prompt + chosen_1..B; prompt + rejected_1..B]`` (one forward for both, as TRL);
    - unpaired: B rows, plus ``KL_*`` rows pairing prompt i with completion i-1 (KTO's mismatched
      completions, rotated by one within the micro-batch as TRL rotates them within a batch), ``label``;
    - ranked: one row per completion, list-major, with ``labels`` (B, K) and ``valid`` (B, K) masks.
    Precomputed reference scores of pairs come as ``ref_logps`` in the row order.
    """

    def __init__(self, data_format: str, pad_token_id: int, max_length: Optional[int]):
        self.data_format, self.pad_token_id, self.max_length = data_format, pad_token_id, max_length

    def __call__(self, examples: list[TokenizedExample]) -> dict[str, Any]:
        if self.data_format == "text_pairs":
            prompts = [e.prompt_ids for e in examples] * 2
            completions = [e.completion_ids[0] for e in examples] + [e.completion_ids[1] for e in examples]
            batch = _rows(prompts, completions, self.pad_token_id, self.max_length)
            refs = [e.ref_logps[0] for e in examples] + [e.ref_logps[1] for e in examples] if examples[0].ref_logps else None
        elif self.data_format == "text_unpaired":
            prompts = [e.prompt_ids for e in examples]
            completions = [e.completion_ids[0] for e in examples]
            batch = _rows(prompts, completions, self.pad_token_id, self.max_length)
            mismatched = _rows(prompts, completions[-1:] + completions[:-1], self.pad_token_id, self.max_length)
            batch.update({f"KL_{key}": value for key, value in mismatched.items()})
            batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.bool)
            refs = None
        else:
            prompts = [e.prompt_ids for e in examples for _ in e.completion_ids]
            completions = [c for e in examples for c in e.completion_ids]
            batch = _rows(prompts, completions, self.pad_token_id, self.max_length)
            size = max(len(e.completion_ids) for e in examples)
            batch["labels"] = torch.zeros(len(examples), size)
            batch["valid"] = torch.zeros(len(examples), size, dtype=torch.bool)
            for i, e in enumerate(examples):
                batch["labels"][i, : len(e.label)] = torch.tensor(e.label)
                batch["valid"][i, : len(e.label)] = True
            refs = None
        if refs is not None:
            batch["ref_logps"] = torch.tensor(refs, dtype=torch.float32)
        return batch
