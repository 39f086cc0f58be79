"""``diffalign score`` / ``diffalign pairs`` handlers end to end on tiny local models, and their user errors."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import math
import subprocess
import sys

import diffalign  # noqa: F401
import pytest
import torch
from PIL import Image

from diffalign.rewards import get_scorer, registered_scorers
from diffalign.rewards.base import PairwiseResult, PairwiseScorer, Scorer, batched
from diffalign.rewards.cli import add_pairs_command, add_score_command
from diffalign.rewards.pairs import best_vs_worst, rank_and_sift
from diffalign.rewards.records import ImageRecord, candidate_image_name, read_image_listing
from tiny_rewards import save_tiny_hps_checkpoint
from test_rewards_unifiedreward import StubServer, brightness_answer


def run(*argv):
    parser = argparse.ArgumentParser(prog="diffalign")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_score_command(subparsers)
    add_pairs_command(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    return save_tiny_hps_checkpoint(str(tmp_path_factory.mktemp("hps")))


@pytest.fixture
def candidates(tmp_path):
    """Two prompts x 4 gray candidates in a folder, named {prompt_index}_{j}.png, plus the prompts file."""
    folder = tmp_path / "gen"
    folder.mkdir()
    levels = [30, 220, 120, 60, 200, 10, 90, 150]
    for index, level in enumerate(levels):
        Image.new("RGB", (48, 32), (level, level, level)).save(folder / name(index))
    (tmp_path / "prompts.txt").write_text("a bright square\n\na dark square\n")
    return folder, tmp_path / "prompts.txt", levels


def name(index):
    """File name of the index-th of the 8 candidates: prompt index // 4, candidate index % 4."""
    return candidate_image_name(index // 4, index % 4)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_score_folder_with_hpsv2(tiny_hps, candidates, tmp_path, capsys):
    checkpoint, config = tiny_hps
    folder, prompts, _ = candidates
    out = tmp_path / "out" / "scores.jsonl"
    assert run("score", "--scorer", "hpsv2", "--checkpoint", checkpoint, "--architecture", config, "--device", "cpu",
               "--images", str(folder), "--prompts", str(prompts), "--out", str(out), "--batch-size", "3") == 0
    rows = read_jsonl(out)
    assert [r["image"] for r in rows] == [os.path.join("..", "gen", name(i)) for i in range(8)]
    assert [r["prompt"] for r in rows] == ["a bright square"] * 4 + ["a dark square"] * 4
    scorer = get_scorer("hpsv2", checkpoint=checkpoint, architecture=config, device="cpu", progress=False)
    expected = scorer.score([Image.open(folder / name(i)) for i in range(8)], [r["prompt"] for r in rows])
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), expected, rtol=0, atol=1e-6)
    assert {r["scorer"] for r in rows} == {"hpsv2"}
    printed = capsys.readouterr().out
    assert "mean" in printed and f"{expected.mean().item():.4f}" in printed
    assert f"benchmark scale): {100 * expected.mean().item():.2f}" in printed


def test_pairs_best_vs_worst_from_jsonl(candidates, tmp_path, capsys):
    folder, _, levels = candidates
    stub = StubServer(brightness_answer)
    try:
        listing = tmp_path / "listing.jsonl"
        listing.write_text("".join(json.dumps({"image": f"gen/{name(i)}", "prompt": f"p{i // 4}"}) + "\n" for i in range(8)))
        out = tmp_path / "pairs" / "prefs.jsonl"
        assert run("pairs", "--scorer", "unifiedreward", "--base-url", stub.url, "--images", str(listing), "--out", str(out)) == 0
        rows = read_jsonl(out)
        # brightness -> Final Score 1 + level // 64: p0 best 0_1 (220 -> 4) vs worst 0_0 (30 -> 1); p1 1_0 (4) vs 1_1 (1)
        assert rows == [
            {"prompt": "p0", "chosen": "../gen/0_1.png", "rejected": "../gen/0_0.png", "chosen_score": 4.0, "rejected_score": 1.0, "scorer": "unifiedreward"},
            {"prompt": "p1", "chosen": "../gen/1_0.png", "rejected": "../gen/1_1.png", "chosen_score": 4.0, "rejected_score": 1.0, "scorer": "unifiedreward"},
        ]
        assert os.path.exists(out.parent / rows[0]["chosen"])
        assert run("pairs", "--scorer", "unifiedreward", "--base-url", stub.url, "--images", str(listing), "--out", str(out), "--min-margin", "3.5") == 0
        assert read_jsonl(out) == []
        assert "below_margin" in capsys.readouterr().out
    finally:
        stub.close()


