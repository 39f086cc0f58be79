"""``text-simpo``: SimPO (Meng, Xia, Chen 2024, arXiv 2405.14734; princeton-nlp/SimPO ``simpo_trainer.py``),
reference-free.

Loss, per pair, with the summed completion log-probs l and lengths n (``pairwise_loss`` ``simpo``)::

    -(1-e) log s(beta (l_w/n_w - l_l/n_l) - gamma) - e log s(-(beta (l_w/n_w - l_l/n_l) - gamma))

plus ``sft_weight`` x the token-mean NLL of the chosen completions.

Defaults (SimPO repo, Llama-3-base): beta 2.0, gamma 1.0 (gamma_beta_ratio 0.5 x beta 2.0), label
smoothing 0, ``sft_weight`` 0; ``max_length`` 1024 (TRL).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.text_base import ReferenceFreePairMethod, beta_option, label_smoothing_option, max_length_option
from diffalign.objectives import pairwise_loss
from diffalign.options import option


@dataclass
class TextSimPOConfig(MethodConfig):
    beta: float = beta_option("temperature beta of the length-normalised margin (SimPO repo: 2.0)", default=2.0)
    gamma: float = option("target reward margin (SimPO repo: gamma_beta_ratio 0.5 x beta 2.0)", default=1.0, ge=0)
    label_smoothing: float = label_smoothing_option("the SimPO loss")
    sft_weight: float = option("weight of the token-mean NLL of chosen (SimPO repo sft_weight)", default=0.0, ge=0)
    max_length: int = max_length_option()


@register_method
class TextSimPO(ReferenceFreePairMethod):
    """SimPO (Meng, Xia, Chen 2024, arXiv 2405.14734; princeton-nlp/SimPO ``simpo_trainer.py``)."""

    name = "text-simpo"
    summary = "SimPO: reference-free, length-normalised sigmoid loss with a target margin gamma"
    config_class = TextSimPOConfig

    @property
    def nll_weight(self) -> float:
        return self.config.sft_weight

    def _preference(self, chosen, rejected):
        c = self.config
        return pairwise_loss(chosen.sum, rejected.sum, loss_type="simpo", beta=c.beta, gamma=c.gamma,
                             label_smoothing=c.label_smoothing, chosen_lengths=chosen.lengths, rejected_lengths=rejected.lengths)
