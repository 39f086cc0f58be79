"""``text-kto``: KTO (Ethayarajh et al. 2024, arXiv 2402.01306; TRL 1.16 ``KTOTrainer``) and
APO-zero-unpaired (D'Oosterlinck et al. 2024, arXiv 2408.06266) on unpaired completions.

Loss (``diffalign.objectives.unpaired``), with u = l - r the log-ratio of a completion's summed
log-probs and z0 the reference point: desirable lambda_D [1 - s(beta (u - z0))], undesirable
lambda_U [1 - s(beta (z0 - u))] (``apo_zero_unpaired``: the same with z0 = 0). z0 is
estimated without gradient from the mismatched completions (the ``KL_`` rows: prompt i with completion
i-1, rotated within each micro-batch, a deliberate difference from TRL), averaged across processes.

Defaults (TRL 1.16 ``KTOConfig``): ``loss_type`` kto, beta 0.1, desirable and undesirable weights 1.0,
``max_length`` 1024.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.text_base import TextMethod, beta_option, max_length_option, policy_scores, reference_scores, with_token_metrics
from diffalign.objectives import ObjectiveOutput, UNPAIRED_LOSSES, kto_ref_point, unpaired_loss, unpaired_step_metrics
from diffalign.options import option


@dataclass
class TextKTOConfig(MethodConfig):
    beta: float = beta_option()
    loss_type: str = option("unpaired loss (TRL KTOConfig)", default="kto", choices=UNPAIRED_LOSSES)
    desirable_weight: float = option("weight of the desirable examples' losses (TRL)", default=1.0, gt=0)
    undesirable_weight: float = option("weight of the undesirable examples' losses (TRL)", default=1.0, gt=0)
    max_length: int = max_length_option()


@register_method
class TextKTO(TextMethod):
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306; TRL ``KTOTrainer``). The reference point z0 is
    estimated from the micro-batch's mismatched completions (prompt i with completion i-1), averaged
    across processes. As TRL logs them, a step's ``rewards/chosen|rejected`` and ``logps/chosen|rejected``
    are means over all its desirable / undesirable examples (whatever micro-batch or process they fell
    in) and ``rewards/margins`` is their difference."""

    name = "text-kto"
    summary = "KTO: unpaired desirable/undesirable completions with a KL reference point"
    config_class = TextKTOConfig
    data_format = "text_unpaired"
    needs_reference = True

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        c = self.config
        policy = policy_scores(model, batch)
        ref = reference_scores(model, batch)
        ref_point = None
        if c.loss_type == "kto":
            with torch.no_grad():
                mismatched = policy_scores(model, batch, "KL_").sum
            ref_point = kto_ref_point(mismatched, reference_scores(model, batch, "KL_"), all_reduce_mean=_all_reduce_mean)
        output = unpaired_loss(policy.sum, ref, batch["label"], loss_type=c.loss_type, beta=c.beta, ref_point=ref_point,
                               desirable_weight=c.desirable_weight, undesirable_weight=c.undesirable_weight)
        return with_token_metrics(output, batch)

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return unpaired_step_metrics(metrics)  # margins = the step's chosen - rejected means, as TRL


def _all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / torch.distributed.get_world_size()
    return value
