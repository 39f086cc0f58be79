"""The toy demo trains the caption-preference methods (TPO) with no judge in the data path: the base's
own samples with their prompts as true captions and rule-perturbed negatives on the toy grammar."""

import json
from dataclasses import astuple

import pytest

from diffalign.toy import world

from conftest import run_shortened_demo


@pytest.mark.parametrize("method", ["tdpo", "tkto"])
def test_shortened_tpo_demo(tmp_path, method):
    report = run_shortened_demo(tmp_path, method)
    assert report["method"] == method and report["n_prompts"] == 3
    assert "pairs" not in report and not (tmp_path / "pairs.jsonl").exists()  # nothing was judged
    assert report["captions"]["train_prompts"] == 4 and report["captions"]["images_per_prompt"] == 2
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    for row in rows:
        assert (tmp_path / row["image"]).is_file() and len(row["negative_prompts"]) == 5
        true = astuple(world.parse_caption(row["prompt"]))
        for negative in row["negative_prompts"]:  # a toy caption that differs in exactly one attribute
            assert sum(a != b for a, b in zip(astuple(world.parse_caption(negative)), true)) == 1
    assert "rule-perturbed captions" in (tmp_path / "report.md").read_text()
