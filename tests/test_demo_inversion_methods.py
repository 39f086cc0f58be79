"""The toy demo runs the inversion-based methods too (the shipped preset is a v-prediction model)."""

import json

import pytest

from conftest import run_shortened_demo


@pytest.mark.parametrize("method", ["smpo", "inpo"])
def test_shortened_demo(tmp_path, method):
    report = run_shortened_demo(tmp_path, method)
    assert report["method"] == method and report["n_prompts"] == 3
    metrics = [json.loads(line) for line in (tmp_path / "model" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["inversion/image_forwards"] > 0
    if method == "smpo":
        assert "smpo/kappa" in metrics[-1]
