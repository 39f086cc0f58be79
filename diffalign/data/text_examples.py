"""Tokenised examples of the text formats (TRL's dataset formats, text_objectives.md §7.3) and the
padding every text collate shares.

A text format reads each row into ``(prompt, completions, label, reference log-probs)`` records;
``tokenize_table`` validates and tokenises them the way TRL 1.16 does (``diffalign.text.tokenize``).
Sequences longer than ``max_length`` keep their start (TRL ``keep_start``); examples whose prompt
alone fills ``max_length`` are dropped and counted, as TRL drops them. Standard (string) and
conversational (message list) fields may not be mixed within a row.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch.utils.data import Dataset

from diffalign.data.errors import DataError, SkipReport
from diffalign.data.registry import DataFormat
from diffalign.data.tables import Table
from diffalign.text.tokenize import is_conversational, tokenize_completions

Record = tuple[Any, list, Any, Optional[list[float]]]
"""(prompt, completions, label, reference log-probs or None) read from one row."""


@dataclass
class TextOptions:
    """What the text formats need from the run."""

    tokenizer: Any
    max_length: Optional[int] = 1024
    skip_bad_rows: bool = False
    max_rows: Optional[int] = None


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


class TextFormat(DataFormat):
    """A text format: ``read`` turns a row into records, ``collate`` stacks tokenised examples into
    model rows; tokenisation, skip counting and the dataset are shared."""

    modality = "text"
    read: Callable[[dict, str], Iterable[Record]]  # a staticmethod: (row, where) -> records
    collate: Callable[..., dict]  # a staticmethod: (examples, pad_token_id, max_length) -> batch

    def build(self, table: Table, options: TextOptions):
        collate = functools.partial(self.collate, pad_token_id=options.tokenizer.pad_token_id, max_length=options.max_length)
        return tokenize_table(table, self.read, options), collate


def tokenize_table(table: Table, read: Callable[[dict, str], Iterable[Record]], options: TextOptions) -> TextDataset:
    """Validate (``read``) and tokenise every row of ``table``."""
    examples, skipped = [], SkipReport()
    for index in range(len(table)):
        if options.max_rows is not None and len(examples) >= options.max_rows:
            break
        where = table.where(index)
        try:
            for prompt, completions, label, refs in read(table.row(index), where):
                _same_kind(where, prompt, completions)
                prompt_ids, completion_ids = tokenize_completions(options.tokenizer, prompt, completions)
                if options.max_length is not None and len(prompt_ids) >= options.max_length:
                    skipped.add("prompt fills max_length", f"{where} ({len(prompt_ids)} prompt tokens)")
                    continue
                examples.append(TokenizedExample(prompt_ids, completion_ids, label, refs))
        except DataError as error:
            if not options.skip_bad_rows:
                raise
            skipped.add("bad rows", str(error))
    if not examples:
        raise DataError(f"{table.name}: no usable rows ({skipped.summary()})")
    with_refs = {example.ref_logps is not None for example in examples}
    if len(with_refs) > 1:
        raise DataError(f"{table.name}: precomputed reference log-probs are present in some rows but not all")
    return TextDataset(examples, skipped, with_refs == {True})


def text_field(record: dict, field: str, where: str) -> Any:
    value = record.get(field)
    if isinstance(value, str) and value:
        return value
    if is_conversational(value):
        return value
    if value is None:
        raise DataError(f"{where}: missing field {field!r}")
    raise DataError(f"{where}: field {field!r} must be a non-empty string or a list of {{role, content}} messages")


def float_field(record: dict, field: str, where: str) -> float:
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: field {field!r} must be a finite number, got {value!r}")
    return float(value)


def _same_kind(where: str, prompt: Any, completions: list) -> None:
    kinds = {isinstance(value, list) for value in [prompt, *completions]}
    if len(kinds) != 1:
        raise DataError(f"{where}: mixes conversational (message list) and standard (string) fields")


def padded_rows(prompts: list[list[int]], completions: list[list[int]], pad_token_id: int,
                max_length: Optional[int]) -> dict[str, torch.Tensor]:
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
