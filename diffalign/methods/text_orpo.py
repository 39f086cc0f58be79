"""``text-orpo``: ORPO (Hong, Lee, Thorne 2024, arXiv 2403.07691; TRL 1.16 ``experimental.orpo.ORPOTrainer``),
no reference.

Loss: the token-mean NLL over the prompt and chosen tokens + beta x [-log sigmoid(LOR)], the log odds
ratio LOR of the length-averaged completion log-probs (``diffalign.objectives.orpo``). Besides TRL's
metrics it logs ``logps/chosen|rejected``, the summed completion log-probs.

Defaults (TRL 1.16 ``ORPOConfig``): beta (the paper's lambda) 0.1, ``max_length`` 1024.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.text_base import TextMethod, beta_option, max_length_option, with_token_metrics
from diffalign.objectives import ObjectiveOutput, combine_losses, odds_ratio_loss, sft_loss
from diffalign.text.logprobs import SequenceLogps


@dataclass
class TextORPOConfig(MethodConfig):
    beta: float = beta_option("weight lambda of the odds-ratio term (TRL ORPOConfig beta)")
    max_length: int = max_length_option()


@register_method
class TextORPO(TextMethod):
    """ORPO (Hong, Lee, Thorne 2024, arXiv 2403.07691; TRL ``experimental.orpo.ORPOTrainer``):
    token-mean NLL over prompt and chosen tokens + beta * [-log sigmoid(log odds ratio)] on the
    length-averaged completion log-probs."""

    name = "text-orpo"
    summary = "ORPO: SFT on chosen plus an odds-ratio preference term, no reference"
    config_class = TextORPOConfig
    data_format = "text_pairs"
    needs_reference = False

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        attention = batch["attention_mask"]
        per_token = model.policy_token_logps(batch["input_ids"], attention, attention)
        completion = batch["completion_mask"][:, 1:]
        chosen, rejected = SequenceLogps((per_token * completion).sum(1), completion.sum(1).float()).split()
        half = chosen.sum.shape[0]
        nll = sft_loss(per_token[:half].sum(1), lengths=attention[:half, 1:].sum(1).float())
        terms = [("odds_ratio", odds_ratio_loss(chosen.mean, rejected.mean, beta=self.config.beta), 1.0), ("nll", nll, 1.0)]
        output = combine_losses(terms)
        output.metrics["logps/chosen"] = chosen.sum.detach().mean()
        output.metrics["logps/rejected"] = rejected.sum.detach().mean()
        return with_token_metrics(output, batch)
