"""``text_unpaired``: prompt, completion and a desirable/undesirable label (TRL's unpaired format, KTO).

``label`` is true or false. Paired rows are unpaired (chosen -> true, rejected -> false), as TRL's
``unpair_preference_dataset``. Batches hold B rows plus ``KL_*`` rows pairing prompt i with completion
i - 1 (KTO's mismatched completions, rotated by one within the micro-batch as TRL rotates them
within a batch) and ``label`` (B,) bool. Precomputed reference log-probs are refused: KTO's reference
point needs the reference on the mismatched completions of each micro-batch.
"""

from __future__ import annotations

import torch

from diffalign.data.errors import DataError
from diffalign.data.registry import register_format
from diffalign.data.formats.text_pairs import read_pair
from diffalign.data.text_examples import TextFormat, padded_rows, text_field


def read_unpaired(record: dict, where: str) -> list:
    if any(field in record for field in ("ref_logps", "ref_chosen_logps", "ref_rejected_logps")):
        raise DataError(f"{where}: precomputed reference log-probs are not read for unpaired data: KTO's reference "
                        "point needs the reference on the mismatched completions of each micro-batch")
    if "completion" not in record and "chosen" in record:
        (prompt, (chosen, rejected), _, _), = read_pair(record, where)
        return [(prompt, [chosen], True, None), (prompt, [rejected], False, None)]
    prompt, completion = text_field(record, "prompt", where), text_field(record, "completion", where)
    label = record.get("label")
    if not isinstance(label, bool):
        raise DataError(f"{where}: field 'label' must be true or false, got {label!r}")
    return [(prompt, [completion], label, None)]


def collate_unpaired(examples: list, pad_token_id: int, max_length) -> dict:
    prompts = [e.prompt_ids for e in examples]
    completions = [e.completion_ids[0] for e in examples]
    batch = padded_rows(prompts, completions, pad_token_id, max_length)
    mismatched = padded_rows(prompts, completions[-1:] + completions[:-1], pad_token_id, max_length)
    batch.update({f"KL_{key}": value for key, value in mismatched.items()})
    batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.bool)
    return batch


@register_format
class TextUnpaired(TextFormat):
    name = "text_unpaired"
    description = "prompt + completion + desirable/undesirable label (TRL unpaired format)"
    read = staticmethod(read_unpaired)
    collate = staticmethod(collate_unpaired)
