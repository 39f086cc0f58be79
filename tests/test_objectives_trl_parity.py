"""The objective core against TRL 1.16's own loss code on fixed random inputs.

TRL computes its losses inside trainer methods; these tests call those methods unbound
(``DPOTrainer._compute_loss``, ``KTOTrainer._compute_loss``, ``CPOTrainer.cpo_loss``,
``ORPOTrainer.odds_ratio_loss``) with a stand-in ``self`` and a stand-in model that returns chosen
per-token log-probs whose completion sums are the given sequence scores. So the values, gradients,
reductions and metrics compared here are TRL's arithmetic, not a re-typed copy of it.

Version notes (text_objectives.md §2): TRL <= 0.28 applied label smoothing to ``sigmoid`` (here
``cdpo``, compared with ``CPOTrainer``'s smoothed sigmoid) and shifted ``bco_pair`` by a running
reward mean; 1.16 does neither, and neither does diffalign's ``bco_pair``.
"""

import dataclasses
import re
import zlib
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import diffalign  # noqa: F401  (before transformers: torchvision shim)
from diffalign.objectives import PAIRWISE_LOSSES, combine_losses, kto_ref_point, odds_ratio_loss, pairwise_loss, sft_loss, unpaired_loss

trl = pytest.importorskip("trl")
from trl import DPOConfig, DPOTrainer, KTOTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

B, T = 5, 12


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


class _FakeLM(torch.nn.Module):
    """Returns ``log_probs`` whose sum over each row's shifted completion mask is ``seq_logps``."""

    is_gradient_checkpointing = False

    def __init__(self, seq_logps, shift_mask, kl_logps=None):
        super().__init__()
        self.seq_logps, self.shift_mask, self.kl_logps = seq_logps, shift_mask.float(), kl_logps

    def forward(self, labels=None, fused_lm_head=True, **kwargs):
        n = self.shift_mask.sum(1, keepdim=True)
        log_probs = self.seq_logps[:, None] / n * self.shift_mask
        zeros = torch.zeros_like(self.shift_mask)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _batch(rows, generator):
    """Right-padded rows: a prompt of 2-4 tokens then a completion of 1-6 tokens."""
    prompt = torch.randint(2, 5, (rows,), generator=generator)
    completion = torch.randint(1, 7, (rows,), generator=generator)
    positions = torch.arange(T)[None, :]
    attention = (positions < (prompt + completion)[:, None]).long()
    completion_mask = ((positions >= prompt[:, None]) & (attention == 1)).long()
    input_ids = torch.randint(3, 50, (rows, T), generator=generator) * attention
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion_mask}, completion.float()


def _trl_dpo(loss_types, weights, policy_logps, ref_logps, inputs, beta, eps, f_div="reverse_kl", f_alpha=0.5, tau=0.05):
    shift = inputs["completion_mask"][:, 1:]
    policy = _FakeLM(policy_logps, shift)
    this = SimpleNamespace(
        model=policy, ref_model=_FakeLM(ref_logps, shift), accelerator=_Accelerator(), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=False,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=tau),
        f_divergence_type=f_div, f_alpha_divergence_coef=f_alpha, loss_types=loss_types, loss_weights=weights,
        beta=beta, label_smoothing=eps, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    loss = DPOTrainer._compute_loss(this, policy, inputs, False)
    return loss, {k: v[-1] for k, v in this._metrics["train"].items()}


# The pairwise loss types of TRL 1.16's DPOTrainer (DPOConfig.loss_type, less "sft", which is
# ``sft_loss``); diffalign's other two, cdpo and simpo, are CPOTrainer losses (compared below).
TRL_DPO_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
                 "apo_zero", "apo_down", "discopop", "sigmoid_norm"]


