"""``text-lipo``: LiPO-lambda (Liu et al. 2024, arXiv 2402.01878) on ranked lists: ``prompt``,
``completions``, ``scores`` (the graded labels psi, higher is better).

Loss (``diffalign.objectives.listwise``), per prompt, with s_i = beta (l_i - r_i) the scaled log-ratios
of the summed completion log-probs::

    L = sum_{i, j: psi_i > psi_j} Delta_ij [-log sigmoid(s_i - s_j)]    (LambdaLoss weights Delta_ij)

averaged over prompts; lists shorter than the batch's longest are padded and masked (``valid``).

Defaults: beta 0.1 (the paper's value not verified here), ``max_length`` 1024 (TRL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.text_base import TextMethod, beta_option, max_length_option, policy_scores, reference_scores, with_token_metrics
from diffalign.objectives import ObjectiveOutput, lipo_lambda_loss


@dataclass
class TextLiPOConfig(MethodConfig):
    beta: float = beta_option("temperature beta of the listwise scores")
    max_length: int = max_length_option()


@register_method
class TextLiPO(TextMethod):
    """LiPO-lambda (Liu et al. 2024, arXiv 2402.01878) on ranked lists: ``prompt``, ``completions``,
    ``scores`` (the graded labels psi, higher is better)."""

    name = "text-lipo"
    summary = "LiPO-lambda: listwise preference optimisation with LambdaLoss weights on ranked completions"
    config_class = TextLiPOConfig
    data_format = "text_ranked"
    needs_reference = True

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        valid = batch["valid"]
        policy = torch.zeros(valid.shape, device=valid.device).masked_scatter(valid, policy_scores(model, batch).sum)
        ref = torch.zeros(valid.shape, device=valid.device).masked_scatter(valid, reference_scores(model, batch))
        output = lipo_lambda_loss(policy, ref, batch["labels"], valid, beta=self.config.beta)
        return with_token_metrics(output, batch)
