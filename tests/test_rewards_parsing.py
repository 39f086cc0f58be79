"""UnifiedReward prompt literals and output parsers (spec research/rewards_bench.md §2.2-§2.3)."""

import math

import diffalign  # noqa: F401
import pytest
import torch

from diffalign.rewards.unifiedreward_parsing import (
    acs_matrix,
    parse_acs,
    parse_final_score,
    parse_pair_rank,
    parse_pair_scores,
    parse_think_answer,
)
from diffalign.rewards.unifiedreward_prompts import (
    acs_prompt,
    pair_rank_prompt,
    pair_score_prompt,
    point_score_prompt,
    think_pair_prompt,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Image 1 aligns with the caption. Image 1 is better.", 1),
        ("Both are sharp, but Image 2 is better.", -1),
        ("Both images are equally good.", 0),
        ("Image 2 is better than Image 1.", -1),  # LLaVA sifting phrasing
        ("Image 1 is better than Image 2.", 1),
        ("At first Image 1 is better, but on reflection Image 2 is better.", -1),  # the conclusion counts
        ("  \n image 1 IS better. \n", 1),
        ("Image 1 looks nicer.", None),
        ("", None),
        (None, None),
    ],
)
def test_pair_rank(text, expected):
    assert parse_pair_rank(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("red circle (object): 1\nFinal Score: 4", 4.0),
        ("Final Score: 10/10", 10.0),
        ("Final Score: 9", 9.0),
        ("Final Score: 3 ... revised. Final Score: 5.", 5.0),  # the last marker counts
        ("Final Score: 3.5", 3.5),
        ("Final Score: none", None),
        ("The score is 4", None),
        ("", None),
    ],
)
def test_final_score(text, expected):
    assert parse_final_score(text) == expected


def test_final_scores_compare_as_numbers():
    assert parse_final_score("Final Score: 10") > parse_final_score("Final Score: 9")  # upstream's strings: "9" > "10"


def test_acs_floats_extra_text_and_missing_dimensions():
    full = "Sure.\nAlignment Score (1-5): 2.6947\nCoherence Score (1-5): 4\nStyle Score (1-5): 3.25\nThanks"
    assert parse_acs(full) == {"alignment": 2.6947, "coherence": 4.0, "style": 3.25}
    texts = [full, "Alignment Score (1-5): 4.0\nStyle Score (1-5): 2.0", "garbage", ""]
    raw = acs_matrix(texts)
    assert raw.shape == (4, 3) and math.isnan(raw[1, 1]) and raw[2:].isnan().all()
    filled = acs_matrix(texts, fill_missing=True)  # batch mean of the responses that have the dimension
    torch.testing.assert_close(filled[1], torch.tensor([4.0, 4.0, 2.0]))
    torch.testing.assert_close(filled[2], torch.tensor([(2.6947 + 4.0) / 2, 4.0, (3.25 + 2.0) / 2]))
    assert acs_matrix(["none"], fill_missing=True).tolist() == [[0.0, 0.0, 0.0]]  # no response has it
    assert acs_matrix([]).shape == (0, 3)


def test_pair_scores():
    text = ("Alignment Score:\n Image 1: 0.7\n Image 2: 0.3\nCoherence Score:\n Image 1: 0.45\n Image 2: 0.55\n"
            "Style Score:\n Image 1: 0.5\n Image 2: 0.5\n")
    assert parse_pair_scores(text) == {"alignment": (0.7, 0.3), "coherence": (0.45, 0.55), "style": (0.5, 0.5)}
    assert parse_pair_scores("Alignment Score: high") == {}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>1. Semantic: Image 1 (8/10)...</think>\n<answer>Image 1 is better</answer>", 1),
        ("<think>...</think><answer>\n  Image 2 is better\n</answer>", -1),
        ("<think>Image 1 is better overall?</think><answer>Image 2 is better</answer>", -1),  # only the answer counts
        ("<think>x</think><answer>Image 1 is better</answer> trailing text", 1),
        ("<answer>Image 1 is better</answer> then <answer>Image 2 is better</answer>", -1),  # the last answer
        ("<think>...</think><answer>Image 1 is better and Image 2 is better</answer>", None),
        ("<think>...</think><answer>Both are equal</answer>", None),
        ("<think>...</think>Image 1 is better", None),  # missing tags
        ("<answer>Image 1 is better", None),  # unclosed
        ("", None),
    ],
)
def test_think_answer(text, expected):
    assert parse_think_answer(text) == expected


def test_prompts_carry_caption_and_parser_literals():
    caption = "a corgi [astronaut] on the moon"
    for prompt in (pair_rank_prompt, point_score_prompt, acs_prompt, pair_score_prompt, think_pair_prompt):
        assert prompt(caption).endswith(f"Your task is provided as follows:\nText Caption: [{caption}]")
    rank = pair_rank_prompt(caption)
    for literal in ("Image 1 is better.", "Image 2 is better.", "Both images are equally good."):
        assert literal in rank
    assert "Final Score:" in point_score_prompt(caption) and "from 1 to 10" in point_score_prompt(caption, 10)
    assert "element (type): value" in point_score_prompt(caption)
    acs = acs_prompt(caption)
    for line in ("Alignment Score (1-5): X", "Coherence Score (1-5): Y", "Style Score (1-5): Z"):
        assert line in acs
    assert parse_acs(acs.replace("X", "1").replace("Y", "2").replace("Z", "3")) == {"alignment": 1, "coherence": 2, "style": 3}
    assert "Alignment Score:\n Image 1: X\n Image 2: Y" in pair_score_prompt(caption)
    think = think_pair_prompt(caption)
    assert "<think>" in think and "</think>" in think and "<answer>Image 1 is better</answer>" in think
