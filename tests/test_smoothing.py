"""SmPO's smoothed preference weight (research/diffusion_methods_A.md §4.1; sanity values §7 SmPO 1-3)."""

import math

import pytest
import torch

import diffalign  # noqa: F401
from diffalign.objectives import dpo_loss
from diffalign.objectives.smoothing import (
    PICKSCORE_MAX,
    PICKSCORE_MIN,
    order_by_score,
    smoothed_preference,
    smoothed_preference_weight,
    smoothing_weight,
)

LN2 = math.log(2)


def test_official_constants():
    assert PICKSCORE_MIN == 0.11543526500463486
    assert PICKSCORE_MAX == 0.28201571106910706


def test_spec_values_for_cosines_025_and_020():
    chosen, rejected = torch.tensor([0.25]), torch.tensor([0.20])
    # p is the softmax of the min-max normalised scores r' (0.8078063, 0.5076510)
    r_w = (0.25 - PICKSCORE_MIN) / (PICKSCORE_MAX - PICKSCORE_MIN)
    r_l = (0.20 - PICKSCORE_MIN) / (PICKSCORE_MAX - PICKSCORE_MIN)
    assert (r_w, r_l) == pytest.approx((0.8078063, 0.5076510), abs=5e-8)
    p = smoothed_preference(chosen, rejected)
    assert p.dtype == torch.float32
    assert p.item() == pytest.approx(math.exp(r_w) / (math.exp(r_w) + math.exp(r_l)), abs=1e-7)
    assert p.item() == pytest.approx(0.5744805, abs=1e-7)
    assert smoothed_preference_weight(chosen, rejected).item() == pytest.approx(1.4896095, abs=1e-6)


def test_spec_loss_values_with_and_without_kappa():
    # Spec: (m_w, r_w, m_l, r_l) = (0.10, 0.1001, 0.20, 0.1999), scores -m / 2, beta = 5000. The loss
    # depends only on (m_w - r_w) - (m_l - r_l) = -2e-4; the objective core computes in float32, where
    # differences of numbers near 0.1 lose 4e-5 of that, so the same margin is built from small numbers.
    pc, rc, pr, rr = (torch.tensor([-m / 2]) for m in (0.0, 1e-4, 1e-4, 0.0))
    kappa = smoothed_preference_weight(torch.tensor([0.25]), torch.tensor([0.20]))
    smoothed = dpo_loss(pc, pr, rc, rr, beta=5000.0, sample_weight=kappa)
    plain = dpo_loss(pc, pr, rc, rr, beta=5000.0)
    assert smoothed.loss.item() == pytest.approx(0.3885407, abs=2e-7)
    assert plain.loss.item() == pytest.approx(0.4740770, abs=2e-7)
    assert smoothed.metrics["rewards/margins"].item() == pytest.approx(0.7448048, abs=2e-6)  # z


def test_kappa_bounds_and_one_point_gap():
    kappa_max = smoothed_preference_weight(torch.tensor([PICKSCORE_MAX]), torch.tensor([PICKSCORE_MIN]))
    assert kappa_max.item() == pytest.approx(4.6211716, abs=1e-6)
    assert kappa_max.item() == pytest.approx(10 * math.tanh(0.5), abs=1e-6)
    gap = smoothed_preference_weight(torch.tensor([0.21]), torch.tensor([0.20]))
    assert gap.item() == pytest.approx(0.3000652, abs=1e-6)


def test_kappa_range_after_ordering_by_score():
    generator = torch.Generator().manual_seed(0)
    a = PICKSCORE_MIN + (PICKSCORE_MAX - PICKSCORE_MIN) * torch.rand(4096, generator=generator, dtype=torch.float64)
    b = PICKSCORE_MIN + (PICKSCORE_MAX - PICKSCORE_MIN) * torch.rand(4096, generator=generator, dtype=torch.float64)
    swap = order_by_score(a, b)
    winner, loser = torch.where(swap, b, a), torch.where(swap, a, b)
    p = smoothed_preference(winner, loser)
    kappa = smoothed_preference_weight(winner, loser)
    assert bool((p >= 0.5).all()) and bool((p <= 1 / (1 + math.exp(-1)) + 1e-7).all())
    assert bool((kappa >= 0).all()) and bool((kappa <= 4.6211717).all())
    # unordered: kappa is antisymmetric, so it is negative exactly where the rejected image scored higher
    signed = smoothed_preference_weight(a, b)
    assert torch.equal(signed < 0, swap)
    torch.testing.assert_close(smoothed_preference_weight(b, a), -signed)


def test_equal_scores_give_kappa_zero_ln2_and_exactly_zero_gradient():
    scores = torch.tensor([0.2, 0.17, 0.26])
    p = smoothed_preference(scores, scores.clone())
    assert torch.equal(p, torch.full((3,), 0.5))
    kappa = smoothed_preference_weight(scores, scores.clone())
    assert torch.equal(kappa, torch.zeros(3))
    # any policy: scores far from the reference
    pc = torch.tensor([-0.01, -0.3, -0.2], requires_grad=True)
    pr = torch.tensor([-0.5, -0.02, -0.2], requires_grad=True)
    rc, rr = torch.tensor([-0.1, -0.1, -0.1]), torch.tensor([-0.2, -0.2, -0.2])
    output = dpo_loss(pc, pr, rc, rr, beta=5000.0, sample_weight=kappa)
    assert output.loss.item() == pytest.approx(LN2, abs=1e-7)
    output.loss.backward()
    assert torch.equal(pc.grad, torch.zeros(3)) and torch.equal(pr.grad, torch.zeros(3))


def test_data_winner_with_signed_kappa_is_the_same_loss_as_the_score_winner():
    generator = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-0.1 * torch.rand(8, generator=generator) for _ in range(4))
    s_c = 0.2 + 0.03 * torch.randn(8, generator=generator)
    s_r = 0.2 + 0.03 * torch.randn(8, generator=generator)
    signed = dpo_loss(pc, pr, rc, rr, beta=5000.0, sample_weight=smoothed_preference_weight(s_c, s_r))
    swap = order_by_score(s_c, s_r)
    pick = lambda x, y: (torch.where(swap, y, x), torch.where(swap, x, y))  # noqa: E731
    (pw, pl), (rw, rl), (sw, sl) = pick(pc, pr), pick(rc, rr), pick(s_c, s_r)
    ordered = dpo_loss(pw, pl, rw, rl, beta=5000.0, sample_weight=smoothed_preference_weight(sw, sl))
    assert bool(swap.any()) and bool((~swap).any())
    torch.testing.assert_close(signed.losses, ordered.losses)


def test_smoothing_weight_and_input_errors():
    assert torch.equal(smoothing_weight(torch.tensor([0.5, 0.75, 1.0]), gamma=10.0), torch.tensor([0.0, 5.0, 10.0]))
    with pytest.raises(ValueError, match="score_max must exceed score_min"):
        smoothed_preference(torch.tensor([0.2]), torch.tensor([0.1]), score_min=0.3, score_max=0.3)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        smoothed_preference(torch.tensor([0.2, 0.3]), torch.tensor([0.1]))
