"""Group win rates and Pref-GRPO advantages (spec research/rewards_bench.md §2.5), with fake judges."""

import math

import diffalign  # noqa: F401
import pytest
import torch

from diffalign.rewards.base import PairwiseResult, PairwiseScorer, compare_both_orders, merge_orders
from diffalign.rewards.winrate import combine_advantages, group_win_rates, normalized_advantages


class IndexJudge(PairwiseScorer):
    """Images are ints; a callable decides each verdict. Counts requests."""

    name = "index-judge"

    def __init__(self, verdict):
        self.verdict = verdict
        self.requests = 0

    def compare(self, images_a, images_b, prompts):
        self.requests += len(images_a)
        preference = torch.tensor([self.verdict(a, b) for a, b in zip(images_a, images_b)], dtype=torch.int64)
        return PairwiseResult(preference, torch.full((len(images_a),), math.nan), int((preference == 0).sum()))


@pytest.mark.parametrize("group_size", [2, 3, 5, 8])
def test_win_rates_sum_to_half_the_group(group_size):
    generator = torch.Generator().manual_seed(group_size)
    judge = IndexJudge(lambda a, b: int(torch.randint(-1, 2, (1,), generator=generator)))
    rates = group_win_rates(judge, list(range(group_size)), "p")
    assert judge.requests == rates.comparisons == group_size * (group_size - 1) // 2
    assert rates.points.sum().item() == pytest.approx(rates.comparisons)
    assert rates.win_rate.sum().item() == pytest.approx(group_size / 2)
    assert rates.win_rate.mean().item() == pytest.approx(0.5)


def test_chain_of_three_gives_advantages_one_zero_minus_one():
    judge = IndexJudge(lambda a, b: 1 if a < b else -1)  # lower index always wins
    rates = group_win_rates(judge, [0, 1, 2], "p")
    torch.testing.assert_close(rates.win_rate, torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(normalized_advantages(rates.win_rate), torch.tensor([1.0, 0.0, -1.0]))
    # G = 8 chain: rates (G-1)/(G-1), ..., 0
    torch.testing.assert_close(group_win_rates(judge, list(range(8)), "p").win_rate, torch.arange(7, -1, -1) / 7.0)


def test_all_ties_give_half_and_zero_advantages():
    rates = group_win_rates(IndexJudge(lambda a, b: 0), list(range(4)), "p")
    assert rates.win_rate.tolist() == [0.5] * 4 and rates.unparsable == 6
    assert normalized_advantages(rates.win_rate).tolist() == [0.0] * 4


def test_both_orders_cancel_position_bias():
    first_wins = IndexJudge(lambda a, b: 1)  # always prefers whatever is shown first
    biased = group_win_rates(first_wins, [0, 1, 2], "p")
    assert biased.win_rate.tolist() == [1.0, 0.5, 0.0]
    balanced = group_win_rates(first_wins, [0, 1, 2], "p", both_orders=True)
    assert balanced.win_rate.tolist() == [0.5, 0.5, 0.5] and balanced.comparisons == 6
    consistent = group_win_rates(IndexJudge(lambda a, b: 1 if a < b else -1), [0, 1, 2], "p", both_orders=True)
    assert consistent.win_rate.tolist() == [1.0, 0.5, 0.0]


def test_merge_orders():
    ab = PairwiseResult(torch.tensor([1, 1, 1, 0, -1]), torch.tensor([0.9, 0.8, math.nan, 0.5, 0.2]), 1)
    ba = PairwiseResult(torch.tensor([-1, 1, 0, 0, 1]), torch.tensor([0.3, 0.6, 0.5, 0.5, 0.7]), 2)
    merged = merge_orders(ab, ba)
    assert merged.preference.tolist() == [1, 0, 1, 0, -1] and merged.unparsable == 3
    torch.testing.assert_close(merged.probability_a[[0, 1, 3, 4]], torch.tensor([0.8, 0.6, 0.5, 0.25]))
    assert math.isnan(merged.probability_a[2])
    judge = IndexJudge(lambda a, b: 1)
    assert compare_both_orders(judge, [0, 1], [1, 0], ["p", "p"]).preference.tolist() == [0, 0] and judge.requests == 4


def test_advantages_unbiased_std_eps_clip_and_combination():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    expected = (rewards[0] - rewards[0].mean()) / (rewards[0].std(unbiased=True) + 1e-8)
    torch.testing.assert_close(normalized_advantages(rewards)[0], expected)
    assert normalized_advantages(rewards)[1].tolist() == [0.0] * 4
    big = torch.tensor([0.0] * 99 + [1.0])
    assert normalized_advantages(big).max() > 9 and normalized_advantages(big, clip=5.0).max() == 5.0
    win, clip_score = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.2, 0.3, 0.1])
    combined = combine_advantages({"win": win, "clip": clip_score}, {"win": 0.7, "clip": 1.4})
    torch.testing.assert_close(combined, 0.7 * normalized_advantages(win) + 1.4 * normalized_advantages(clip_score))
    with pytest.raises(ValueError, match="same streams"):
        combine_advantages({"win": win}, {"clip": 1.0})
    with pytest.raises(ValueError, match="at least 2"):
        group_win_rates(IndexJudge(lambda a, b: 1), [0], "p")
