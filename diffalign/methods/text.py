"""Text-LM preference methods on the shared objective core (text_objectives.md §3-§5).

Every method reads TRL-format data (``diffalign.text.data``), computes per-sequence log-probs with one
forward over the stacked rows (``diffalign.text.logprobs``) and hands them to ``diffalign.objectives``.
Defaults are TRL 1.16's (``DPOConfig``, ``KTOConfig``, ``CPOConfig``, ``ORPOConfig``) unless noted.

=============  ========================================  ===============================================
method         loss                                      defaults
=============  ========================================  ===============================================
text-dpo       any ``pairwise_loss`` type(s) + weights   TRL DPOConfig: sigmoid, beta 0.1
text-ipo       ``ipo`` (length-normalised, as TRL)       tau = beta = 0.1
text-rpo       sigmoid + alpha * token-mean chosen NLL   alpha 1.0 (Pang et al. 2404.19733; TRL docs)
text-simpo     ``simpo`` (no reference)                  beta 2.0, gamma 1.0 (SimPO repo, Llama-3-base)
text-cpo       reference-free sigmoid + alpha * NLL      TRL CPOConfig: beta 0.1, cpo_alpha 1.0
text-orpo      NLL(prompt + chosen) + odds-ratio term    TRL ORPOConfig: beta (lambda) 0.1
text-kto       ``kto`` / ``apo_zero_unpaired``           TRL KTOConfig: beta 0.1, weights 1.0
text-lipo      LiPO-lambda on ranked lists               beta 0.1 (the paper's value not verified here)
=============  ========================================  ===============================================
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

from diffalign.methods.base import Method, MethodConfig, register_method
from diffalign.objectives import (
    ObjectiveOutput, PAIRWISE_LOSSES, UNPAIRED_LOSSES, combine_losses, kto_ref_point, lipo_lambda_loss, odds_ratio_loss,
    pairwise_loss, sft_loss, unpaired_loss, unpaired_step_metrics,
)
from diffalign.objectives.pairwise import F_DIVERGENCES
from diffalign.options import OptionError, option
from diffalign.text.logprobs import SequenceLogps

DPO_LOSS_TYPES = tuple(name for name, spec in PAIRWISE_LOSSES.items() if spec.reference != "forbidden") + ("sft",)
"""``text-dpo`` loss terms: the pairwise losses that can use a reference, and ``sft``."""
LABEL_SMOOTHED = tuple(name for name, spec in PAIRWISE_LOSSES.items() if spec.label_smoothing and name in DPO_LOSS_TYPES)
F_DIVERGENCE_LOSSES = tuple(name for name, spec in PAIRWISE_LOSSES.items() if spec.f_divergence)
CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def _beta(help: str = "temperature beta of the preference term", default: float = 0.1):
    return option(help, default=default, gt=0)


def _max_length():
    return option("truncate each prompt + completion row to this many tokens (TRL max_length)", default=1024, ge=2)


def _label_smoothing(used_by: str):
    return option(f"label smoothing eps, the probability that a preference is flipped (used by {used_by})",
                  default=0.0, ge=0, lt=0.5)


def _dpo_loss_type(*default: str):
    return option("loss terms, summed with --loss-weights (TRL DPOConfig loss_type; sft: token-mean NLL of chosen)",
                  default_factory=lambda: list(default), choices=DPO_LOSS_TYPES)


def _reference(model, batch: dict[str, Any], prefix: str = "") -> torch.Tensor:
    """Reference scores of the batch rows: precomputed ones from the data, else a reference forward."""
    if not prefix and "ref_logps" in batch:
        return batch["ref_logps"]
    return model.reference_logps(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}completion_mask"]).sum


def _policy(model, batch: dict[str, Any], prefix: str = "") -> SequenceLogps:
    return model.policy_logps(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}completion_mask"])


def _with_token_metrics(output: ObjectiveOutput, batch: dict[str, Any]) -> ObjectiveOutput:
    output.metrics["num_tokens"] = batch["attention_mask"].sum().float()
    return output


_LOSS_WEIGHTS_HELP = "weight of each loss term, one per --loss-type (default: all 1.0, as TRL)"


@dataclass
class TextDPOConfig(MethodConfig):
    beta: float = _beta("temperature beta (tau for ipo)")
    loss_type: list[str] = _dpo_loss_type("sigmoid")
    loss_weights: Optional[list[float]] = option(_LOSS_WEIGHTS_HELP, default=None, ge=0)
    label_smoothing: float = _label_smoothing(", ".join(LABEL_SMOOTHED) + "; exo_pair needs it > 0")
    f_divergence: str = option("f-DPO divergence of the log-ratios (TRL f_divergence_type; other than reverse_kl: "
                               f"only with {', '.join(F_DIVERGENCE_LOSSES)})", default="reverse_kl", choices=F_DIVERGENCES)
    f_alpha: float = option("alpha of alpha_divergence (TRL f_alpha_divergence_coef)", default=0.5, gt=0, le=1)
    discopop_tau: float = option("temperature of discopop's log-ratio modulation (TRL discopop_tau)", default=0.05, gt=0)
    max_length: int = _max_length()

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
class TextDPO(Method):
    """TRL 1.16 ``DPOTrainer`` semantics: ``loss_type`` is a list of pairwise loss names (or ``sft``,
    the token-mean NLL of the chosen completions) combined with ``loss_weights``."""

    name = "text-dpo"
    summary = "DPO and its TRL loss_type family (sigmoid, ipo, hinge, robust, ...) for causal LMs"
    config_class = TextDPOConfig
    modality = "text"
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
        policy = _policy(model, batch)
        ref = _reference(model, batch)
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
        return _with_token_metrics(combine_losses(outputs), batch)


@dataclass
class TextIPOConfig(TextDPOConfig):
    loss_type: list[str] = _dpo_loss_type("ipo")


@register_method
class TextIPO(TextDPO):
    """IPO (Azar et al. 2023, arXiv 2310.12036) with TRL's per-token normalisation."""

    name = "text-ipo"
    summary = "IPO: squared loss on length-normalised log-ratio margins (TRL loss_type='ipo')"
    config_class = TextIPOConfig


