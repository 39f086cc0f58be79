"""The toy demo runs the inversion-based methods too (the shipped preset is a v-prediction model)."""

import json

import pytest

from diffalign.cli import main


@pytest.mark.parametrize("method", ["smpo", "inpo"])
def test_shortened_demo(tmp_path, method):
    code = main(["demo", "--method", method, "--output-dir", str(tmp_path), "--train-prompts", "4", "--candidates", "2",
                 "--eval-prompts", "3", "--eval-seeds", "1", "--steps", "2", "--batch-size", "2", "--threads", "1",
                 "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == method and report["n_prompts"] == 3
    metrics = [json.loads(line) for line in (tmp_path / "model" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["inversion/image_forwards"] > 0
    if method == "smpo":
        assert "smpo/kappa" in metrics[-1]
