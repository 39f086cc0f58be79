"""What the text-LM preference methods share (text_objectives.md §3-§5): their base class, the options
several configs declare, the policy's and the reference's per-sequence scores of a batch, the token
metrics, and the base of the reference-free pair methods (SimPO, CPO).

Every text method reads TRL-format data (``diffalign.text.data``), computes per-sequence log-probs with one
forward over the stacked rows (``diffalign.text.logprobs``) and hands them to ``diffalign.objectives``.
Defaults are TRL 1.16's (``DPOConfig``, ``KTOConfig``, ``CPOConfig``, ``ORPOConfig``) unless noted. One
module per method, each with its loss, defaults and sources: ``text_dpo``, ``text_ipo``, ``text_rpo``
(configured DPO), ``text_simpo``, ``text_cpo``, ``text_orpo``, ``text_kto``, ``text_lipo``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from diffalign.methods.base import Method
from diffalign.objectives import ObjectiveOutput, combine_losses, sft_loss
from diffalign.options import option
from diffalign.text.logprobs import SequenceLogps


def beta_option(help: str = "temperature beta of the preference term", default: float = 0.1):
    return option(help, default=default, gt=0)


def max_length_option():
    """Every text config declares ``max_length``: the training glue tokenizes with it."""
    return option("truncate each prompt + completion row to this many tokens (TRL max_length)", default=1024, ge=2)


def label_smoothing_option(used_by: str):
    return option(f"label smoothing eps, the probability that a preference is flipped (used by {used_by})",
                  default=0.0, ge=0, lt=0.5)


class TextMethod(Method):
    """Base of the text methods: they train a causal LM (``diffalign.text.TextModel``)."""

    modality = "text"


def reference_scores(model, batch: dict[str, Any], prefix: str = "") -> torch.Tensor:
    """Reference scores of the batch rows: precomputed ones from the data, else a reference forward."""
    if not prefix and "ref_logps" in batch:
        return batch["ref_logps"]
    return model.reference_logps(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}completion_mask"]).sum


def policy_scores(model, batch: dict[str, Any], prefix: str = "") -> SequenceLogps:
    """The policy's summed completion log-probs (and lengths) of the batch rows (``prefix`` ``KL_``: KTO's mismatched ones)."""
    return model.policy_logps(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}completion_mask"])


def with_token_metrics(output: ObjectiveOutput, batch: dict[str, Any]) -> ObjectiveOutput:
    output.metrics["num_tokens"] = batch["attention_mask"].sum().float()
    return output


class ReferenceFreePairMethod(TextMethod):
    """A reference-free preference term plus ``nll_weight`` x the token-mean NLL of chosen."""

    data_format = "text_pairs"
    needs_reference = False

    @property
    @abstractmethod
    def nll_weight(self) -> float: ...

    @abstractmethod
    def _preference(self, chosen: SequenceLogps, rejected: SequenceLogps) -> ObjectiveOutput: ...

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        chosen, rejected = policy_scores(model, batch).split()
        terms = [("preference", self._preference(chosen, rejected), 1.0)]
        if self.nll_weight:
            terms.append(("nll", sft_loss(chosen.sum, lengths=chosen.lengths), self.nll_weight))
        return with_token_metrics(combine_losses(terms), batch)
