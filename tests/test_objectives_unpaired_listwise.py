"""KTO, ORPO and LiPO-lambda against hand-computed values (text_objectives.md §3.18, §4.1, §5.1, §9.8)."""

import math

import pytest
import torch

from diffalign.objectives import kto_ref_point, lambda_weights, lipo_lambda_loss, odds_ratio_loss, pairwise_loss, unpaired_loss

LOG2 = math.log(2.0)


def test_kto_at_reference():
    policy = torch.tensor([-5.0, -6.0, -7.0, -8.0], requires_grad=True)
    ref = policy.detach().clone()
    desirable = torch.tensor([True, True, False, False])
    z0 = kto_ref_point(policy.detach(), ref)
    out = unpaired_loss(policy, ref, desirable, beta=0.1, ref_point=z0)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.5)
    torch.testing.assert_close(policy.grad, torch.tensor([-0.00625, -0.00625, 0.00625, 0.00625]))
    assert out.metrics["kl"].item() == 0.0
    assert "rewards/accuracies" not in out.metrics


def test_kto_values_reference_point_and_weights():
    policy = torch.tensor([-1.0, -2.0, -3.0])
    ref = torch.tensor([-2.0, -1.0, -3.5])
    desirable = torch.tensor([True, False, True])
    z0 = kto_ref_point(torch.tensor([-1.0, -4.0, -2.0]), torch.tensor([-3.0, -3.0, -2.0]))  # mean(2, -1, 0) = 1/3
    assert z0.item() == pytest.approx(1 / 3)
    assert kto_ref_point(torch.tensor([-5.0]), torch.tensor([-1.0])).item() == 0.0  # clamped at 0
    out = unpaired_loss(policy, ref, desirable, beta=0.5, ref_point=z0, desirable_weight=1.0, undesirable_weight=1.5)
    u = policy - ref
    expected = torch.stack([
        1 - torch.sigmoid(0.5 * (u[0] - z0)),
        1.5 * (1 - torch.sigmoid(0.5 * (z0 - u[1]))),
        1 - torch.sigmoid(0.5 * (u[2] - z0)),
    ])
    torch.testing.assert_close(out.losses, expected)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.5 * (1.0 + 0.5) / 2)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.375 + 0.5)


def test_kto_single_label_batch_has_no_nan():
    out = unpaired_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0]), torch.tensor([True, True]), ref_point=torch.tensor(0.0))
    assert torch.isfinite(out.loss)
    assert "rewards/rejected" not in out.metrics and "rewards/margins" not in out.metrics


def test_apo_zero_unpaired():
    u = torch.tensor([0.3, -0.2])
    out = unpaired_loss(u, torch.zeros(2), torch.tensor([True, False]), loss_type="apo_zero_unpaired", beta=2.0)
    torch.testing.assert_close(out.losses, torch.stack([1 - torch.sigmoid(torch.tensor(0.6)), torch.sigmoid(torch.tensor(-0.4))]))
    with pytest.raises(ValueError, match="ref_point"):
        unpaired_loss(u, u, torch.tensor([True, False]), loss_type="kto")


def test_orpo_odds_ratio_term():
    aw = torch.tensor([-1.0], requires_grad=True)  # P_w = P_l: LOR = 0
    al = torch.tensor([-1.0], requires_grad=True)
    out = odds_ratio_loss(aw, al, beta=0.1)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.1 * LOG2)
    # dLOR/da_w = 1 / (1 - P_w) and d(-log s)/dLOR = -1/2 at LOR = 0
    assert aw.grad.item() == pytest.approx(-0.1 * 0.5 / (1 - math.exp(-1.0)))
    far = odds_ratio_loss(torch.tensor([math.log(0.8)]), torch.tensor([math.log(0.2)]), beta=0.1)
    assert far.loss.item() == pytest.approx(0.0060625, abs=1e-7)
    assert far.metrics["log_odds_chosen"].item() == pytest.approx(2 * math.log(4.0))


def test_orpo_gradient_at_half_matches_spec():
    """P_w = P_l = 1/2, n_w = 4, n_l = 6: d/d summed logp = (d/d mean logp) / n = -0.025, +0.0166667."""
    aw = torch.tensor([math.log(0.5)], requires_grad=True)
    al = torch.tensor([math.log(0.5)], requires_grad=True)
    odds_ratio_loss(aw, al, beta=0.1).loss.backward()
    assert aw.grad.item() / 4 == pytest.approx(-0.025)
    assert al.grad.item() / 6 == pytest.approx(0.1 / 6)


def test_lipo_two_items_is_weighted_dpo():
    policy = torch.tensor([[-3.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-3.0, -3.0]])
    out = lipo_lambda_loss(policy, ref, torch.tensor([[1.0, 0.0]]), beta=0.1)
    weight = 1 - 1 / math.log2(3)
    assert weight == pytest.approx(0.3690702, abs=1e-7)
    assert out.loss.item() == pytest.approx(weight * LOG2, abs=1e-7)  # 0.2558200
    out.loss.backward()
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    pairwise_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-3.0]), beta=0.1).loss.backward()
    torch.testing.assert_close(policy.grad[0], weight * torch.cat([pc.grad, pr.grad]))


def test_lipo_four_items_spec_values():
    scores = torch.tensor([[0.3, 0.1, -0.2, 0.0]], requires_grad=True)
    out = lipo_lambda_loss(scores, torch.zeros(1, 4), torch.tensor([[3.0, 2.0, 1.0, 0.0]]), beta=1.0)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(4.9731479, abs=1e-6)
    torch.testing.assert_close(scores.grad, torch.tensor([[-3.4436792, 0.3075500, 1.4219786, 1.7141507]]), atol=1e-6, rtol=0)
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(5 / 6)  # only (-0.2 vs 0.0) is misordered
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.3)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.0)


def test_lipo_padding_and_ties():
    scores = torch.tensor([[0.5, 0.2, 9.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 5.0], [2.0, 2.0, 0.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    padded = lipo_lambda_loss(scores, torch.zeros_like(scores), labels, valid, beta=1.0)
    alone = lipo_lambda_loss(scores[:1, :2], torch.zeros(1, 2), labels[:1, :2], beta=1.0)
    torch.testing.assert_close(padded.losses[0], alone.losses[0])  # the padded slot changes nothing
    weights = lambda_weights(scores[1:], labels[1:], valid[1:])
    assert weights[0, 0, 1] == 0 and weights[0, 1, 0] == 0  # equal labels: no pair
    # ties in scores are ranked by index: ranks (1, 2, 3)
    g = 2.0**2 - 1
    assert weights[0, 1, 2].item() == pytest.approx(g * (1 / math.log2(3) - 1 / math.log2(4)))
