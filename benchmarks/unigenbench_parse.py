"""Parsing a UniGenBench judge answer into one 0/1 score per test point (``research/rewards_bench.md`` §3.4).

An answer is valid when it holds an ``<analysis>[...]</analysis>`` and a ``<score>[...]</score>``
block (the last of each, so that an answer which first echoes the format still counts by its
verdict), each a Python list literal (``ast.literal_eval``; a tuple is accepted too) with exactly one
item per test point. Anything else raises ``AnswerParseError`` with a one-sentence reason, and the
caller asks the judge again (``bench_judges``).

Scores (our decision, tested): a score is ``1`` or ``0`` written as an integer or as the quoted
digit (``'1'``, ``"0"``): the judge's verdict is unambiguous either way. Upstream compares each score
with the integer 1, so a quoted ``'1'`` silently counts as a fail there; we read it as the pass it
says. Any other value (``2``, ``0.5``, ``True``, ``'yes'``, ``None``) makes the whole answer invalid,
and it is asked again rather than guessed.
"""

from __future__ import annotations

import ast
import re

_ANALYSIS = re.compile(r"<analysis>(.*?)</analysis>", re.DOTALL)
_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)
_VALID_SCORES = {0: 0, 1: 1, "0": 0, "1": 1}


class AnswerParseError(ValueError):
    """A judge answer without a usable verdict; the message says why in one sentence."""


def _literal_list(text: str, tag: str) -> list:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise AnswerParseError(f"the <{tag}> block is not a Python list literal") from None
    if not isinstance(value, (list, tuple)):
        raise AnswerParseError(f"the <{tag}> block is a {type(value).__name__}, not a list")
    return list(value)


def _score(value) -> int:
    if isinstance(value, bool) or (not isinstance(value, (int, str))):
        raise KeyError(value)
    return _VALID_SCORES[value.strip() if isinstance(value, str) else value]


def parse_judge_answer(text: str, n_testpoints: int) -> list[int]:
    """The 0/1 score of each of ``n_testpoints`` test points in a judge answer (module docstring)."""
    text = text or ""
    blocks = {}
    for tag, pattern in (("analysis", _ANALYSIS), ("score", _SCORE)):
        found = pattern.findall(text)
        if not found:
            raise AnswerParseError(f"the answer has no <{tag}>...</{tag}> block")
        blocks[tag] = _literal_list(found[-1], tag)
    for tag, values in blocks.items():
        if len(values) != n_testpoints:
            raise AnswerParseError(f"the <{tag}> list has {len(values)} item(s) for {n_testpoints} test point(s)")
    try:
        return [_score(value) for value in blocks["score"]]
    except KeyError as error:
        raise AnswerParseError(f"the <score> list holds {error.args[0]!r}; each score must be 0 or 1") from None
