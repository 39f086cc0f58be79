r"""Pairwise preference losses on per-sample scores, one implementation each (text_objectives.md §3).

Notation: l_w, l_l are the policy scores of the chosen / rejected sample (summed completion log-probs
for text, the denoising log-likelihood proxy for diffusion), r_w, r_l the reference scores, n_w, n_l
the completion lengths (None for diffusion, i.e. n = 1), u = l - r the log-ratio, phi the f-DPO
score transform (identity for the default reverse KL), and Delta = phi(u_w) - phi(u_l), divided per
side by n for the length-normalised losses. With beta the temperature (tau for IPO), eps the label
smoothing and softplus(-x) = -log sigmoid(x):

=============  =====================================================================  =========================
loss_type      per-pair loss                                                          source
=============  =====================================================================  =========================
sigmoid        -log s(b D)                                                            DPO, 2305.18290 eq. 7
cdpo           -(1-e) log s(b D) - e log s(-b D)                                      cDPO note; TRL <= 0.28
robust         [-(1-e) log s(b D) + e log s(-b D)] / (1 - 2e)                         rDPO, 2403.00409
hinge          max(0, 1 - b D)                                                        SLiC 2305.10425 / RSO
ipo            (phi_w/n_w - phi_l/n_l - 1/(2 tau))^2                                  IPO, 2310.12036 eq. 17
exo_pair       q [log q - log(1-e)] + (1-q) [log(1-q) - log e],  q = s(b D)           EXO, 2402.00856 eq. 16
nca_pair       -log s(b u_w) - 1/2 log s(-b u_w) - 1/2 log s(-b u_l)                  NCA, 2402.05369
bco_pair       -log s(b u_w) - log s(-b u_l)                                          BCO, 2404.04656 (no delta)
sppo_hard      (u_w - 1/(2b))^2 + (u_l + 1/(2b))^2                                    SPPO, 2405.00675 eq. 4.7
aot            cdpo on sort(l_w - l_l) - sort(r_w - r_l)  (batch-coupled)             AOT, 2406.05882
aot_unpaired   cdpo on sort(u_w) - sort(u_l)  (batch-coupled)                         AOT, 2406.05882
apo_zero       1 - s(b u_w) + s(b u_l)                                                APO, 2408.06266 eq. 7
apo_down       s(b u_w) + 1 - s(b (u_w - u_l))                                        APO, 2408.06266 eq. 8
discopop       (1-m) [-log s(z)] + m exp(-z),  z = b D,  m = s(z / tau_d)             DiscoPOP, 2406.08414 eq. 5
sigmoid_norm   -log s(b (phi_w/n_w - phi_l/n_l))                                      SimPO App. I "DPO w/ LN"
simpo          -(1-e) log s(b (l_w/n_w - l_l/n_l) - g) - e log s(-(...))  (no ref)    SimPO, 2405.14734
=============  =====================================================================  =========================

The first fourteen names and their arithmetic are TRL 1.16 ``DPOConfig.loss_type`` values
(``trl/trainer/dpo_trainer.py::_compute_loss``); ``sft`` is ``diffalign.objectives.sft_loss``. Two
TRL 1.16 facts differ from older TRL: ``sigmoid`` ignores label smoothing (cDPO is ``cdpo`` here;
TRL <= 0.28's ``sigmoid`` with eps > 0), and ``bco_pair`` has no running-mean shift.

Without reference scores (``ref_*_logps=None``) ``sigmoid``/``cdpo``, ``hinge`` and ``ipo`` become
TRL's ``CPOTrainer`` losses of the same names (CPO, 2401.08417: the reference is dropped, u = l; IPO
on length-averaged scores), and ``simpo`` is ``CPOTrainer(loss_type="simpo")`` = the SimPO repo's
``simpo_loss`` with gamma = gamma_beta_ratio * beta. The other losses need a reference.

Metrics (TRL names): ``rewards/chosen|rejected`` = b * u (summed log-ratios, TRL DPOTrainer, for
every loss type), or b * l (b * l / n for the length-normalised losses) without a reference
(TRL CPOTrainer); ``rewards/margins``, strict ``rewards/accuracies``, ``logps/chosen|rejected``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from diffalign.objectives.metrics import preference_metrics
from diffalign.objectives.output import ObjectiveOutput, as_float32, check_same_shape

Beta = Union[float, torch.Tensor]

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass
class _Pair:
    """The per-pair quantities every loss reads (fp32, reference detached)."""

    beta: Beta
    label_smoothing: float
    gamma: float
    discopop_tau: float
    u_w: torch.Tensor  # log-ratio (or the policy score without a reference)
    u_l: torch.Tensor
    delta: torch.Tensor  # phi(u_w)[/n_w] - phi(u_l)[/n_l]
    policy_margin: torch.Tensor  # l_w - l_l
    ref_margin: Optional[torch.Tensor]  # r_w - r_l


def _smoothed_sigmoid(logits: torch.Tensor, eps: float) -> torch.Tensor:
    return (1 - eps) * F.softplus(-logits) + eps * F.softplus(logits)


def _sigmoid(p: _Pair) -> torch.Tensor:
    return F.softplus(-p.beta * p.delta)


def _cdpo(p: _Pair) -> torch.Tensor:
    return _smoothed_sigmoid(p.beta * p.delta, p.label_smoothing)


def _robust(p: _Pair) -> torch.Tensor:
    eps = p.label_smoothing
    z = p.beta * p.delta
    return ((1 - eps) * F.softplus(-z) - eps * F.softplus(z)) / (1 - 2 * eps)


def _hinge(p: _Pair) -> torch.Tensor:
    return torch.relu(1 - p.beta * p.delta)


def _ipo(p: _Pair) -> torch.Tensor:
    return (p.delta - 1 / (2 * p.beta)) ** 2


def _exo_pair(p: _Pair) -> torch.Tensor:
    eps = p.label_smoothing
    z = p.beta * p.delta
    q = torch.sigmoid(z)
    return q * (F.logsigmoid(z) - math.log1p(-eps)) + (1 - q) * (F.logsigmoid(-z) - math.log(eps))


def _nca_pair(p: _Pair) -> torch.Tensor:
    zw, zl = p.beta * p.u_w, p.beta * p.u_l
    return F.softplus(-zw) + 0.5 * F.softplus(zw) + 0.5 * F.softplus(zl)


def _bco_pair(p: _Pair) -> torch.Tensor:
    return F.softplus(-p.beta * p.u_w) + F.softplus(p.beta * p.u_l)


def _sppo_hard(p: _Pair) -> torch.Tensor:
    return (p.u_w - 0.5 / p.beta) ** 2 + (p.u_l + 0.5 / p.beta) ** 2


def _aot(p: _Pair) -> torch.Tensor:
    delta = torch.sort(p.policy_margin).values - torch.sort(p.ref_margin).values
    return _smoothed_sigmoid(p.beta * delta, p.label_smoothing)


def _aot_unpaired(p: _Pair) -> torch.Tensor:
    delta = torch.sort(p.u_w).values - torch.sort(p.u_l).values
    return _smoothed_sigmoid(p.beta * delta, p.label_smoothing)


def _apo_zero(p: _Pair) -> torch.Tensor:
    return 1 - torch.sigmoid(p.beta * p.u_w) + torch.sigmoid(p.beta * p.u_l)


def _apo_down(p: _Pair) -> torch.Tensor:
    return torch.sigmoid(p.beta * p.u_w) + 1 - torch.sigmoid(p.beta * (p.u_w - p.u_l))


def _discopop(p: _Pair) -> torch.Tensor:
    z = p.beta * p.delta
    modulation = torch.sigmoid(z / p.discopop_tau)
    return (1 - modulation) * F.softplus(-z) + modulation * torch.exp(-z)


def _simpo(p: _Pair) -> torch.Tensor:
    return _smoothed_sigmoid(p.beta * p.delta - p.gamma, p.label_smoothing)


@dataclass(frozen=True)
class PairwiseLossSpec:
    """What a loss type reads.

    reference: "required", "optional" (without it the CPO reference-free form) or "forbidden".
    length_normalized: Delta is built from phi(u) / n when lengths are given.
    """

    fn: Callable[[_Pair], torch.Tensor]
    reference: str
    label_smoothing: bool = False
    length_normalized: bool = False
    f_divergence: bool = False
    batch_coupled: bool = False


PAIRWISE_LOSSES: dict[str, PairwiseLossSpec] = {
    "sigmoid": PairwiseLossSpec(_sigmoid, "optional", f_divergence=True),
    "cdpo": PairwiseLossSpec(_cdpo, "optional", label_smoothing=True, f_divergence=True),
    "robust": PairwiseLossSpec(_robust, "required", label_smoothing=True, f_divergence=True),
    "hinge": PairwiseLossSpec(_hinge, "optional", f_divergence=True),
    "ipo": PairwiseLossSpec(_ipo, "optional", length_normalized=True, f_divergence=True),
    "exo_pair": PairwiseLossSpec(_exo_pair, "required", label_smoothing=True, f_divergence=True),
    "nca_pair": PairwiseLossSpec(_nca_pair, "required"),
    "bco_pair": PairwiseLossSpec(_bco_pair, "required"),
    "sppo_hard": PairwiseLossSpec(_sppo_hard, "required"),
    "aot": PairwiseLossSpec(_aot, "required", label_smoothing=True, batch_coupled=True),
    "aot_unpaired": PairwiseLossSpec(_aot_unpaired, "required", label_smoothing=True, batch_coupled=True),
    "apo_zero": PairwiseLossSpec(_apo_zero, "required"),
    "apo_down": PairwiseLossSpec(_apo_down, "required"),
    "discopop": PairwiseLossSpec(_discopop, "required", f_divergence=True),
    "sigmoid_norm": PairwiseLossSpec(_sigmoid, "required", length_normalized=True, f_divergence=True),
    "simpo": PairwiseLossSpec(_simpo, "forbidden", label_smoothing=True, length_normalized=True),
}


def f_divergence_score(logratio: torch.Tensor, f_divergence: str = "reverse_kl", f_alpha: float = 0.5) -> torch.Tensor:
    """phi = f'(exp(u)) of f-DPO (Wang et al. 2023, arXiv 2309.16240), as TRL 1.16 computes it.

    reverse_kl: u; forward_kl: 1 - exp(-u); js_divergence: log 2 + log s(u);
    alpha_divergence: (exp((alpha - 1) u) - 1) / (alpha - 1), exponent clamped at 80, u at alpha = 1.
    """
    if f_divergence == "reverse_kl":
        return logratio
    if f_divergence == "forward_kl":
        return 1 - torch.exp(-logratio)
    if f_divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(logratio)
    if f_divergence == "alpha_divergence":
        if abs(f_alpha - 1.0) < 1e-6:
            return logratio
        return (torch.exp(torch.clamp((f_alpha - 1.0) * logratio, max=80.0)) - 1.0) / (f_alpha - 1.0)
    raise ValueError(f"unknown f_divergence {f_divergence!r}; expected one of {F_DIVERGENCES}")


def _check_options(
    loss_type: str, spec: PairwiseLossSpec, has_reference: bool, label_smoothing: float, gamma: float, f_divergence: str
) -> None:
    if spec.reference == "required" and not has_reference:
        raise ValueError(f"loss_type {loss_type!r} needs reference scores (ref_chosen_logps, ref_rejected_logps)")
    if spec.reference == "forbidden" and has_reference:
        raise ValueError(f"loss_type {loss_type!r} is reference-free; do not pass reference scores")
    if label_smoothing and not spec.label_smoothing:
        hint = " (label-smoothed DPO is loss_type='cdpo')" if loss_type == "sigmoid" else ""
        raise ValueError(f"loss_type {loss_type!r} does not use label_smoothing{hint}")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust needs label_smoothing in [0, 0.5), got {label_smoothing}")
    if loss_type == "exo_pair" and not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"exo_pair needs label_smoothing in (0, 1) (1e-3 recommended), got {label_smoothing}")
    if gamma and loss_type != "simpo":
        raise ValueError(f"gamma is SimPO's target margin; loss_type {loss_type!r} does not use it")
    if f_divergence != "reverse_kl" and not (spec.f_divergence and has_reference):
        raise ValueError(f"f_divergence {f_divergence!r} needs a reference and a loss_type among "
                         f"{sorted(k for k, s in PAIRWISE_LOSSES.items() if s.f_divergence)}")


def pairwise_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: Optional[torch.Tensor] = None,
    ref_rejected_logps: Optional[torch.Tensor] = None,
    *,
    loss_type: str = "sigmoid",
    beta: Beta = 0.1,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    discopop_tau: float = 0.05,
    pair_weights: Optional[torch.Tensor] = None,
) -> ObjectiveOutput:
    """One pairwise loss (see the module table) on (B,) scores; ``loss`` is the mean over pairs.

    Args:
        beta: temperature (tau for ``ipo``); a float, or a (B,) tensor of per-pair temperatures.
        label_smoothing: eps for ``cdpo``, ``robust``, ``exo_pair``, ``aot*`` and ``simpo``.
        gamma: SimPO's target reward margin (TRL ``simpo_gamma``; SimPO repo gamma_beta_ratio * beta).
        chosen_lengths, rejected_lengths: completion token counts, used by the length-normalised
            losses (``ipo``, ``sigmoid_norm``, ``simpo``) and clamped at 1; None means n = 1.
        f_divergence, f_alpha: the f-DPO transform (TRL ``f_divergence_type``, ``f_alpha_divergence_coef``).
        discopop_tau: DiscoPOP's modulation temperature (TRL ``discopop_tau``).
        pair_weights: (B,) multipliers of the per-pair losses (WPO weights), not renormalised.
    """
    if loss_type not in PAIRWISE_LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {sorted(PAIRWISE_LOSSES)}")
    spec = PAIRWISE_LOSSES[loss_type]
    has_reference = ref_chosen_logps is not None or ref_rejected_logps is not None
    _check_options(loss_type, spec, has_reference, label_smoothing, gamma, f_divergence)
    if spec.batch_coupled and pair_weights is not None:
        raise ValueError(f"{loss_type!r} sorts the batch, so per-pair weights do not apply (as in TRL)")

    scores = {"policy_chosen_logps": policy_chosen_logps, "policy_rejected_logps": policy_rejected_logps}
    if has_reference:
        scores.update(ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    check_same_shape(**scores)
    pc, pr = as_float32(policy_chosen_logps, policy_rejected_logps)
    if has_reference:
        rc, rr = (t.detach() for t in as_float32(ref_chosen_logps, ref_rejected_logps))
        u_w, u_l = pc - rc, pr - rr
    else:
        rc = rr = None
        u_w, u_l = pc, pr
    if isinstance(beta, torch.Tensor):
        beta = beta.float()

    phi_w = f_divergence_score(u_w, f_divergence, f_alpha)
    phi_l = f_divergence_score(u_l, f_divergence, f_alpha)
    if spec.length_normalized:
        phi_w, phi_l = _per_token(phi_w, chosen_lengths), _per_token(phi_l, rejected_lengths)
    pair = _Pair(
        beta=beta,
        label_smoothing=label_smoothing,
        gamma=gamma,
        discopop_tau=discopop_tau,
        u_w=u_w,
        u_l=u_l,
        delta=phi_w - phi_l,
        policy_margin=pc - pr,
        ref_margin=None if rc is None else rc - rr,
    )
    losses = spec.fn(pair)
    if pair_weights is not None:
        losses = losses * pair_weights.float()

    if has_reference:
        reward_w, reward_l = beta * u_w, beta * u_l
    elif spec.length_normalized:
        reward_w, reward_l = beta * _per_token(pc, chosen_lengths), beta * _per_token(pr, rejected_lengths)
    else:
        reward_w, reward_l = beta * pc, beta * pr
    metrics = preference_metrics(reward_w, reward_l)
    metrics["logps/chosen"] = pc.detach().mean()
    metrics["logps/rejected"] = pr.detach().mean()
    return ObjectiveOutput(loss=losses.mean(), losses=losses, metrics=metrics)


def _per_token(score: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    if lengths is None:
        return score
    return score / lengths.float().clamp(min=1.0)
