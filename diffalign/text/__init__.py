"""The LM side: TRL-style tokenisation, per-sequence log-probs of causal LMs, the text model adapter.

The text data formats live in ``diffalign.data.formats`` (``text_pairs``, ``text_unpaired``,
``text_ranked``); the text preference methods are plugins, one module each (``diffalign.methods.text_dpo``,
``text_kto``, ...); their losses come from ``diffalign.objectives``.
"""

from diffalign.text.logprobs import SequenceLogps, sequence_logps, token_logps
from diffalign.text.model import TextModel
from diffalign.text.tokenize import extract_prompt, tokenize_completions

__all__ = ["SequenceLogps", "TextModel", "extract_prompt", "sequence_logps", "token_logps", "tokenize_completions"]
