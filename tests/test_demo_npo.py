"""The toy demo trains the negative-model methods too and evaluates NPO-guided CFG (base positive,
trained negative) against the base's plain CFG at the same guidance scale and seeds."""

import json

import pytest

from conftest import run_shortened_demo


@pytest.mark.parametrize("method", ["self-npo", "diffusion-npo"])
def test_shortened_npo_demo(tmp_path, method):
    report = run_shortened_demo(tmp_path, method)
    assert report["method"] == method and report["n_prompts"] == 3
    assert report["aligned_sampling"].startswith("NPO-guided CFG")
    assert "NPO-guided CFG" in (tmp_path / "report.md").read_text()
    if method == "self-npo":  # prompts only: no candidates, no pairs
        assert (tmp_path / "prompts.txt").read_text().count("\n") == 4 and not (tmp_path / "pairs.jsonl").exists()
        assert report["train_prompts"] == 4 and "pairs" not in report
    else:
        assert report["pairs"]["pairs"] >= 1
    rows = [json.loads(line) for line in (tmp_path / "eval" / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all((tmp_path / "eval" / row["aligned"]).is_file() for row in rows)
    # the demo ends with the toy bench of base and aligned (NPO-guided) as a two-row leaderboard
    assert list(report["bench"]["overall"]) == ["base", method] and report["bench"]["prompts"] == 2
    board = json.loads((tmp_path / "bench" / "leaderboard" / "leaderboard.json").read_text())
    assert {row["label"] for row in board["rows"]} == {"base", f"{method} (NPO-guided)"}
    card = (tmp_path / "model" / "README.md").read_text()
    assert "negative model" in card and "diffalign generate" in card and "--negative-model" in card