def test_best_vs_worst_pairs_ith_best_with_ith_worst_until_the_margin_fails():
    records = [ImageRecord(f"{name}.png", "p", name) for name in "abcdef"] + [ImageRecord("g.png", "q", "g")]
    scores = torch.tensor([0.5, 0.9, 0.1, 0.7, float("nan"), 0.45, 0.3])
    pairs, stats = best_vs_worst(records, scores, "toy", pairs_per_prompt=3)
    assert [(p.chosen, p.rejected) for p in pairs] == [("b.png", "c.png"), ("d.png", "f.png")]  # 2 of 5 scored: no image twice
    assert (stats.prompts, stats.pairs, stats.unscored_images, stats.too_few_images) == (2, 2, 1, 1)
    pairs, stats = best_vs_worst(records, scores, "toy", min_margin=0.5, pairs_per_prompt=3)
    assert [(p.chosen, p.rejected) for p in pairs] == [("b.png", "c.png")] and stats.below_margin == 1
    assert [p.chosen for p in best_vs_worst(records, scores, "toy")[0]] == ["b.png"]


def test_pairs_rank_and_sift(candidates, tmp_path):
    folder, prompts, levels = candidates
    stub = StubServer(brightness_answer)
    try:
        out = tmp_path / "prefs.jsonl"
        assert run("pairs", "--scorer", "unifiedreward", "--base-url", stub.url, "--method", "rank-sift", "--both-orders",
                   "--images", str(folder), "--prompts", str(prompts), "--out", str(out)) == 0
        rows = read_jsonl(out)
        # prompt 1: pairs (30, 220) -> 220 wins, (120, 60) -> 120 wins; best winner 220 (score 4), worst loser 30 (score 1)
        # prompt 2: pairs (200, 10), (90, 150): winners 200 (4), 150 (3); losers 10 (1), 90 (2)
        assert [(r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"]) for r in rows] == [
            ("gen/0_1.png", "gen/0_0.png", 4.0, 1.0),
            ("gen/1_0.png", "gen/1_1.png", 4.0, 1.0),
        ]
        # 4 pairs x 2 orders ranked + 8 images scored
        assert len(stub.payloads) == 16
    finally:
        stub.close()


def test_rank_and_sift_compares_scores_as_numbers(tmp_path):
    class WidthJudge(Scorer, PairwiseScorer):
        name = "width"

        def compare(self, images_a, images_b, prompts):  # the first image of every pair wins
            return PairwiseResult(torch.ones(len(images_a), dtype=torch.int64), torch.full((len(images_a),), math.nan))

        def score(self, images, prompts):  # widths 10 and 9: as strings "9" > "10"
            return torch.tensor([float(image.width) for image in images])

    records = []
    for name, width in (("w", 10), ("l", 9)):
        Image.new("RGB", (width, 1)).save(tmp_path / f"{name}.png")
        records.append(ImageRecord(str(tmp_path / f"{name}.png"), "p", name))
    pairs, stats = rank_and_sift(records, WidthJudge(), WidthJudge(), "width")
    assert [(p.chosen, p.chosen_score, p.rejected_score) for p in pairs] == [(records[0].path, 10.0, 9.0)]
    assert stats.pairs == 1 and stats.below_margin == 0


def test_user_errors_exit_2(tiny_hps, candidates, tmp_path, capsys):
    checkpoint, config = tiny_hps
    folder, prompts, _ = candidates
    out = str(tmp_path / "o.jsonl")
    common = ["--images", str(folder), "--prompts", str(prompts), "--out", out]
    cases = [
        (["score", "--scorer", "nope", *common], "unknown scorer 'nope'"),
        (["score", "--scorer", "hpsv2", "--checkpoint", str(tmp_path / "missing.pt"), *common], "HPSv2 checkpoint not found"),
        (["score", "--scorer", "hpsv2", "--checkpoint", checkpoint, "--base-url", "http://x", *common], "takes no option(s) base_url"),
        (["score", "--scorer", "hpsv2", "--checkpoint", checkpoint, "--images", str(tmp_path / "none"), "--out", out], "must be a folder"),
        (["score", "--scorer", "unifiedreward-think", "--base-url", "http://127.0.0.1:9", *common], "pairwise only"),
        (["pairs", "--scorer", "hpsv2", "--checkpoint", checkpoint, "--architecture", config, "--method", "rank-sift", *common], "does not rank pairs"),
    ]
    for argv, message in cases:
        assert run(*argv) == 2, argv
        assert message in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "gen/0_0.png", "prompt": "p"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    assert run("score", "--scorer", "hpsv2", "--checkpoint", checkpoint, "--images", str(bad), "--out", out) == 2
    assert f"{bad}:2: missing string field 'image'" in capsys.readouterr().err


def test_identical_lines_of_a_prompts_file_stay_two_prompts(candidates):
    """Candidates are grouped by prompt index, not by text: a prompts file with one line twice is two
    prompts with four candidates each, not one prompt with eight."""
    folder, prompts, levels = candidates
    prompts.write_text("a square\na square\n")
    records = read_image_listing(str(folder), str(prompts)).records
    assert [record.prompt_index for record in records] == [0] * 4 + [1] * 4

    class Brightness(Scorer, PairwiseScorer):
        name = "brightness"

        def compare(self, images_a, images_b, prompts):
            preference = [1 if a.getpixel((0, 0))[0] > b.getpixel((0, 0))[0] else -1 for a, b in zip(images_a, images_b)]
            return PairwiseResult(torch.tensor(preference), torch.full((len(images_a),), math.nan))

        def score(self, images, prompts):
            return torch.tensor([float(image.getpixel((0, 0))[0]) for image in images])

    expected = [(records[1].path, records[0].path), (records[4].path, records[5].path)]  # 220 vs 30, 200 vs 10
    pairs, stats = best_vs_worst(records, torch.tensor(levels, dtype=torch.float32), "level")
    assert [(p.chosen, p.rejected) for p in pairs] == expected and stats.prompts == 2
    pairs, stats = rank_and_sift(records, Brightness(), Brightness(), "brightness")
    assert [(p.chosen, p.rejected) for p in pairs] == expected and stats.prompts == 2


def test_toy_judge_user_errors_exit_2(candidates, tmp_path, capsys):
    folder, prompts, _ = candidates
    common = ["--scorer", "toy", "--images", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "s.jsonl")]
    assert run("score", *common) == 2
    assert "error: caption 'a bright square' is not in the toy grammar" in capsys.readouterr().err
    assert run("score", *common, "--batch-size", "2") == 2
    assert "error: the toy judge takes no options, got ['batch_size']" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(candidates, tmp_path, monkeypatch, capsys):
    """Only ``UserError``s become one line and exit 2; any other exception is a bug and propagates."""
    from diffalign.errors import UserError
    from diffalign.rewards import cli

    def broken(*args, **kwargs):
        raise ValueError("internal bug")

    folder, prompts, _ = candidates
    argv = ["score", "--scorer", "toy", "--images", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "s.jsonl")]
    monkeypatch.setattr(cli, "score_records", broken)
    with pytest.raises(ValueError, match="internal bug"):
        run(*argv)
    assert "error:" not in capsys.readouterr().err
    monkeypatch.setenv("DIFFALIGN_DEBUG", "1")  # a user error shows its traceback too
    with pytest.raises(UserError, match="unknown scorer 'nope'"):
        run(*argv[:2], "nope", *argv[3:])


