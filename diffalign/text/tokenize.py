"""Tokenising TRL-format examples the way TRL 1.16's ``DPOTrainer`` / ``KTOTrainer`` do
(``_prepare_dataset``; text_objectives.md §7.3).

- Standard (strings): EOS is appended to each completion that lacks it; the prompt and
  prompt + completion are tokenised as plain text (with the tokenizer's special tokens).
- Conversational (lists of ``{"role", "content"}`` messages): the prompt is rendered with the chat
  template and ``add_generation_prompt=True``, prompt + completion with the chat template.
- The completion starts where the tokenised prompt and every tokenised prompt + completion first
  differ (the common-prefix rule), so all completions of an example share one prompt.
"""

from __future__ import annotations

from typing import Any, Sequence


def is_conversational(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _ids(tokenizer, text_or_messages, add_generation_prompt: bool = False) -> list[int]:
    if isinstance(text_or_messages, list):
        rendered = tokenizer.apply_chat_template(
            text_or_messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
        )
        return list(rendered["input_ids"])
    return list(tokenizer(text_or_messages)["input_ids"])


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def tokenize_completions(tokenizer, prompt: Any, completions: Sequence[Any]) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, [completion_ids, ...])`` for one prompt and its completions (see module docstring)."""
    if is_conversational(prompt):
        prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True)
        full = [_ids(tokenizer, prompt + completion) for completion in completions]
    else:
        eos = tokenizer.eos_token
        full = [_ids(tokenizer, prompt + (c if c.endswith(eos) else c + eos)) for c in completions]
        prompt_ids = _ids(tokenizer, prompt)
    prompt_length = min(_common_prefix_length(prompt_ids, ids) for ids in full)
    return prompt_ids[:prompt_length], [ids[prompt_length:] for ids in full]


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Implicit-prompt data: the longest common prefix of chosen and rejected (messages, or
    characters backed off by one before a space), as TRL's ``extract_prompt``."""
    index = 0
    for index in range(min(len(chosen), len(rejected))):
        if chosen[index] != rejected[index]:
            if chosen[index - 1] == " ":
                index -= 1
            break
    return chosen[:index], chosen[index:], rejected[index:]
