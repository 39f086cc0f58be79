"""The toy world's users (their judges and the toy user encoder) and ``diffalign demo --method ppd``."""

import json

import pytest
import torch

from diffalign.cli import main
from diffalign.rewards.user_encoders import Shot, get_user_encoder
from diffalign.toy import world
from diffalign.toy.users import HELD_OUT_USERS, TRAIN_USERS, ToyUserJudge, describe_image, image_features


def test_user_features_measure_size_and_height():
    large = image_features(world.render("a large red circle in the center on a white background", 0),
                           "a large red circle in the center on a white background")
    small = image_features(world.render("a small red circle in the center on a white background", 0),
                           "a small red circle in the center on a white background")
    top = image_features(world.render("a small red circle at the top on a white background", 0),
                         "a small red circle at the top on a white background")
    bottom = image_features(world.render("a small red circle at the bottom on a white background", 0),
                            "a small red circle at the bottom on a white background")
    assert large["large"] == pytest.approx(1.0, abs=0.15) and small["large"] == pytest.approx((4 / 7) ** 2, abs=0.08)
    assert top["high"] == pytest.approx(0.75, abs=0.08) and bottom["high"] == pytest.approx(0.25, abs=0.08)
    assert all(value > 0.9 for value in (large["adherence"], large["clean"]))


def test_users_weigh_their_tastes():
    for user in TRAIN_USERS + HELD_OUT_USERS:
        assert sum(user.weights.values()) == pytest.approx(1.0) and user.weights["adherence"] == 0.4
    caption = "a small red circle in the center on a white background"
    big, small = world.render(caption.replace("small", "large"), 0), world.render(caption, 0)
    big_lover = next(user for user in TRAIN_USERS if user.name == "big")
    clean_lover = next(user for user in TRAIN_USERS if user.name == "clean")
    # asked for a small circle, the big-shape user still prefers the large one; the clean-rendering user does not
    assert ToyUserJudge(big_lover).score([big], [caption]) > ToyUserJudge(big_lover).score([small], [caption])
    assert ToyUserJudge(clean_lover).score([big], [caption]) < ToyUserJudge(clean_lover).score([small], [caption])


def test_toy_encoder_is_the_mean_description_difference():
    captions = ["a large red circle on the left on a white background", "a small blue square at the top on a black background"]
    shots = [Shot(caption, world.render(caption, 0), world.render(caption.replace("red", "green").replace("blue", "yellow"), 1))
             for caption in captions]
    encoder = get_user_encoder("toy")  # found through the diffalign.user_encoders entry point
    embedding = encoder.embed([shots])
    expected = torch.stack([torch.tensor(describe_image(s.chosen, s.prompt)) - torch.tensor(describe_image(s.rejected, s.prompt))
                            for s in shots]).mean(0)
    assert embedding.shape == (1, encoder.dim) and torch.allclose(embedding[0], expected)
    assert embedding[0, 0] > 0.5  # the colour term: every preferred image has the caption's colour


@pytest.mark.slow
def test_shortened_ppd_demo(tmp_path):
    code = main(["demo", "--method", "ppd", "--output-dir", str(tmp_path), "--train-prompts", "10", "--candidates", "3",
                 "--eval-prompts", "3", "--eval-seeds", "1", "--steps", "2", "--batch-size", "4", "--threads", "1", "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    names = [user.name for user in TRAIN_USERS + HELD_OUT_USERS]
    assert list(report["users"]) == names and list(report["matrix"]) == names
    assert all(report["matrix"][name][name] == report["users"][name]["win_rate"] for name in names)
    summary = report["matrix_summary"]
    assert summary["judges"] == len(names) and set(summary["own_best"]) <= set(names)
    assert summary["diagonal_mean"] == pytest.approx(sum(report["matrix"][n][n] for n in names) / len(names))
    first, second = report["interpolation"]["users"]
    # alpha = 0 and 1 are the two users' own embeddings: the same images as their evaluation
    assert report["interpolation"]["rewards"][first][0] == report["users"][first]["reward_after"]
    assert report["interpolation"]["rewards"][second][-1] == report["users"][second]["reward_after"]
    for name in ("report.md", "matrix.png", "interpolation.png", "model/user_adapter.safetensors", "pairs.jsonl"):
        assert (tmp_path / name).is_file(), name
    assert "Cross-user matrix" in (tmp_path / "report.md").read_text()
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert {row["user"] for row in rows} == {user.name for user in TRAIN_USERS}


def test_ppd_demo_with_too_few_prompts_is_one_sentence(tmp_path, capsys):
    code = main(["demo", "--method", "ppd", "--output-dir", str(tmp_path), "--train-prompts", "4", "--candidates", "2",
                 "--steps", "1", "--threads", "1", "--no-progress"])
    assert code == 2 and "raise --train-prompts" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["ppd", "diffusion-dpo"])
def test_demo_steps_below_one_is_one_sentence_naming_the_demo_flag(tmp_path, capsys, method):
    code = main(["demo", "--method", method, "--output-dir", str(tmp_path), "--steps", "0", "--no-progress"])
    assert code == 2 and "--steps must be >= 1, got 0" in capsys.readouterr().err
