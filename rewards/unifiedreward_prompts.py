"""Instruction texts for the UnifiedReward judges (Wang et al., arXiv 2503.05236; Think: arXiv 2505.03318).

The released models (HF org ``CodeGoat24``, MIT) were trained on fixed instruction formats, read from
github.com/CodeGoat24/UnifiedReward @ff6f520 (``inference_qwen/image_generation/``,
``UnifiedReward-2.0-inference/``, ``UnifiedReward-Think/inference_qwen/``) and summarised in
``research/rewards_bench.md`` §2.2. The wording below is ours; what is kept verbatim are the structure
(criteria, order, caption line) and the literal output markers that ``unifiedreward_parsing`` matches:

- pair ranking: ``Image 1 is better.`` / ``Image 2 is better.`` / ``Both images are equally good.``;
- v1 point score: ``Final Score:`` followed by an integer (1-5, or 1-10 for DPO-data sifting);
- 2.0 point score: ``Alignment Score (1-5):``, ``Coherence Score (1-5):``, ``Style Score (1-5):``;
- 2.0 pair score: blocks ``<Dimension> Score:`` / `` Image 1: X`` / `` Image 2: Y``;
- Think: reasoning in ``<think>...</think>``, verdict in ``<answer>Image 1 is better</answer>`` (or 2).

Every prompt ends with the caption line ``Text Caption: [<caption>]``. Images go before the text in
the chat message (one image for point scores, two for pairwise formats).
"""

from __future__ import annotations

TASK_LINE = "Your task is provided as follows:\nText Caption: [{caption}]"


def pair_rank_prompt(caption: str) -> str:
    """(a) Pairwise ranking: which of image 1 / image 2 fits the caption and looks better."""
    return (
        "You will see a text caption and two images, Image 1 and Image 2, that were both generated from it. "
        "Compare them on two criteria:\n"
        "1. Alignment with the caption: are the described objects present, with the right attributes and "
        "relationships?\n"
        "2. Overall image quality: clarity, detail, colour accuracy and aesthetic appeal.\n"
        "Decide which image is better aligned with the caption and of higher quality, and end with a clear "
        "conclusion: 'Image 1 is better.', 'Image 2 is better.' or 'Both images are equally good.'\n"
        + TASK_LINE.format(caption=caption)
    )


def point_score_prompt(caption: str, max_score: int = 5) -> str:
    """(b) v1 pointwise score: key-element check, then ``Final Score:`` on a 1..``max_score`` scale."""
    return (
        "You will see a text caption and one image generated from it. Judge the image on two criteria:\n"
        "1. Alignment with the caption: are the described objects present, with the right attributes and "
        "relationships?\n"
        "2. Overall image quality: clarity, detail, colour accuracy and aesthetic appeal.\n"
        "First list the key elements of the caption, one per line as 'element (type): value', where the value "
        "is 1 if the element appears in the image and 0 if it does not. "
        f"Then rate the image from 1 to {max_score} and write the rating after 'Final Score:'.\n"
        + TASK_LINE.format(caption=caption)
    )


def acs_prompt(caption: str) -> str:
    """(c) UnifiedReward-2.0 pointwise Alignment / Coherence / Style scores, each 1-5."""
    return (
        "You will see a text caption and one image generated from it. Rate the image on three dimensions, "
        "each from 1 to 5:\n"
        "- Alignment: how well the image content matches the caption.\n"
        "- Coherence: whether the image is logically consistent and free of glitches or distortions.\n"
        "- Style: the aesthetic appeal of the image, regardless of the caption.\n"
        "Answer with exactly these three lines:\n"
        "Alignment Score (1-5): X\nCoherence Score (1-5): Y\nStyle Score (1-5): Z\n"
        + TASK_LINE.format(caption=caption)
    )


def pair_score_prompt(caption: str) -> str:
    """(d) UnifiedReward-2.0 pairwise relative scores in [0, 1] per dimension, summing to 1 per pair."""
    return (
        "You will see a text caption and two images, Image 1 and Image 2, generated from it. For each of "
        "Alignment (match with the caption), Coherence (logical consistency, no glitches or distortions) and "
        "Style (aesthetic appeal), give each image a relative score between 0 and 1; the two scores of a "
        "dimension must add up to 1.0. Answer in this format:\n"
        "Alignment Score:\n Image 1: X\n Image 2: Y\n"
        "Coherence Score:\n Image 1: X\n Image 2: Y\n"
        "Style Score:\n Image 1: X\n Image 2: Y\n"
        + TASK_LINE.format(caption=caption)
    )


def think_pair_prompt(caption: str) -> str:
    """(e) UnifiedReward-Think pairwise: scored reasoning in ``<think>``, the verdict alone in ``<answer>``."""
    return (
        "You will see a text caption and two images, Image 1 and Image 2, generated from it. Analyse them in "
        "detail. Judge at least semantic consistency with the caption, aesthetics and authenticity, plus any "
        "other dimension you find relevant. For every dimension give each image a score from 1 to 10 with a "
        "short reason, then add up each image's scores into a total.\n"
        "Put all of this reasoning inside <think> and </think>. After it, write inside <answer> and </answer> "
        "exactly 'Image 1 is better' or 'Image 2 is better' and nothing else.\n"
        "Example of the expected shape (the numbers are placeholders):\n"
        "<think>\n1. Semantic consistency: Image 1 (8/10) - ...; Image 2 (6/10) - ...\n"
        "2. Aesthetics: Image 1 (7/10) - ...; Image 2 (7/10) - ...\n"
        "3. Authenticity: Image 1 (8/10) - ...; Image 2 (5/10) - ...\n"
        "Total score:\nImage 1: 8+7+8=23\nImage 2: 6+7+5=18\n</think>\n"
        "<answer>Image 1 is better</answer>\n"
        + TASK_LINE.format(caption=caption)
    )
