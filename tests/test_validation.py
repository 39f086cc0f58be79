"""Validation images during training (``diffalign.training.validation``) and ``--report-to``."""

import glob
import json
import os

import pytest
from PIL import Image

from diffalign.cli import main
from diffalign.diffusion import seeds
from diffalign.training import TrainConfig, train

TOY_PROMPT = "a small red circle on the left on a white background"  # in the toy judge's grammar
MISSING_MODEL = ["--model", "/no/such/model", "--data", "/no/such/data"]


def config_for(model_dir, data, output_dir, **overrides):
    values = dict(model=model_dir, data=data, output_dir=str(output_dir), resolution=64, max_steps=2,
                  train_batch_size=2, progress_bar=False, checkpointing_steps=100, method="diffusion-dpo",
                  validation_prompts="a red circle", validation_steps=1, validation_images=1,
                  validation_inference_steps=2)
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def train_error(capsys, argv) -> str:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffalign train: error: "), err
    return lines[0]


def test_images_grid_and_tensorboard(tiny_model_dir, pair_jsonl, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(config_for(tiny_model_dir("sd"), pair_jsonl, tmp_path, report_to="tensorboard"))
    for step in (0, 1, 2):
        folder = tmp_path / "validation" / f"step-{step}"
        assert (folder / "0_0.png").is_file() and (folder / "grid.png").is_file()
        assert Image.open(folder / "0_0.png").size == (64, 64)
    base, last = (Image.open(tmp_path / "validation" / f"step-{s}" / "grid.png") for s in (0, 2))
    assert last.height > base.height and last.width == base.width  # a row for the base above step 2; step 0 alone
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(tmp_path / "README.md"))  # the card links the last grid, relative to itself
    assert "![validation images](validation/step-2/grid.png)" in card.text
    events = glob.glob(str(tmp_path / "diffalign" / "**" / "events.out.tfevents.*"), recursive=True)
    assert events
    accumulator = EventAccumulator(os.path.dirname(events[0]), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert any(tag.startswith("validation/grid") for tag in tags), tags
    steps = sorted({event.step for tag in tags if tag.startswith("validation/grid") for event in accumulator.Images(tag)})
    assert steps == [0, 1, 2]
    assert all("validation/reward" not in record for record in read_metrics(tmp_path))


def test_validation_does_not_change_training(tiny_model_dir, pair_jsonl, tmp_path):
    with_validation = train(config_for(tiny_model_dir("sd"), pair_jsonl, tmp_path / "a", validation_scorer="toy",
                                             validation_prompts=TOY_PROMPT))
    plain = train(config_for(tiny_model_dir("sd"), pair_jsonl, tmp_path / "b", validation_prompts=None,
                             validation_steps=None, validation_images=1, validation_inference_steps=25,
                             report_to="none"))
    assert with_validation["parameter_checksums"] == plain["parameter_checksums"]
    records = read_metrics(tmp_path / "a")
    assert [record["step"] for record in records] == [0, 1, 2]
    assert all(0.0 <= record["validation/reward"] <= 1.0 for record in records)
    assert not (tmp_path / "b" / "validation").exists()


def test_resume_regenerates_the_same_images(tiny_model_dir, pair_jsonl, tmp_path):
    common = dict(validation_steps=2, validation_images=2, validation_prompts="a blue square", lora_rank=4,
                  checkpointing_steps=1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config_for(tiny_model_dir("sd"), pair_jsonl, straight, max_steps=3, **common))
    train(config_for(tiny_model_dir("sd"), pair_jsonl, resumed, max_steps=1, **common))
    # the validation options may change on resume
    train(config_for(tiny_model_dir("sd"), pair_jsonl, resumed, max_steps=3, resume_from="latest",
                     **{**common, "validation_steps": 1}))
    assert sorted(os.listdir(straight / "validation")) == ["step-0", "step-2", "step-3"]
    assert sorted(os.listdir(resumed / "validation")) == ["step-0", "step-1", "step-2", "step-3"]
    for name in ("0_0.png", "0_1.png", "grid.png"):
        a, b = (Image.open(folder / "validation" / "step-3" / name) for folder in (straight, resumed))
        assert a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("argv, message", [
    (["--validation-steps", "2"], "--validation-steps needs --validation-prompts"),
    (["--validation-scorer", "toy"], "--validation-scorer needs --validation-prompts"),
    (["--validation-prompts", "x", "--validation-images", "0"], "--validation-images must be in [1, 1000]"),
    (["--validation-prompts", "x", "--validation-images", "1001"], "--validation-images must be in [1, 1000]"),
    (["--validation-prompts", "x", "--validation-scorer", "nope"], "--validation-scorer must be a registered scorer"),
    (["--validation-prompts", "/no/such/prompts.txt"], "--validation-prompts file /no/such/prompts.txt does not exist"),
    (["--validation-prompts", "x", "--method", "text-dpo"], "--validation-prompts is for diffusion methods"),
    (["--report-to", "nothing"], "--report-to must be one of"),
])
def test_bad_options_are_one_line_errors(capsys, argv, message):
    assert message in train_error(capsys, [*MISSING_MODEL, *argv])


def test_prompts_file_and_report_to_none(tmp_path):
    from diffalign.training.validation import read_validation_prompts

    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\n a blue square \n")
    assert read_validation_prompts(str(path)) == ["a red circle", "a blue square"]
    assert read_validation_prompts("a green star") == ["a green star"]
    assert TrainConfig(report_to="none").report_to == "none"


def test_the_seed_rule_lives_below_training():
    from diffalign.pipelines import generate
    from diffalign.toy import generation

    assert generate.image_seeds is seeds.image_seeds is generation.image_seeds
    assert generate.SEED_STRIDE == seeds.SEED_STRIDE == 1000
