"""``diffalign generate`` (diffalign.pipelines.generate) on tiny random-weight pipelines, on CPU: the
output layout and listing, the seed rule, batch independence, resuming, the settings check, LoRA,
NPO negatives (pipeline and LoRA, the merge weight) and SDXL."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.cli import main
from diffalign.errors import UsageError
from diffalign.pipelines.generate import RECORDS_FILE, GenerateSettings, generate, image_seeds
from diffalign.rewards.records import read_image_listing

PROMPTS = ["a red circle on a blue background", "a cat sitting on a green sofa"]
FAST = ["--steps", "2", "--no-progress-bar"]


@pytest.fixture(scope="module")
def prompts_txt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n")  # the empty line is not a prompt (as `diffalign score` counts)
    return str(path)


@pytest.fixture(scope="module")
def other_sd_dir(tmp_path_factory):
    """A second tiny SD pipeline: other random weights, so its UNet differs."""
    from diffalign.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-sd-other")
    build_tiny_pipeline("sd", seed=1).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA folder as `diffalign train --lora-rank 4` exports it, with non-zero B so that it changes the UNet."""
    from diffalign.diffusion.model import DiffusionModel, LoraSettings

    model = DiffusionModel.from_pretrained(tiny_model_dir("sd"), reference=None, lora=LoraSettings(4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    path = tmp_path_factory.mktemp("lora")
    model.export(str(path), model.unet)
    (path / "README.md").write_text(f"---\nbase_model: {tiny_model_dir('sd')}\n---\n# a LoRA\n")  # as train's card has it
    assert os.path.isfile(path / "pytorch_lora_weights.safetensors")
    return str(path)


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what building a fixture's model printed
    code = main(["generate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pixels(folder, name="0_0.png") -> np.ndarray:
    return np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")).astype(int)


def rows(folder) -> list[dict]:
    with open(os.path.join(folder, RECORDS_FILE)) as handle:
        return [json.loads(line) for line in handle]


def images_of(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".png"))


@pytest.fixture(scope="module")
def sd_run(tiny_model_dir, prompts_txt, tmp_path_factory):
    """2 prompts x 2 images from the tiny SD pipeline, batch size 1, seed 7."""
    out = str(tmp_path_factory.mktemp("sd-run") / "out")
    assert main(["generate", "--model", tiny_model_dir("sd"), "--prompts", prompts_txt, "--images-per-prompt", "2",
                 "--seed", "7", "--out", out, *FAST]) == 0
    return out


def test_files_rows_and_seeds(sd_run, tiny_model_dir, prompts_txt):
    assert images_of(sd_run) == ["0_0.png", "0_1.png", "1_0.png", "1_1.png"]
    listed = rows(sd_run)
    assert [(row["prompt_index"], row["j"]) for row in listed] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [row["seed"] for row in listed] == [7, 8, 1007, 1008] == image_seeds(2, 2, 7)
    assert [row["prompt"] for row in listed] == [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    assert [row["image"] for row in listed] == ["0_0.png", "0_1.png", "1_0.png", "1_1.png"]
    first = listed[0]
    assert first["model"] == os.path.abspath(tiny_model_dir("sd"))
    assert (first["guidance"], first["steps"], first["height"], first["width"]) == (7.5, 2, 64, 64)
    assert (first["scheduler"], first["dtype"], first["lora"], first["negative_model"]) == ("DDIMScheduler", "float32", None, None)
    assert Image.open(os.path.join(sd_run, "0_0.png")).size == (64, 64)
    assert len({pixels(sd_run, name).tobytes() for name in images_of(sd_run)}) == 4  # four different seeds
    # `diffalign score` / `pairs` read the folder with the prompts file, and the listing as a manifest
    by_folder = read_image_listing(sd_run, prompts_txt)
    assert [(os.path.basename(r.path), r.prompt) for r in by_folder.records] == [(row["image"], row["prompt"]) for row in listed]
    assert by_folder.prompts_without_images == []
    by_listing = read_image_listing(os.path.join(sd_run, RECORDS_FILE))
    assert [(os.path.basename(r.path), r.prompt) for r in by_listing.records] == [(row["image"], row["prompt"]) for row in listed]


def test_image_depends_on_seed_not_on_batch(sd_run, tiny_model_dir, tmp_path):
    # image 1 of prompt 1 alone: one prompt whose first seed is that image's seed (7 + 1000 + 1)
    alone = generate(GenerateSettings(model=tiny_model_dir("sd"), prompts=[PROMPTS[1]], out=str(tmp_path / "alone"),
                                      seed=1008, steps=2, progress=False))
    assert (alone["generated"], alone["skipped"], alone["images"]) == (1, 0, 1)
    assert np.array_equal(pixels(tmp_path / "alone"), pixels(sd_run, "1_1.png"))
    # all four in one batch: the same images up to float rounding of the batched UNet
    batched = generate(GenerateSettings(model=tiny_model_dir("sd"), prompts=PROMPTS, images_per_prompt=2,
                                        out=str(tmp_path / "batched"), seed=7, steps=2, batch_size=4, progress=False))
    assert batched["generated"] == 4
    for name in images_of(sd_run):
        assert np.abs(pixels(tmp_path / "batched", name) - pixels(sd_run, name)).max() <= 2, name


def test_resume_skips_existing_and_regenerates_missing(capsys, tiny_model_dir, prompts_txt, tmp_path):
    out = str(tmp_path / "out")
    command = ["--model", tiny_model_dir("sd"), "--prompts", prompts_txt, "--images-per-prompt", "2", "--out", out, *FAST]
    assert run(capsys, *command)[0] == 0
    before = {name: pixels(out, name) for name in images_of(out)}
    mtimes = {name: os.path.getmtime(os.path.join(out, name)) for name in before}

    code, printed, _ = run(capsys, *command)
    assert code == 0 and "generated 0 images, skipped 4 that existed" in printed
    assert {name: os.path.getmtime(os.path.join(out, name)) for name in before} == mtimes

    os.remove(os.path.join(out, "1_0.png"))
    code, printed, _ = run(capsys, *command)
    assert code == 0 and "generated 1 images, skipped 3 that existed" in printed
    assert np.array_equal(pixels(out, "1_0.png"), before["1_0.png"])
    assert [(row["prompt_index"], row["j"]) for row in rows(out)] == [(0, 0), (0, 1), (1, 1), (1, 0)]

    # a killed run: an image without its row (made again) and a row cut off while written (dropped)
    listed = rows(out)
    with open(os.path.join(out, RECORDS_FILE), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in listed if row["image"] != "0_1.png")
        handle.write('{"prompt_index": 0, "j": 1, "pro')
    code, printed, _ = run(capsys, *command)
    assert code == 0 and "generated 1 images, skipped 3 that existed" in printed
    assert sorted((row["prompt_index"], row["j"]) for row in rows(out)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert np.array_equal(pixels(out, "0_1.png"), before["0_1.png"])

    # more images per prompt only adds images
    code, printed, _ = run(capsys, *command[:-len(FAST)], "--images-per-prompt", "3", *FAST)
    assert code == 0 and "generated 2 images, skipped 4 that existed" in printed
    assert images_of(out) == ["0_0.png", "0_1.png", "0_2.png", "1_0.png", "1_1.png", "1_2.png"]
    assert not [name for name in os.listdir(out) if "partial" in name]


@pytest.mark.parametrize("change, named", [
    (["--guidance", "3"], "--guidance 7.5, not 3.0"),
    (["--steps", "3"], "--steps 2, not 3"),
    (["--seed", "5"], "--seed 0, not 5"),
    (["--negative-prompt", "blurry"], "--negative-prompt none, not 'blurry'"),
    (["--scheduler", "euler"], "--scheduler 'DDIMScheduler', not 'EulerDiscreteScheduler'"),
    (["--prompts", "a blue square"], "prompt 0 'a red circle on a blue background'"),
])
def test_other_settings_into_the_same_folder_stop(capsys, sd_run, tiny_model_dir, prompts_txt, tmp_path, change, named):
    out = str(tmp_path / "out")
    base = ["--model", tiny_model_dir("sd"), "--prompts", prompts_txt, "--out", out, *FAST]
    assert run(capsys, *base)[0] == 0
    listing = open(os.path.join(out, RECORDS_FILE)).read()
    code, _, err = run(capsys, *base, *change)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and named in err and "--overwrite" in err and "another --out" in err
    assert open(os.path.join(out, RECORDS_FILE)).read() == listing and images_of(out) == ["0_0.png", "1_0.png"]


def test_overwrite_starts_over(capsys, tiny_model_dir, prompts_txt, tmp_path):
    out = tmp_path / "out"
    base = ["--model", tiny_model_dir("sd"), "--prompts", prompts_txt, "--out", str(out), "--images-per-prompt", "2", *FAST]
    assert run(capsys, *base)[0] == 0
    (out / "notes.txt").write_text("kept")
    code, printed, _ = run(capsys, *base[:-len(FAST)], "--images-per-prompt", "1", "--guidance", "3", "--overwrite", *FAST)
    assert code == 0 and "generated 2 images, skipped 0" in printed
    assert images_of(out) == ["0_0.png", "1_0.png"] and (out / "notes.txt").read_text() == "kept"
    assert {row["guidance"] for row in rows(out)} == {3.0} and len(rows(out)) == 2


def test_folder_of_other_images_is_not_overwritten_unasked(capsys, tiny_model_dir, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "0_0.png")
    code, _, err = run(capsys, "--model", tiny_model_dir("sd"), "--prompts", "a red circle", "--out", str(tmp_path), *FAST)
    assert code == 2 and f"no {RECORDS_FILE}" in err and "--overwrite" in err


def test_literal_prompt(capsys, tiny_model_dir, tmp_path):
    out = str(tmp_path / "out")
    code, printed, _ = run(capsys, "--model", tiny_model_dir("sd"), "--prompt", "a cat/dog hybrid", "--out", out, *FAST)
    assert code == 0 and "generated 1 images" in printed
    assert images_of(out) == ["0_0.png"] and rows(out)[0]["prompt"] == "a cat/dog hybrid"


def test_prompts_jsonl(capsys, tiny_model_dir, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": PROMPTS[1], "id": 3}) + "\n")
    out = str(tmp_path / "out")
    assert run(capsys, "--model", tiny_model_dir("sd"), "--prompts", str(path), "--out", out, *FAST)[0] == 0
    assert rows(out)[0]["prompt"] == PROMPTS[1]
    path.write_text('{"text": "no prompt field"}\n')
    code, _, err = run(capsys, "--model", tiny_model_dir("sd"), "--prompts", str(path), "--out", out, *FAST)
    assert code == 2 and f"{path}:1: missing string field 'prompt'" in err


@pytest.mark.parametrize("value", ["missing.txt", "prompts/missing.jsonl", "some/dir/prompts"])
def test_missing_prompts_file_is_an_error(capsys, tiny_model_dir, tmp_path, value):
    out = tmp_path / "out"
    code, _, err = run(capsys, "--model", tiny_model_dir("sd"), "--prompts", value, "--out", str(out), *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--prompts {value}: no such file" in err
    assert not out.exists()


@pytest.mark.parametrize("flags, named", [
    (["--images-per-prompt", "0"], "--images-per-prompt must be an integer from 1 to 1000, got 0"),
    (["--images-per-prompt", "1001"], "--images-per-prompt must be an integer from 1 to 1000, got 1001"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--seed", "-1"], "--seed must be an integer from 0"),
    (["--guidance", "inf"], "--guidance must be a finite number"),
    (["--height", "30"], "--height must be a positive multiple of 8"),
    (["--scheduler", "fastest"], "--scheduler must be a diffusers scheduler class"),
    (["--merge-weight", "0.5"], "--merge-weight applies to the negative model"),
    (["--negative-base", "x"], "--negative-base applies to the negative model"),
    (["--negative-model", "NEG", "--merge-weight", "nan"], "--merge-weight must be a finite number, got nan"),
])
def test_bad_options_fail_before_loading(capsys, tiny_model_dir, tmp_path, flags, named):
    out = tmp_path / "out"
    code, _, err = run(capsys, "--model", tiny_model_dir("sd"), "--prompts", "a red circle", "--out", str(out), *FAST, *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
    assert not out.exists()


def test_models_that_cannot_load(capsys, tiny_model_dir, lora_dir, tmp_path):
    out = str(tmp_path / "out")
    code, _, err = run(capsys, "--model", "nobody/not-cached-model", "--prompts", "a red circle", "--out", out, *FAST)
    assert code == 2 and "not in the local hub cache" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "--model", lora_dir, "--prompts", "a red circle", "--out", out, *FAST)
    assert code == 2 and "is a LoRA folder" in err and "--lora" in err and tiny_model_dir("sd") in err
    code, _, err = run(capsys, "--model", tiny_model_dir("sd"), "--lora", str(tmp_path), "--prompts", "a red circle", "--out", out, *FAST)
    assert code == 2 and "holds no pytorch_lora_weights.safetensors" in err
    code, _, err = run(capsys, "--model", tiny_model_dir("sd"), "--negative-model", str(tmp_path), "--prompts", "a red circle",
                       "--out", out, *FAST)
    assert code == 2 and "neither model_index.json" in err


def test_lora_changes_the_images(capsys, sd_run, tiny_model_dir, lora_dir, tmp_path):
    out = str(tmp_path / "out")
    assert run(capsys, "--model", tiny_model_dir("sd"), "--lora", lora_dir, "--prompts", PROMPTS[0], "--seed", "7",
               "--out", out, *FAST)[0] == 0
    assert rows(out)[0]["lora"] == os.path.abspath(lora_dir)
    assert not np.array_equal(pixels(out), pixels(sd_run))


def test_negative_model(capsys, sd_run, tiny_model_dir, other_sd_dir, tmp_path):
    plain = pixels(sd_run)  # prompt 0, seed 7, guidance 7.5
    common = ["--model", tiny_model_dir("sd"), "--prompts", PROMPTS[0], "--seed", "7", *FAST]
    assert run(capsys, *common, "--negative-model", tiny_model_dir("sd"), "--out", str(tmp_path / "itself"))[0] == 0
    assert np.array_equal(pixels(tmp_path / "itself"), plain)  # the model as its own negative: plain CFG, bit for bit
    assert run(capsys, *common, "--negative-model", other_sd_dir, "--out", str(tmp_path / "other"))[0] == 0
    assert not np.array_equal(pixels(tmp_path / "other"), plain)
    row = rows(tmp_path / "other")[0]
    assert (row["negative_model"], row["negative_base"], row["merge_weight"]) == (
        os.path.abspath(other_sd_dir), os.path.abspath(tiny_model_dir("sd")), 0.0)


def test_negative_lora_and_merge_weight(capsys, sd_run, tiny_model_dir, other_sd_dir, lora_dir, tmp_path):
    common = ["--model", tiny_model_dir("sd"), "--prompts", PROMPTS[0], "--seed", "7", *FAST]
    # a LoRA negative fused onto --model (the base): differs from plain CFG
    assert run(capsys, *common, "--negative-model", lora_dir, "--out", str(tmp_path / "lora-negative"))[0] == 0
    assert not np.array_equal(pixels(tmp_path / "lora-negative"), pixels(sd_run))
    # positive = model + LoRA, so theta_pos - theta_base != 0 and the merge weight matters
    merged = {}
    for weight in ("0", "1"):
        out = tmp_path / f"m{weight}"
        assert run(capsys, *common, "--lora", lora_dir, "--negative-model", other_sd_dir, "--merge-weight", weight,
                   "--out", str(out))[0] == 0
        merged[weight] = pixels(out)
    assert not np.array_equal(merged["0"], merged["1"])


def test_merge_weight_is_skipped_when_the_positive_is_the_base(capsys, tiny_model_dir, other_sd_dir, tmp_path):
    common = ["--model", tiny_model_dir("sd"), "--prompts", PROMPTS[0], "--negative-model", other_sd_dir, *FAST]
    for weight in ("0", "0.5"):
        assert run(capsys, *common, "--merge-weight", weight, "--out", str(tmp_path / weight))[0] == 0
    assert np.array_equal(pixels(tmp_path / "0"), pixels(tmp_path / "0.5"))


def test_sdxl(capsys, tiny_model_dir, tmp_path):
    from diffalign.tiny import build_tiny_pipeline

    other = tmp_path / "other-sdxl"
    build_tiny_pipeline("sdxl", seed=1).save_pretrained(other)
    common = ["--model", tiny_model_dir("sdxl"), "--prompts", PROMPTS[0], *FAST]
    assert run(capsys, *common, "--out", str(tmp_path / "plain"))[0] == 0
    row = rows(tmp_path / "plain")[0]
    assert (row["guidance"], row["height"]) == (5.0, 64)
    assert run(capsys, *common, "--negative-model", str(other), "--out", str(tmp_path / "npo"))[0] == 0
    assert not np.array_equal(pixels(tmp_path / "npo"), pixels(tmp_path / "plain"))
    code, _, err = run(capsys, *common, "--negative-model", tiny_model_dir("sd"), "--out", str(tmp_path / "mixed"))
    assert code == 2 and "must be of the model's family" in err


def test_toy_uses_the_same_seed_rule():
    from diffalign.pipelines import generate as runner
    from diffalign.toy import generation as toy

    assert toy.image_seeds is runner.image_seeds and runner.SEED_STRIDE == 1000
    assert toy.image_seeds(2, 3, 5) == [5, 6, 7, 1005, 1006, 1007]
    with pytest.raises(UsageError, match="at most 1000 images per prompt"):
        toy.image_seeds(1, 1001, 0)


def test_negative_weights_follow_the_merge(tiny_model_dir, other_sd_dir, lora_dir):
    from diffusers import UNet2DConditionModel

    from diffalign.pipelines.generate import load_pipeline, resolve_settings

    def load(**options):
        settings = GenerateSettings(model=tiny_model_dir("sd"), prompts="unused", out="unused", **options)
        family, recorded = resolve_settings(settings)
        return load_pipeline(settings, family, recorded, torch.device("cpu"))

    base = UNet2DConditionModel.from_pretrained(tiny_model_dir("sd"), subfolder="unet").state_dict()
    trained = UNet2DConditionModel.from_pretrained(other_sd_dir, subfolder="unet").state_dict()
    pipeline = load(lora=lora_dir, negative_model=other_sd_dir, merge_weight=0.25)
    positive = pipeline.unet.state_dict()
    assert not getattr(pipeline.unet, "peft_config", None)  # the LoRA is fused and its layers removed
    assert positive.keys() == base.keys() and any(not torch.equal(positive[name], base[name]) for name in base)
    for name, value in pipeline.negative_unet.state_dict().items():
        torch.testing.assert_close(value, trained[name] + 0.75 * (positive[name] - base[name]))
    itself = load(negative_model=tiny_model_dir("sd"))
    assert itself.negative_unet is itself.unet  # one batched forward: plain CFG bit for bit
    assert load().negative_unet is None


def test_half_precision_and_progress_bar(capsys, tiny_model_dir, tmp_path):
    code, _, err = run(capsys, "--model", tiny_model_dir("sd"), "--prompts", PROMPTS[0], "--steps", "2", "--dtype", "bfloat16",
                       "--out", str(tmp_path / "out"))
    assert code == 0 and "generate: 100%" in err
    assert rows(tmp_path / "out")[0]["dtype"] == "bfloat16"
