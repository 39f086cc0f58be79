"""Per-sequence log-probs of causal-LM completions (the text score of DESIGN.md §3).

For rows of ``input_ids`` with a ``loss_mask`` (1 on the tokens that count: the completion, or prompt
and completion for ORPO's NLL), the score is

    logp = sum_{t : mask_t = 1} log pi(x_t | x_<t),    n = sum_t mask_t

as TRL 1.16 computes it (``per_token_logps`` summed under the shifted completion mask). Only the
positions that count go through the fp32 log-softmax, so the [rows, T, vocab] logits are never
upcast as a whole. The first token of a row has no prediction and never counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceLogps:
    """Summed log-probs ``sum`` (R,) (with grad when computed with grad) and token counts ``lengths`` (R,)."""

    sum: torch.Tensor
    lengths: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Per-token mean log-prob (SimPO, ORPO); a row with no counted token gives 0."""
        return self.sum / self.lengths.clamp(min=1.0)

    def split(self) -> tuple["SequenceLogps", "SequenceLogps"]:
        """The ``[chosen; rejected]`` halves of 2B stacked rows."""
        half = self.sum.shape[0] // 2
        return SequenceLogps(self.sum[:half], self.lengths[:half]), SequenceLogps(self.sum[half:], self.lengths[half:])


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """(R, T-1) fp32 log-probs of tokens 1..T-1 under ``logits`` (R, T, V), zero where the mask is 0."""
    mask = loss_mask[:, 1:].bool()
    selected = logits[:, :-1][mask].float()
    targets = input_ids[:, 1:][mask]
    values = selected.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(selected, dim=-1)
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> SequenceLogps:
    """One forward of ``model`` over all rows; summed log-probs of the ``loss_mask`` tokens."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    per_token = token_logps(logits, input_ids, loss_mask)
    return SequenceLogps(per_token.sum(dim=1), loss_mask[:, 1:].sum(dim=1).float())