@dataclass
class TextRPOConfig(TextDPOConfig):
    loss_type: list[str] = _dpo_loss_type("sigmoid", "sft")
    loss_weights: Optional[list[float]] = option(_LOSS_WEIGHTS_HELP + "; the sft weight is RPO's alpha",
                                                 default_factory=lambda: [1.0, 1.0], ge=0)


@register_method
class TextRPO(TextDPO):
    """Iterative RPO (Pang et al. 2024, arXiv 2404.19733): DPO + alpha * NLL on chosen, TRL's
    ``loss_type=["sigmoid", "sft"]`` (the removed ``rpo_alpha``)."""

    name = "text-rpo"
    summary = "RPO: DPO plus a weighted NLL on the chosen completions (TRL sigmoid + sft)"
    config_class = TextRPOConfig


@dataclass
class TextSimPOConfig(MethodConfig):
    beta: float = _beta("temperature beta of the length-normalised margin (SimPO repo: 2.0)", default=2.0)
    gamma: float = option("target reward margin (SimPO repo: gamma_beta_ratio 0.5 x beta 2.0)", default=1.0, ge=0)
    label_smoothing: float = _label_smoothing("the SimPO loss")
    sft_weight: float = option("weight of the token-mean NLL of chosen (SimPO repo sft_weight)", default=0.0, ge=0)
    max_length: int = _max_length()


class _ReferenceFreePairs(Method):
    """A reference-free preference term plus ``nll_weight`` x the token-mean NLL of chosen."""

    modality = "text"
    data_format = "text_pairs"
    needs_reference = False

    @property
    @abstractmethod
    def nll_weight(self) -> float: ...

    @abstractmethod
    def _preference(self, chosen: SequenceLogps, rejected: SequenceLogps) -> ObjectiveOutput: ...

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        chosen, rejected = _policy(model, batch).split()
        terms = [("preference", self._preference(chosen, rejected), 1.0)]
        if self.nll_weight:
            terms.append(("nll", sft_loss(chosen.sum, lengths=chosen.lengths), self.nll_weight))
        return _with_token_metrics(combine_losses(terms), batch)


@register_method
class TextSimPO(_ReferenceFreePairs):
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