def test_unknown_judge_options_are_user_errors(tmp_path):
    from diffalign.errors import UsageError

    with pytest.raises(UsageError, match="takes no option.* timeot; its HTTP endpoint options: timeout, max_retries"):
        get_scorer("unifiedreward", base_url="http://127.0.0.1:9", timeot=3)
    with pytest.raises(UsageError, match="dimension must be one of"):
        get_scorer("unifiedreward-2.0", base_url="http://127.0.0.1:9", dimension="beauty")
    with pytest.raises(UsageError, match="batch_size must be >= 1"):
        list(batched([1], 0))


def test_corrupt_image_is_an_error_or_a_counted_skip(tiny_hps, candidates, tmp_path, capsys):
    checkpoint, config = tiny_hps
    folder, prompts, _ = candidates
    (folder / "1_3.png").write_bytes(b"not a png")
    argv = ["score", "--scorer", "hpsv2", "--checkpoint", checkpoint, "--architecture", config, "--device", "cpu",
            "--images", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "s.jsonl")]
    assert run(*argv) == 2
    assert "1_3.png: cannot decode image" in capsys.readouterr().err
    assert run(*argv, "--skip-invalid") == 0
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 7
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "1_3.png" in captured.err


def test_registry_lists_builtin_scorers():
    names = set(registered_scorers())
    assert {"hpsv2", "pickscore", "unifiedreward", "unifiedreward-2.0", "unifiedreward-think"} <= names
    with pytest.raises(KeyError, match="unknown scorer 'nope'; registered scorers: .*hpsv2"):
        get_scorer("nope")


def test_scorer_plugins_load_through_entry_points():
    """A fresh process finds the toy judge through the ``diffalign.scorers`` entry point in pyproject.toml
    (rewards never imports diffalign.toy itself, DESIGN.md §2). Fails on a stale install: reinstall."""
    code = "from diffalign.rewards import get_scorer; print(type(get_scorer('toy')).__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "diffalign.toy.judge"


def test_a_broken_scorer_plugin_warns_and_the_others_still_load(monkeypatch):
    from importlib import metadata

    from diffalign import plugins
    from diffalign.rewards import base

    broken = metadata.EntryPoint(name="broken", value="diffalign_no_such_module", group=base.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [broken] if group == base.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(base, "_builtins_loaded", False)
    monkeypatch.setattr(plugins, "_loaded", set())
    with pytest.warns(RuntimeWarning, match="diffalign.scorers plugin 'broken' .*failed to load"):
        names = registered_scorers()
    assert "hpsv2" in names
