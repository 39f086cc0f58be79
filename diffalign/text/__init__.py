"""The LM side: TRL-format data, per-sequence log-probs of causal LMs, the text model adapter.

The text preference methods themselves are plugins in ``diffalign.methods.text``; their losses come
from ``diffalign.objectives``.
"""

from diffalign.text.data import TextCollator, TextDataset, TokenizedExample, build_text_dataset
from diffalign.text.logprobs import SequenceLogps, sequence_logps, token_logps
from diffalign.text.model import TextModel
from diffalign.text.tokenize import extract_prompt, tokenize_completions

__all__ = [
    "SequenceLogps", "TextCollator", "TextDataset", "TextModel", "TokenizedExample", "build_text_dataset",
    "extract_prompt", "sequence_logps", "token_logps", "tokenize_completions",
]