def _eps(loss_type):
    return {"robust": 0.2, "exo_pair": 1e-3, "aot": 0.1, "aot_unpaired": 0.1}.get(loss_type, 0.0)


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    inputs, lengths = _batch(2 * B, g)
    policy = (torch.randn(2 * B, generator=g) * 4 - 10).requires_grad_()
    ref = torch.randn(2 * B, generator=g) * 4 - 10
    return inputs, lengths, policy, ref


def test_all_fourteen_trl_dpo_loss_types_are_covered():
    help_text = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    assert sorted(re.findall(r"`'(\w+)'`", help_text)) == sorted([*TRL_DPO_TYPES, "sft"])  # TRL's own list
    assert len(TRL_DPO_TYPES) == 14 and set(TRL_DPO_TYPES) <= set(PAIRWISE_LOSSES)
    assert sorted(set(PAIRWISE_LOSSES) - set(TRL_DPO_TYPES)) == ["cdpo", "simpo"]


@pytest.mark.parametrize("loss_type", TRL_DPO_TYPES)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_loss_types_match_trl(loss_type, beta):
    inputs, lengths, policy, ref = _inputs(zlib.crc32(f"{loss_type}/{beta}".encode()) % 1000)  # stable across runs
    trl_loss, trl_metrics = _trl_dpo([loss_type], [1.0], policy, ref, inputs, beta, _eps(loss_type))
    trl_grad = torch.autograd.grad(trl_loss, policy)[0]
    ours = pairwise_loss(
        policy[:B], policy[B:], ref[:B], ref[B:], loss_type=loss_type, beta=beta, label_smoothing=_eps(loss_type),
        chosen_lengths=lengths[:B], rejected_lengths=lengths[B:],
    )
    our_grad = torch.autograd.grad(ours.loss, policy)[0]
    torch.testing.assert_close(ours.loss, trl_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-4, atol=1e-6)  # float32: summation order differs
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert ours.metrics[key].item() == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("f_div", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "discopop", "robust"])
def test_f_divergences_match_trl(f_div, loss_type):
    inputs, lengths, policy, ref = _inputs(7)
    policy = (ref + torch.randn(2 * B, generator=torch.Generator().manual_seed(8))).detach().requires_grad_()
    trl_loss, _ = _trl_dpo([loss_type], [1.0], policy, ref, inputs, 0.2, _eps(loss_type), f_div=f_div, f_alpha=0.3)
    ours = pairwise_loss(
        policy[:B], policy[B:], ref[:B], ref[B:], loss_type=loss_type, beta=0.2, label_smoothing=_eps(loss_type),
        chosen_lengths=lengths[:B], rejected_lengths=lengths[B:], f_divergence=f_div, f_alpha=0.3,
    )
    torch.testing.assert_close(ours.loss, trl_loss, rtol=1e-5, atol=1e-6)


