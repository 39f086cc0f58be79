"""Modality-agnostic preference objectives on per-sample log-likelihood scores (DESIGN.md §3).

Every function takes per-sample score tensors ((B,) pairs, (N,) unpaired examples, (B, K) lists)
and returns an ``ObjectiveOutput`` (``loss``, ``losses``, ``metrics`` named as TRL names them). This
package imports only torch.

- ``pairwise_loss``: DPO and its TRL 1.16 ``loss_type`` family, cDPO, SimPO, CPO (reference-free);
  ``dpo_loss`` is its sigmoid case with a reference.
- ``odds_ratio_loss``: ORPO's term; ``unpaired_loss`` + ``kto_ref_point``: KTO;
  ``lipo_lambda_loss``: LiPO-lambda; ``sft_loss``: the NLL term (RPO, CPO, ORPO);
  ``combine_losses``: weighted sums; ``mapo_loss``: MaPO (diffusion);
  ``smoothed_preference_weight``: SmPO's per-pair weight from reward scores, for any pairwise loss.
"""

from diffalign.objectives.combine import combine_losses
from diffalign.objectives.dpo import dpo_loss
from diffalign.objectives.listwise import lambda_weights, lipo_lambda_loss
from diffalign.objectives.mapo import bose_link, mapo_loss
from diffalign.objectives.metrics import preference_metrics
from diffalign.objectives.orpo import log1mexp, odds_ratio_loss
from diffalign.objectives.output import ObjectiveOutput
from diffalign.objectives.pairwise import PAIRWISE_LOSSES, f_divergence_score, pairwise_loss
from diffalign.objectives.sft import sft_loss
from diffalign.objectives.smoothing import order_by_score, smoothed_preference, smoothed_preference_weight, smoothing_weight
from diffalign.objectives.unpaired import UNPAIRED_LOSSES, kto_ref_point, unpaired_loss, unpaired_step_metrics

__all__ = [
    "ObjectiveOutput",
    "PAIRWISE_LOSSES",
    "UNPAIRED_LOSSES",
    "bose_link",
    "combine_losses",
    "dpo_loss",
    "f_divergence_score",
    "kto_ref_point",
    "lambda_weights",
    "lipo_lambda_loss",
    "log1mexp",
    "mapo_loss",
    "odds_ratio_loss",
    "pairwise_loss",
    "preference_metrics",
    "order_by_score",
    "sft_loss",
    "smoothed_preference",
    "smoothed_preference_weight",
    "smoothing_weight",
    "unpaired_loss",
    "unpaired_step_metrics",
]
