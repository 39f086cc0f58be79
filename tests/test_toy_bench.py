"""The toy bench end to end through ``diffalign bench`` (generate, judge, aggregate, report, leaderboard)
with the shipped toy model, and the one-line errors of the command."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from diffalign.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data", "unigenbench")
TOY = ("--benchmark", "toy", "--judge", "toy")


def bench(*argv) -> int:
    return main(["bench", "unigenbench", *argv, "--no-progress-bar"])


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """Two toy bench runs of 3 prompts (12 images each): the preset, and the same images judged again
    from --images under another label."""
    pytest.importorskip("diffalign.benchmarks.bench_report")
    folder = tmp_path_factory.mktemp("toy-bench")
    runs = {"base": str(folder / "base"), "again": str(folder / "again")}
    assert bench(*TOY, "--out", runs["base"], "--limit", "3") == 0
    assert bench(*TOY, "--images", os.path.join(runs["base"], "images"), "--out", runs["again"], "--limit", "3",
                 "--label", "judged again") == 0
    return runs


def read_results(run: str) -> dict:
    with open(os.path.join(run, "unigenbench.json"), encoding="utf-8") as handle:
        return json.load(handle)


@pytest.mark.slow
def test_toy_bench_writes_the_run(toy_runs, capsys):
    results = read_results(toy_runs["base"])
    assert (results["benchmark"], results["category"], results["judge"]) == ("toy", "toy", "toy")
    assert results["primary_order"] == ["Colour", "Shape", "Size", "Position", "Background"]
    assert results["counts"] == {"prompts": 3, "images": 12, "judged_images": 12, "failed_images": 0, "testpoint_judgements": 60}
    assert results["model"]["label"] == "toy-sd" and results["model"]["lora"] is None
    settings = results["settings"]
    assert (settings["seed"], settings["guidance"], settings["steps"], settings["resolution"], settings["limit"]) == (
        10_000_000, 3.0, 20, 32, 3)
    assert all(results["primary"][name]["total"] == 12 for name in results["primary_order"])
    assert results["sub"]["Colour"]["primary"] == "Colour"
    for name in ("report.md", "report.html", "judgements.jsonl", "images/0_0.png", "images/2_3.png"):
        assert os.path.isfile(os.path.join(toy_runs["base"], name)), name
    again = read_results(toy_runs["again"])
    assert again["model"] == {"model": None, "lora": None, "negative_model": None, "label": "judged again"}
    assert again["images_dir"] == os.path.abspath(os.path.join(toy_runs["base"], "images"))
    assert (again["primary"], again["overall"]) == (results["primary"], results["overall"])  # the toy judge is deterministic
    assert again["settings"]["seed"] is None and not os.path.exists(os.path.join(toy_runs["again"], "images"))


@pytest.mark.slow
def test_toy_verdicts_are_the_judge_terms_at_one_half(toy_runs):
    from diffalign.toy.bench import toy_prompts
    from diffalign.toy.judge import judge_terms

    items = toy_prompts(None, "toy")
    with open(os.path.join(toy_runs["base"], "judgements.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == 12
    for row in rows:
        terms = judge_terms(Image.open(os.path.join(toy_runs["base"], "images", row["image"])), items[row["prompt_index"]].prompt)
        expected = [int(getattr(terms, name.lower()) >= 0.5) for name in row["testpoints"]]
        assert row["scores"] == expected and row["attempts"] == 1 and row["error"] is None
        assert json.loads(row["raw"]) == pytest.approx({name: getattr(terms, name.lower()) for name in row["testpoints"]}, abs=1e-4)


@pytest.mark.slow
def test_toy_bench_images_are_the_demo_evaluation_images(toy_runs):
    from diffalign.toy.evaluation import EVAL_IMAGE_SEED, evaluation_prompts
    from diffalign.toy.preset import generate, load_toy_pipeline

    prompt = evaluation_prompts("held-out", 3, [])[2]
    image = generate(load_toy_pipeline(), [prompt], [EVAL_IMAGE_SEED + 1000 * 2 + 1], progress=False)[0]
    bench_image = Image.open(os.path.join(toy_runs["base"], "images", "2_1.png"))
    difference = np.abs(np.asarray(image, dtype=int) - np.asarray(bench_image, dtype=int))
    assert difference.max() <= 2 and difference.mean() < 0.1  # equal up to the float rounding of another batch size


@pytest.mark.slow
def test_a_rerun_generates_and_judges_nothing_new(toy_runs, capsys):
    before = os.path.getmtime(os.path.join(toy_runs["base"], "images", "0_0.png"))
    assert bench(*TOY, "--out", toy_runs["base"], "--limit", "3") == 0
    assert "judged 12 of 12 images (60 test-point judgements) with toy" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(toy_runs["base"], "images", "0_0.png")) == before
    with open(os.path.join(toy_runs["base"], "judgements.jsonl"), encoding="utf-8") as handle:
        assert len(handle.readlines()) == 12


@pytest.mark.slow
def test_toy_leaderboard(toy_runs, tmp_path, capsys):
    pytest.importorskip("diffalign.benchmarks.leaderboard")
    out = tmp_path / "board"
    assert main(["bench", "leaderboard", toy_runs["base"], toy_runs["again"], "--out", str(out)]) == 0
    assert f"leaderboard of 2 runs: {out}" in capsys.readouterr().out
    for name in ("leaderboard.md", "leaderboard.html"):
        text = (out / name).read_text(encoding="utf-8")
        assert "judged again" in text and "toy-sd" in text and "Colour" in text


def one_line_error(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("diffalign bench unigenbench: error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_missing_prompts_dir(capsys, tmp_path):
    code = bench("--judge", "toy", "--out", str(tmp_path / "run"))
    one_line_error(capsys, code, "--prompts-dir is required with --benchmark unigenbench")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec, expected", [
    ("gpt-4o", "--judge 'gpt-4o' names no judge; give one of openai:MODEL@URL, toy, transformers:PATH"),
    ("openai:gemini-2.5-pro", "must read openai:MODEL@URL"),
    ("openai:m@ftp://host", "must read openai:MODEL@URL"),
    ("transformers:", "needs the folder or hub id"),
    ("toy:large", "--judge toy takes no argument"),
])
def test_unknown_or_malformed_judge_spec(capsys, tmp_path, spec, expected):
    code = bench("--benchmark", "toy", "--judge", spec, "--out", str(tmp_path / "run"))
    one_line_error(capsys, code, expected)
    assert not (tmp_path / "run").exists()


def test_missing_images(capsys, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "0_0.png")
    code = bench(*TOY, "--images", str(images), "--out", str(tmp_path / "run"))
    one_line_error(capsys, code, f"--images {images} lacks 239 of the 240 images to judge, e.g. 0_1.png")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (("--prompts-dir", DATA), "--prompts-dir does not apply to --benchmark toy"),
    (("--category", "en"), "--category must be one of toy for --benchmark toy, got 'en'"),
    (("--images", REPO, "--model", "x"), "--model applies to generating images; --images"),
    (("--workers", "0"), "--workers must be an integer >= 1, got 0"),
    (("--timeout", "0"), "--timeout must be a number of seconds > 0"),
    (("--limit", "0"), "--limit must be an integer >= 1"),
])
def test_option_errors(capsys, tmp_path, argv, expected):
    one_line_error(capsys, bench(*TOY, *argv, "--out", str(tmp_path / "run")), expected)


def test_toy_judge_judges_the_toy_bench_only(capsys, tmp_path):
    if not os.path.isdir(DATA):
        pytest.skip(f"UniGenBench prompt files not found at {DATA}")
    code = bench("--judge", "toy", "--prompts-dir", DATA, "--model", "x", "--out", str(tmp_path / "run"))
    one_line_error(capsys, code, "--judge toy judges --benchmark toy only, not unigenbench")


def test_bench_without_a_command_prints_help(capsys):
    assert main(["bench"]) == 2
    assert "unigenbench" in capsys.readouterr().out


@pytest.mark.slow
def test_local_vlm_judge(toy_runs, tmp_path, capsys):
    """``--judge transformers:PATH`` through the real loading and generation code, with a tiny Qwen2.5-VL
    that always gives the same answer: valid for the toy bench's 5 test points."""
    from tiny_rewards import save_tiny_unifiedreward

    answer = "<description><analysis>['a', 'b', 'c', 'd', 'e']</analysis><score>[1, 1, 0, 1, 1]</score></description>"
    judge = save_tiny_unifiedreward(str(tmp_path / "vlm"), answer=answer)
    images = os.path.join(toy_runs["base"], "images")
    out = tmp_path / "run"
    assert bench(*TOY[:2], "--judge", f"transformers:{judge}", "--images", images, "--limit", "1", "--device", "cpu",
                 "--out", str(out)) == 0
    results = read_results(str(out))
    assert results["judge"] == f"transformers:{judge}" and results["counts"]["judged_images"] == 4
    assert [results["primary"][name]["score"] for name in results["primary_order"]] == [100.0, 100.0, 0.0, 100.0, 100.0]
    assert results["overall"] == 80.0
    with open(out / "judgements.jsonl", encoding="utf-8") as handle:
        assert {json.loads(line)["raw"] for line in handle} == {answer}