def test_weighted_combination_with_sft_matches_trl():
    """MPO: loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]."""
    inputs, lengths, policy, ref = _inputs(3)
    trl_loss, _ = _trl_dpo(["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], policy, ref, inputs, 0.1, 0.0)
    args = (policy[:B], policy[B:], ref[:B], ref[B:])
    ours = combine_losses([
        ("sigmoid", pairwise_loss(*args, beta=0.1), 0.8),
        ("bco_pair", pairwise_loss(*args, loss_type="bco_pair", beta=0.1), 0.2),
        ("sft", sft_loss(policy[:B], lengths=lengths[:B]), 1.0),
    ])
    torch.testing.assert_close(ours.loss, trl_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(ours.loss, policy)[0], torch.autograd.grad(trl_loss, policy)[0])


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_unpaired_matches_trl_kto(loss_type):
    g = torch.Generator().manual_seed(11)
    n = 6
    inputs, _ = _batch(n, g)
    shift = inputs["completion_mask"][:, 1:]
    policy = (torch.randn(n, generator=g) * 3 - 8).requires_grad_()
    ref = torch.randn(n, generator=g) * 3 - 8
    kl_policy, kl_ref = torch.randn(n, generator=g) - 9, torch.randn(n, generator=g) - 10
    labels = torch.tensor([True, False, True, True, False, False])
    fake_policy = _FakeLM(policy, shift, kl_logps=kl_policy)
    this = SimpleNamespace(
        model=fake_policy, ref_model=_FakeLM(ref, shift, kl_logps=kl_ref), accelerator=_Accelerator(),
        aux_loss_enabled=False, precompute_ref_logps=False, calculate_KL=loss_type == "kto", loss_type=loss_type,
        beta=0.3, desirable_weight=1.0, undesirable_weight=1.33, args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        _compute_kl_logps=lambda model, batch: model.kl_logps,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    trl_loss = KTOTrainer._compute_loss(this, fake_policy, {**inputs, "label": labels}, False)
    z0 = kto_ref_point(kl_policy, kl_ref) if loss_type == "kto" else None
    ours = unpaired_loss(policy, ref, labels, loss_type=loss_type, beta=0.3, ref_point=z0, undesirable_weight=1.33)
    torch.testing.assert_close(ours.loss, trl_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.autograd.grad(ours.loss, policy)[0], torch.autograd.grad(trl_loss, policy)[0])
    trl_metrics = {k: v[-1] for k, v in this._metrics["train"].items()}
    for key in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert ours.metrics[key].item() == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize(
    "trl_type,ours_type,eps,gamma",
    [("sigmoid", "sigmoid", 0.0, 0.0), ("sigmoid", "cdpo", 0.15, 0.0), ("hinge", "hinge", 0.0, 0.0),
     ("ipo", "ipo", 0.0, 0.0), ("simpo", "simpo", 0.0, 0.5), ("simpo", "simpo", 0.1, 1.4)],
)
def test_reference_free_matches_trl_cpo(trl_type, ours_type, eps, gamma):
    g = torch.Generator().manual_seed(5)
    chosen, rejected = torch.randn(B, generator=g) * 5 - 20, torch.randn(B, generator=g) * 5 - 20
    n_w, n_l = torch.randint(1, 9, (B,), generator=g).float(), torch.randint(1, 9, (B,), generator=g).float()
    average = trl_type in ("ipo", "simpo")
    this = SimpleNamespace(alpha=0.0, loss_type=trl_type, beta=0.4, label_smoothing=eps, simpo_gamma=gamma, accelerator=_Accelerator())
    trl_losses, trl_chosen_rewards, _ = CPOTrainer.cpo_loss(this, chosen / n_w if average else chosen, rejected / n_l if average else rejected)
    ours = pairwise_loss(chosen, rejected, loss_type=ours_type, beta=0.4, label_smoothing=eps, gamma=gamma, chosen_lengths=n_w, rejected_lengths=n_l)
    torch.testing.assert_close(ours.losses, trl_losses, rtol=1e-5, atol=1e-6)
    assert ours.metrics["rewards/chosen"].item() == pytest.approx(trl_chosen_rewards.mean().item(), rel=1e-5)


def test_odds_ratio_matches_trl_orpo():
    g = torch.Generator().manual_seed(9)
    aw, al = -torch.rand(B, generator=g) * 3, -torch.rand(B, generator=g) * 3
    this = SimpleNamespace(beta=0.25, accelerator=_Accelerator())
    trl_terms, trl_chosen_rewards, _, trl_ratio, trl_log_odds = ORPOTrainer.odds_ratio_loss(this, aw, al)
    ours = odds_ratio_loss(aw, al, beta=0.25)
    torch.testing.assert_close(ours.losses, -trl_terms)  # TRL subtracts beta * log s(LOR) from the NLL
    assert ours.metrics["log_odds_ratio"].item() == pytest.approx(trl_ratio.item(), rel=1e-6)
    assert ours.metrics["log_odds_chosen"].item() == pytest.approx(trl_log_odds.item(), rel=1e-6)
    assert ours.metrics["rewards/chosen"].item() == pytest.approx(trl_chosen_rewards.mean().item(), rel=1e-6)