@dataclass
class TextCPOConfig(MethodConfig):
    beta: float = _beta()
    loss_type: str = option("preference loss (TRL CPOConfig; simpo is text-simpo)", default="sigmoid",
                            choices=CPO_LOSS_TYPES)
    label_smoothing: float = _label_smoothing("sigmoid")
    cpo_alpha: float = option("weight of the token-mean NLL of chosen (TRL cpo_alpha)", default=1.0, ge=0)
    max_length: int = _max_length()

    def __post_init__(self):
        super().__post_init__()
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise OptionError("label_smoothing", f"is only used by --loss-type sigmoid, not {self.loss_type}")


@register_method
class TextCPO(_ReferenceFreePairs):
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


@dataclass
class TextORPOConfig(MethodConfig):
    beta: float = _beta("weight lambda of the odds-ratio term (TRL ORPOConfig beta)")
    max_length: int = _max_length()


@register_method
class TextORPO(Method):
    """ORPO (Hong, Lee, Thorne 2024, arXiv 2403.07691; TRL ``experimental.orpo.ORPOTrainer``):
    token-mean NLL over prompt and chosen tokens + beta * [-log sigmoid(log odds ratio)] on the
    length-averaged completion log-probs."""

    name = "text-orpo"
    summary = "ORPO: SFT on chosen plus an odds-ratio preference term, no reference"
    config_class = TextORPOConfig
    modality = "text"
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
        return _with_token_metrics(output, batch)


@dataclass
class TextKTOConfig(MethodConfig):
    beta: float = _beta()
    loss_type: str = option("unpaired loss (TRL KTOConfig)", default="kto", choices=UNPAIRED_LOSSES)
    desirable_weight: float = option("weight of the desirable examples' losses (TRL)", default=1.0, gt=0)
    undesirable_weight: float = option("weight of the undesirable examples' losses (TRL)", default=1.0, gt=0)
    max_length: int = _max_length()


@register_method
class TextKTO(Method):
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306; TRL ``KTOTrainer``). The reference point z0 is
    estimated from the micro-batch's mismatched completions (prompt i with completion i-1), averaged
    across processes. As TRL logs them, a step's ``rewards/chosen|rejected`` and ``logps/chosen|rejected``
    are means over all its desirable / undesirable examples (whatever micro-batch or process they fell
    in) and ``rewards/margins`` is their difference."""

    name = "text-kto"
    summary = "KTO: unpaired desirable/undesirable completions with a KL reference point"
    config_class = TextKTOConfig
    modality = "text"
    data_format = "text_unpaired"
    needs_reference = True

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        c = self.config
        policy = _policy(model, batch)
        ref = _reference(model, batch)
        ref_point = None
        if c.loss_type == "kto":
            with torch.no_grad():
                mismatched = _policy(model, batch, "KL_").sum
            ref_point = kto_ref_point(mismatched, _reference(model, batch, "KL_"), all_reduce_mean=_all_reduce_mean)
        output = unpaired_loss(policy.sum, ref, batch["label"], loss_type=c.loss_type, beta=c.beta, ref_point=ref_point,
                               desirable_weight=c.desirable_weight, undesirable_weight=c.undesirable_weight)
        return _with_token_metrics(output, batch)

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return unpaired_step_metrics(metrics)  # margins = the step's chosen - rejected means, as TRL


def _all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / torch.distributed.get_world_size()
    return value


@dataclass
class TextLiPOConfig(MethodConfig):
    beta: float = _beta("temperature beta of the listwise scores")
    max_length: int = _max_length()


@register_method
class TextLiPO(Method):
    """LiPO-lambda (Liu et al. 2024, arXiv 2402.01878) on ranked lists: ``prompt``, ``completions``,
    ``scores`` (the graded labels psi, higher is better)."""

    name = "text-lipo"
    summary = "LiPO-lambda: listwise preference optimisation with LambdaLoss weights on ranked completions"
    config_class = TextLiPOConfig
    modality = "text"
    data_format = "text_ranked"
    needs_reference = True

    def compute_loss(self, model, batch, generator=None) -> ObjectiveOutput:
        valid = batch["valid"]
        policy = torch.zeros(valid.shape, device=valid.device).masked_scatter(valid, _policy(model, batch).sum)
        ref = torch.zeros(valid.shape, device=valid.device).masked_scatter(valid, _reference(model, batch))
        output = lipo_lambda_loss(policy, ref, batch["labels"], valid, beta=self.config.beta)
        return _with_token_metrics(output, batch)
