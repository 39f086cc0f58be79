"""``text-dpo``: DPO (Rafailov et al. 2023, arXiv 2305.18290) and its TRL 1.16 ``loss_type`` family for
causal LMs, with TRL ``DPOTrainer`` semantics (``trl/trainer/dpo_trainer.py::_compute_loss``).

Loss: ``loss_type`` is a list of terms summed with ``loss_weights`` (default all 1.0, as TRL). Each term
is a ``pairwise_loss`` (``diffalign.objectives.pairwise``, whose table gives every formula and source)
on the summed completion log-probs of the policy and the reference (precomputed ``ref_*_logps`` from
the data, else a reference forward), or ``sft``: the token-mean NLL of the chosen completions.

Defaults (TRL 1.16 ``DPOConfig``): ``loss_type`` sigmoid, beta 0.1, label smoothing 0, ``f_divergence``
reverse_kl (alpha 0.5), ``discopop_tau`` 0.05, ``max_length`` 1024. ``sigmoid`` refuses label smoothing
(label-smoothed DPO is ``cdpo``). ``text-ipo`` and ``text-rpo`` are this method with other defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.text_base import (
    TextMethod, beta_option, label_smoothing_option, max_length_option, policy_scores, reference_scores, with_token_metrics,
)
from diffalign.objectives import ObjectiveOutput, PAIRWISE_LOSSES, combine_losses, pairwise_loss, sft_loss
from diffalign.objectives.pairwise import F_DIVERGENCES
from diffalign.options import OptionError, option

DPO_LOSS_TYPES = tuple(name for name, spec in PAIRWISE_LOSSES.items() if spec.reference != "forbidden") + ("sft",)
"""``text-dpo`` loss terms: the pairwise losses that can use a reference, and ``sft``."""
LABEL_SMOOTHED = tuple(name for name, spec in PAIRWISE_LOSSES.items() if spec.label_smoothing and name in DPO_LOSS_TYPES)
F_DIVERGENCE_LOSSES = tuple(name for name, spec in PAIRWISE_LOSSES.items() if spec.f_divergence)

LOSS_WEIGHTS_HELP = "weight of each loss term, one per --loss-type (default: all 1.0, as TRL)"


def dpo_loss_type_option(*default: str):
    return option("loss terms, summed with --loss-weights (TRL DPOConfig loss_type; sft: token-mean NLL of chosen)",
                  default_factory=lambda: list(default), choices=DPO_LOSS_TYPES)


@dataclass
class TextDPOConfig(MethodConfig):
    beta: float = beta_option("temperature beta (tau for ipo)")
    loss_type: list[str] = dpo_loss_type_option("sigmoid")
    loss_weights: Optional[list[float]] = option(LOSS_WEIGHTS_HELP, default=None, ge=0)
    label_smoothing: float = label_smoothing_option(", ".join(LABEL_SMOOTHED) + "; exo_pair needs it > 0")
    f_divergence: str = option("f-DPO divergence of the log-ratios (TRL f_divergence_type; other than reverse_kl: "
                               f"only with {', '.join(F_DIVERGENCE_LOSSES)})", default="reverse_kl", choices=F_DIVERGENCES)
    f_alpha: float = option("alpha of alpha_divergence (TRL f_alpha_divergence_coef)", default=0.5, gt=0, le=1)
    discopop_tau: float = option("temperature of discopop's log-ratio modulation (TRL discopop_tau)", default=0.05, gt=0)
    max_length: int = max_length_option()

    def __post_init__(self):
        super().__post_init__()
        losses = self.loss_type
        if len(set(losses)) != len(losses):
            raise OptionError("loss_type", f"must not repeat a loss, got {' '.join(losses)}")
        weights = self.loss_weights
        if weights is not None:
            if len(weights) != len(losses):
                raise OptionError("loss_weights", f"needs one weight per --loss-type ({len(losses)}), got {len(weights)}")
            if not any(weights):
                raise OptionError("loss_weights", "must not all be 0 (nothing would be trained)")
        if self.label_smoothing and not set(losses) & set(LABEL_SMOOTHED):
            raise OptionError("label_smoothing", f"is only used by loss types {', '.join(LABEL_SMOOTHED)} "
                                                 f"(label-smoothed DPO is cdpo), not by {' '.join(losses)}")
        if "exo_pair" in losses and not self.label_smoothing:
            raise OptionError("label_smoothing", "must be > 0 with exo_pair (1e-3 recommended), got 0.0")
        unsupported = [name for name in losses if name != "sft" and name not in F_DIVERGENCE_LOSSES]
        if self.f_divergence != "reverse_kl" and (unsupported or losses == ["sft"]):
            unsupported = unsupported or ["sft"]
            raise OptionError("f_divergence", f"{self.f_divergence} is only supported by loss types "
                                              f"{', '.join(F_DIVERGENCE_LOSSES)}, not by {' '.join(unsupported)}")
        defaults = {field.name: field.default for field in fields(TextDPOConfig)}
        if self.f_alpha != defaults["f_alpha"] and self.f_divergence != "alpha_divergence":
            raise OptionError("f_alpha", "is only used with --f-divergence alpha_divergence")
        if self.discopop_tau != defaults["discopop_tau"] and "discopop" not in losses:
            raise OptionError("discopop_tau", "is only used with --loss-type discopop")


@register_method
class TextDPO(TextMethod):
    """TRL 1.16 ``DPOTrainer`` semantics: ``loss_type`` is a list of pairwise loss names (or ``sft``,
    the token-mean NLL of the chosen completions) combined with ``loss_weights``."""

    name = "text-dpo"
    summary = "DPO and its TRL loss_type family (sigmoid, ipo, hinge, robust, ...) for causal LMs"
    config_class = TextDPOConfig
    data_format = "text_pairs"
    needs_reference = True

    def __init__(self, config: Optional[TextDPOConfig] = None):
        super().__init__(config)
        weights = self.config.loss_weights or [1.0] * len(self.config.loss_type)
        if len(weights) != len(self.config.loss_type):
            raise ValueError(f"loss_weights has {len(weights)} values for {len(self.config.loss_type)} loss types")
        for loss_type in self.config.loss_type:
            if loss_type != "sft" and (loss_type not in PAIRWISE_LOSSES or PAIRWISE_LOSSES[loss_type].reference == "forbidden"):
                allowed = sorted(k for k, s in PAIRWISE_LOSSES.items() if s.reference != "forbidden")
                raise ValueError(f"{self.name}: unknown loss_type {loss_type!r}; choose from {allowed + ['sft']}")
        self.terms = list(zip(self.config.loss_type, weights))

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        policy = policy_scores(model, batch)
        ref = reference_scores(model, batch)
        chosen, rejected = policy.split()
        half = chosen.sum.shape[0]
        c = self.config
        outputs = []
        for loss_type, weight in self.terms:
            if loss_type == "sft":
                term = sft_loss(chosen.sum, lengths=chosen.lengths)
            else:
                term = pairwise_loss(
                    chosen.sum, rejected.sum, ref[:half], ref[half:], loss_type=loss_type, beta=c.beta,
                    label_smoothing=c.label_smoothing if PAIRWISE_LOSSES[loss_type].label_smoothing else 0.0,
                    chosen_lengths=chosen.lengths, rejected_lengths=rejected.lengths, f_divergence=c.f_divergence,
                    f_alpha=c.f_alpha, discopop_tau=c.discopop_tau,
                )
            outputs.append((loss_type, term, weight))
        if outputs[0][0] == "sft" and len(outputs) > 1:  # keep the reward metrics of a preference term
            outputs = outputs[1:] + outputs[:1]
        return with_token_metrics(combine_losses(outputs), batch)
