"""``text_pairs``: prompt, chosen and rejected completions (TRL's preference format).

Fields are strings (standard) or lists of ``{role, content}`` messages (conversational, rendered with
the chat template). Without ``prompt`` the implicit prompt is the common prefix of chosen and
rejected (TRL's ``extract_prompt``). Optional precomputed ``ref_chosen_logps`` / ``ref_rejected_logps``
replace the reference model. Batches stack 2B rows ``[prompt + chosen_1..B; prompt + rejected_1..B]``
(one forward for both, as TRL), with ``ref_logps`` in that row order when precomputed.
"""

from __future__ import annotations

import torch

from diffalign.data.registry import register_format
from diffalign.data.text_examples import TextFormat, float_field, padded_rows, text_field
from diffalign.text.tokenize import extract_prompt


def read_pair(record: dict, where: str) -> list:
    chosen, rejected = text_field(record, "chosen", where), text_field(record, "rejected", where)
    if "prompt" in record:
        prompt = text_field(record, "prompt", where)
    else:
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
    refs = None
    if "ref_chosen_logps" in record or "ref_rejected_logps" in record:
        refs = [float_field(record, "ref_chosen_logps", where), float_field(record, "ref_rejected_logps", where)]
    return [(prompt, [chosen, rejected], None, refs)]


def collate_pairs(examples: list, pad_token_id: int, max_length) -> dict:
    prompts = [e.prompt_ids for e in examples] * 2
    completions = [e.completion_ids[0] for e in examples] + [e.completion_ids[1] for e in examples]
    batch = padded_rows(prompts, completions, pad_token_id, max_length)
    if examples[0].ref_logps is not None:
        refs = [e.ref_logps[0] for e in examples] + [e.ref_logps[1] for e in examples]
        batch["ref_logps"] = torch.tensor(refs, dtype=torch.float32)
    return batch


@register_format
class TextPairs(TextFormat):
    name = "text_pairs"
    description = "prompt + chosen + rejected completions (TRL preference format)"
    read = staticmethod(read_pair)
    collate = staticmethod(collate_pairs)
