"""``text-cpo``: CPO (Xu et al. 2024, arXiv 2401.08417; TRL 1.16 ``experimental.cpo.CPOTrainer``), reference-free.

Loss: a preference term on the policy's summed completion log-probs l (the reference dropped, u = l;
``pairwise_loss`` without reference scores) plus ``cpo_alpha`` x the token-mean NLL of the chosen
completions. Per pair, with D = l_w - l_l::

    sigmoid   -(1-e) log s(beta D) - e log s(-beta D)        (pairwise ``cdpo``: TRL CPO smooths sigmoid)
    hinge     max(0, 1 - beta D)
    ipo       (l_w/n_w - l_l/n_l - 1/(2 beta))^2            (on length-averaged log-probs)

SimPO (TRL ``loss_type="simpo"``) is ``text-simpo``.

Defaults (TRL 1.16 ``CPOConfig``): ``loss_type`` sigmoid, beta 0.1, label smoothing 0, ``cpo_alpha`` 1.0,
``max_length`` 1024.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.text_base import ReferenceFreePairMethod, beta_option, label_smoothing_option, max_length_option
from diffalign.objectives import pairwise_loss
from diffalign.options import OptionError, option

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


@dataclass
class TextCPOConfig(MethodConfig):
    beta: float = beta_option()
    loss_type: str = option("preference loss (TRL CPOConfig; simpo is text-simpo)", default="sigmoid",
                            choices=CPO_LOSS_TYPES)
    label_smoothing: float = label_smoothing_option("sigmoid")
    cpo_alpha: float = option("weight of the token-mean NLL of chosen (TRL cpo_alpha)", default=1.0, ge=0)
    max_length: int = max_length_option()

    def __post_init__(self):
        super().__post_init__()
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise OptionError("label_smoothing", f"is only used by --loss-type sigmoid, not {self.loss_type}")


@register_method
class TextCPO(ReferenceFreePairMethod):
    """CPO (Xu et al. 2024, arXiv 2401.08417; TRL ``experimental.cpo.CPOTrainer``): a reference-free
    preference term (summed log-probs; averaged for ipo) + cpo_alpha * token-mean chosen NLL."""

    name = "text-cpo"
    summary = "CPO: reference-free preference loss plus an NLL term on chosen (TRL CPOTrainer)"
    config_class = TextCPOConfig

    @property
    def nll_weight(self) -> float:
        return self.config.cpo_alpha

    def _preference(self, chosen, rejected):
        c = self.config
        if c.loss_type not in ("sigmoid", "hinge", "ipo"):
            raise ValueError(f"text-cpo loss_type must be sigmoid, hinge or ipo (SimPO is text-simpo), got {c.loss_type!r}")
        loss_type = "cdpo" if c.loss_type == "sigmoid" else c.loss_type
        return pairwise_loss(chosen.sum, rejected.sum, loss_type=loss_type, beta=c.beta,
                             label_smoothing=c.label_smoothing if loss_type == "cdpo" else 0.0,
                             chosen_lengths=chosen.lengths, rejected_lengths=rejected.lengths)
