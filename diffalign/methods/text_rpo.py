"""``text-rpo``: iterative RPO (Pang et al. 2024, arXiv 2404.19733), i.e. ``text-dpo`` with TRL 1.16's
``loss_type=["sigmoid", "sft"]`` (the removed ``rpo_alpha``; TRL docs).

Loss: ``-log sigmoid(beta ((l_w - r_w) - (l_l - r_l))) + alpha * NLL``, the NLL being the token-mean
negative log-likelihood of the chosen completions.

Defaults: ``loss_weights`` [1.0, 1.0] (alpha = 1.0, the sft weight), beta 0.1; every other option is
``text-dpo``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from diffalign.methods.base import register_method
from diffalign.methods.text_dpo import LOSS_WEIGHTS_HELP, TextDPO, TextDPOConfig, dpo_loss_type_option
from diffalign.options import option


@dataclass
class TextRPOConfig(TextDPOConfig):
    loss_type: list[str] = dpo_loss_type_option("sigmoid", "sft")
    loss_weights: Optional[list[float]] = option(LOSS_WEIGHTS_HELP + "; the sft weight is RPO's alpha",
                                                 default_factory=lambda: [1.0, 1.0], ge=0)


@register_method
class TextRPO(TextDPO):
    """Iterative RPO (Pang et al. 2024, arXiv 2404.19733): DPO + alpha * NLL on chosen, TRL's
    ``loss_type=["sigmoid", "sft"]`` (the removed ``rpo_alpha``)."""

    name = "text-rpo"
    summary = "RPO: DPO plus a weighted NLL on the chosen completions (TRL sigmoid + sft)"
    config_class = TextRPOConfig
