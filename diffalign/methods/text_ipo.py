"""``text-ipo``: IPO (Azar et al. 2023, arXiv 2310.12036) with TRL's per-token normalisation, i.e.
``text-dpo`` with TRL 1.16 ``loss_type="ipo"``.

Loss, per pair, with the log-ratios u = l - r of the summed completion log-probs and the completion
lengths n: ``(u_w/n_w - u_l/n_l - 1/(2 tau))^2`` (IPO eq. 17 on length-averaged log-ratios, as TRL).

Defaults: ``loss_type`` ipo, tau = beta = 0.1; every other option is ``text-dpo``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffalign.methods.base import register_method
from diffalign.methods.text_dpo import TextDPO, TextDPOConfig, dpo_loss_type_option


@dataclass
class TextIPOConfig(TextDPOConfig):
    loss_type: list[str] = dpo_loss_type_option("ipo")


@register_method
class TextIPO(TextDPO):
    """IPO (Azar et al. 2023, arXiv 2310.12036) with TRL's per-token normalisation."""

    name = "text-ipo"
    summary = "IPO: squared loss on length-normalised log-ratio margins (TRL loss_type='ipo')"
    config_class = TextIPOConfig
