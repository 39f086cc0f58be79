"""A shortened ``diffalign demo`` on CPU: the report's numbers must come from the generated images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import diffalign  # noqa: F401  (torchvision CPU shim first)
from diffalign.toy import world
from diffalign.toy.demo import check_method
from diffalign.toy.evaluation import win_rate
from diffalign.toy.judge import ToyJudge


SHORT_DEMO = ["demo", "--method", "diffusion-dpo", "--train-prompts", "6", "--candidates", "2", "--eval-prompts", "5",
              "--eval-seeds", "2", "--steps", "3", "--batch-size", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from diffalign.cli import main

    output = tmp_path_factory.mktemp("demo")
    code = main(SHORT_DEMO + ["--output-dir", str(output)])
    assert code == 0
    return output


def test_report_numbers_are_recomputed_from_the_saved_evaluation_images(demo_run):
    report = json.loads((demo_run / "report.json").read_text())
    for key in ("method", "win_rate", "reward_before", "reward_after", "n_prompts", "seconds"):
        assert key in report
    assert report["method"] == "diffusion-dpo" and report["n_prompts"] == 5 and report["n_comparisons"] == 10
    rows = [json.loads(line) for line in (demo_run / "eval" / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 10
    _, held_out = world.split_prompts()
    assert all(row["prompt"] in held_out for row in rows)
    judge = ToyJudge()
    prompts = [row["prompt"] for row in rows]
    before = judge.score([Image.open(demo_run / "eval" / row["base"]) for row in rows], prompts).tolist()
    after = judge.score([Image.open(demo_run / "eval" / row["aligned"]) for row in rows], prompts).tolist()
    assert before == pytest.approx([row["base_score"] for row in rows])
    assert report["reward_before"] == pytest.approx(sum(before) / 10)
    assert report["reward_after"] == pytest.approx(sum(after) / 10)
    assert report["win_rate"] == pytest.approx(win_rate(after, before)["win_rate"])
    assert len({row["seed"] for row in rows}) == 10
    assert f"{report['win_rate']:.3f}" in (demo_run / "report.md").read_text()


def test_base_and_aligned_images_come_from_the_row_seed(demo_run):
    from diffalign.toy.preset import generate, load_toy_pipeline

    row = json.loads((demo_run / "eval" / "eval.jsonl").read_text().splitlines()[3])
    for name, pipe in (("base", load_toy_pipeline()), ("aligned", load_toy_pipeline(demo_run / "model"))):
        again = np.asarray(generate(pipe, [row["prompt"]], [row["seed"]], progress=False)[0], dtype=int)
        saved = np.asarray(Image.open(demo_run / "eval" / row[name]), dtype=int)
        assert np.abs(again - saved).max() <= 1, name


def test_pairs_are_best_vs_worst_and_strictly_better_by_the_judge(demo_run):
    rows = [json.loads(line) for line in (demo_run / "pairs.jsonl").read_text().splitlines()]
    assert 1 <= len(rows) <= 6
    train, _ = world.split_prompts()
    judge = ToyJudge()
    for row in rows:
        assert row["prompt"] in train and row["scorer"] == "toy"
        chosen, rejected = (Image.open(demo_run / row[k]) for k in ("chosen", "rejected"))
        scores = judge.score([chosen, rejected], [row["prompt"]] * 2).tolist()
        assert scores == pytest.approx([row["chosen_score"], row["rejected_score"]])
        assert scores[0] > scores[1]


def test_candidates_use_their_own_sampler_and_the_evaluation_the_presets(demo_run):
    """Candidates at the demo's guidance (2.5) with DDIM eta 1 (demo step 1); evaluation images at preset.SAMPLING."""
    from diffalign.toy.preset import SAMPLING, generate, load_toy_pipeline

    report = json.loads((demo_run / "report.json").read_text())
    assert report["pairs"]["candidate_sampling"]["guidance_scale"] == 2.5 and report["pairs"]["candidate_sampling"]["eta"] == 1.0
    assert report["sampling"] == SAMPLING and SAMPLING["guidance_scale"] == 3.0
    train, _ = world.split_prompts()
    prompt = world.sample_prompts(train, 6, seed=0)[0]  # the demo's first training prompt (--seed 0)
    saved = np.asarray(Image.open(demo_run / "candidates" / "0000_1.png"), dtype=int)
    pipe = load_toy_pipeline()
    again = np.asarray(generate(pipe, [prompt], [1], progress=False, guidance_scale=2.5, eta=1.0)[0], dtype=int)
    evaluation_sampler = np.asarray(generate(pipe, [prompt], [1], progress=False)[0], dtype=int)
    assert np.abs(again - saved).max() <= 1
    assert np.abs(evaluation_sampler - saved).max() > 1


def test_demo_writes_figures_curves_and_an_aligned_pipeline_that_differs_from_the_base(demo_run):
    from diffalign.toy.preset import load_toy_pipeline

    assert Image.open(demo_run / "grid.png").size[0] > 5 * 128
    assert Image.open(demo_run / "curves.png").size[0] >= 800
    assert Image.open(demo_run / "rewards.png").size[0] >= 800
    assert all(f"({name})" in (demo_run / "report.md").read_text() for name in ("grid.png", "rewards.png", "curves.png"))
    metrics = [json.loads(line) for line in (demo_run / "model" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all("rewards/accuracies" in m for m in metrics)
    base, aligned = load_toy_pipeline(), load_toy_pipeline(demo_run / "model")
    differences = [(a - b).abs().max() for a, b in zip(aligned.unet.parameters(), base.unet.parameters())]
    assert max(differences) > 0
    assert all(torch.equal(a, b) for a, b in zip(aligned.vae.parameters(), base.vae.parameters()))


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 0.5, 0.2, 0.3], [0.5, 0.5, 0.4, 0.1]) == pytest.approx(
        {"win_rate": 0.625, "wins": 2, "losses": 1, "ties": 1, "win_rate_stderr": (0.625 * 0.375 / 4) ** 0.5})


def test_demo_rejects_methods_that_do_not_train_on_image_pairs():
    assert check_method("mapo").name == "mapo"
    with pytest.raises(ValueError, match="methods that fit the demo: .*diffusion-dpo.*mapo"):
        check_method("text-dpo")
    with pytest.raises(ValueError, match="not a registered method"):
        check_method("nope")


def test_validation_prompts_exclude_pair_prompts_and_held_out_prompts():
    from diffalign.toy.evaluation import evaluation_prompts

    train, held_out = world.split_prompts()
    used = train[:100]
    validation = evaluation_prompts("validation", 1000, used)
    assert set(validation) == set(train[100:])
    assert set(evaluation_prompts("held-out", 1000, used)) == set(held_out)
    assert evaluation_prompts("held-out", 64, []) == evaluation_prompts("held-out", 64, used)
    with pytest.raises(ValueError, match="--eval-split"):
        evaluation_prompts("test", 1, [])


def test_train_seed_changes_the_training_but_not_the_pairs(demo_run, tmp_path):
    from diffalign.cli import main
    from diffalign.toy.preset import load_toy_pipeline

    code = main(SHORT_DEMO + ["--output-dir", str(tmp_path), "--train-seed", "1"])
    assert code == 0
    assert (tmp_path / "pairs.jsonl").read_text() == (demo_run / "pairs.jsonl").read_text()
    assert json.loads((tmp_path / "model" / "run_config.json").read_text())["train_config"]["seed"] == 1
    first, second = load_toy_pipeline(demo_run / "model"), load_toy_pipeline(tmp_path / "model")
    assert any(not torch.equal(a, b) for a, b in zip(first.unet.parameters(), second.unet.parameters()))
