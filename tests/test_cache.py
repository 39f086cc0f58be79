"""The latent and text-embedding cache (`diffalign cache`): training from it equals training from the
images at the first step, it never loads the VAE or text encoders, and it refuses a run it cannot serve."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from transformers import CLIPTextModel

from conftest import write_jsonl, write_pair_images
from diffalign.data import DataError
from diffalign.data.cache import CacheMismatchError, LatentCache
from diffalign.tiny import build_tiny_pipeline
from diffalign.training import TrainConfig, train


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "diffalign", *args], capture_output=True, text=True, timeout=300)


def build_cache(model_dir, data, output, *extra):
    result = run_cli("cache", "--model", model_dir, "--data", data, "--output", str(output), "--no-progress-bar", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def scored_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scored")
    records = write_pair_images(folder, 6, seed=1)
    for index, record in enumerate(records):
        record.update(chosen_score=0.2 + 0.01 * index, rejected_score=0.25 - 0.02 * index)
    return write_jsonl(folder / "pairs.jsonl", records)


@pytest.fixture(scope="module")
def sd_cache(tiny_model_dir, scored_pairs, tmp_path_factory):
    output = tmp_path_factory.mktemp("caches") / "sd"
    build_cache(tiny_model_dir("sd"), scored_pairs, output)
    return str(output)


def first_metrics(output_dir):
    with open(f"{output_dir}/metrics.jsonl") as handle:
        return json.loads(handle.readline())


def config(model_dir, data, output_dir, **overrides):
    values = dict(model=model_dir, data=data, output_dir=str(output_dir), max_steps=1, train_batch_size=2,
                  progress_bar=False, checkpointing_steps=100, learning_rate=1e-4, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("method", ["diffusion-dpo", "mapo", "sft", "inpo", "smpo"])
def test_first_step_from_cache_equals_from_images(tiny_model_dir, scored_pairs, sd_cache, tmp_path, method, lora_rank):
    common = dict(method=method, lora_rank=lora_rank, method_args={"inversion_steps": 2} if method in ("inpo", "smpo") else {})
    from_images = first_metrics(train(config(tiny_model_dir("sd"), scored_pairs, tmp_path / "images", **common))["output_dir"])
    from_cache = first_metrics(train(config(tiny_model_dir("sd"), sd_cache, tmp_path / "cache", **common))["output_dir"])
    assert from_images.keys() == from_cache.keys()
    for name, value in from_images.items():
        assert from_cache[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_sdxl_cache_holds_pooled_embeddings_and_time_ids(tiny_model_dir, pair_jsonl, tmp_path):
    build_cache(tiny_model_dir("sdxl"), pair_jsonl, tmp_path / "cache")
    cache = LatentCache(str(tmp_path / "cache"))
    assert set(cache.conditioning("a red circle number 0")) == {"prompt_embeds", "text_embeds", "time_ids"}
    assert cache.conditioning("").keys() == cache.conditioning("a red circle number 0").keys()
    common = dict(method="diffusion-dpo", lora_rank=4)
    from_images = first_metrics(train(config(tiny_model_dir("sdxl"), pair_jsonl, tmp_path / "images", **common))["output_dir"])
    from_cache = first_metrics(train(config(tiny_model_dir("sdxl"), str(tmp_path / "cache"), tmp_path / "c", **common))["output_dir"])
    assert from_cache["loss"] == pytest.approx(from_images["loss"], rel=1e-5)
    assert from_cache["diffusion/mse_w"] == pytest.approx(from_images["diffusion/mse_w"], rel=1e-5)


def test_training_from_the_cache_never_loads_the_encoders(tiny_model_dir, sd_cache, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an encoder was loaded")

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", refuse)
    monkeypatch.setattr(CLIPTextModel, "from_pretrained", refuse)
    summary = train(config(tiny_model_dir("sd"), sd_cache, tmp_path, method="diffusion-dpo", lora_rank=4, max_steps=2))
    assert summary["steps"] == 2
    monkeypatch.undo()
    # full fine-tuning from a cache still exports a complete pipeline (the other components from the model's files)
    train(config(tiny_model_dir("sd"), sd_cache, tmp_path / "full", method="sft"))
    pipeline = DiffusionPipeline.from_pretrained(str(tmp_path / "full"))
    assert pipeline("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0].size == (64, 64)


def test_flips_come_from_the_mirrored_latents(tiny_model_dir, sd_cache):
    cache = LatentCache(sd_cache)
    row = cache.rows[0]
    mean, _ = cache.latents(row["chosen"], False, "row 0")
    flipped, _ = cache.latents(row["chosen"], True, "row 0")
    assert mean.shape == (4, 8, 8) and not torch.equal(mean, flipped)


def test_mismatches_are_refused_by_name(tiny_model_dir, sd_cache, tmp_path):
    with pytest.raises(CacheMismatchError, match="holds 64 px latents but --resolution is 32"):
        train(config(tiny_model_dir("sd"), sd_cache, tmp_path / "a", resolution=32))
    with pytest.raises(CacheMismatchError, match="random crops"):
        train(config(tiny_model_dir("sd"), sd_cache, tmp_path / "b", center_crop=False))
    other = tmp_path / "other-model"
    build_tiny_pipeline("sd", seed=1).save_pretrained(other)
    with pytest.raises(CacheMismatchError, match="built with another text_encoder|built with another vae"):
        train(config(str(other), sd_cache, tmp_path / "c"))
    # the same encoders under another UNet (a fine-tuned model) may use the cache
    finetuned = tmp_path / "finetuned"
    pipeline = DiffusionPipeline.from_pretrained(tiny_model_dir("sd"))
    with torch.no_grad():
        next(pipeline.unet.parameters()).add_(0.1)
    pipeline.save_pretrained(finetuned)
    assert train(config(str(finetuned), sd_cache, tmp_path / "d", method="sft"))["steps"] == 1


def test_cache_without_flips_refuses_random_flip(tiny_model_dir, pair_jsonl, tmp_path):
    build_cache(tiny_model_dir("sd"), pair_jsonl, tmp_path / "cache", "--no-random-flip")
    with pytest.raises(CacheMismatchError, match="no mirrored latents"):
        train(config(tiny_model_dir("sd"), str(tmp_path / "cache"), tmp_path / "a"))
    assert train(config(tiny_model_dir("sd"), str(tmp_path / "cache"), tmp_path / "b", random_flip=False))["steps"] == 1


def test_a_format_reads_what_the_cache_holds(tiny_model_dir, sd_cache, tmp_path):
    # chosen_images reads an image_pairs cache (the winners); a format needing fields the rows lack says so
    assert train(config(tiny_model_dir("sd"), sd_cache, tmp_path / "sft", method="sft"))["steps"] == 1
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    build_cache(tiny_model_dir("sd"), str(prompts), tmp_path / "prompt-cache")
    cache = LatentCache(str(tmp_path / "prompt-cache"))
    assert cache.info["data_format"] == "prompts" and cache.info["prompts"] == ["", "a blue square", "a red circle"]
    with pytest.raises(DataError, match="missing field 'chosen'"):
        train(config(tiny_model_dir("sd"), str(tmp_path / "prompt-cache"), tmp_path / "x"))


def test_cache_command_errors(tiny_model_dir, pair_jsonl, sd_cache, tmp_path):
    result = run_cli("cache", "--model", tiny_model_dir("sd"), "--data", pair_jsonl, "--output", sd_cache)
    assert result.returncode == 2 and "exists and is not empty" in result.stderr and "--overwrite" in result.stderr
    result = run_cli("cache", "--model", tiny_model_dir("sd"), "--data", pair_jsonl, "--output", str(tmp_path / "c"),
                     "--format", "text_pairs")
    assert result.returncode == 2 and "a latent cache is for diffusion formats" in result.stderr
    result = run_cli("cache", "--model", tiny_model_dir("sd"), "--data", str(tmp_path / "none.jsonl"), "--output",
                     str(tmp_path / "d"))
    assert result.returncode == 2 and "none.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_captioned_images_cache_their_negative_prompts(tiny_model_dir, tmp_path):
    images = write_pair_images(tmp_path, 2)
    data = write_jsonl(tmp_path / "captioned.jsonl", [
        {"image": images[0]["chosen"], "prompt": "a red circle", "negative_prompts": ["a blue circle", "a red square"]},
        {"image": images[1]["chosen"], "prompt": "a green square"},  # no negative prompt: zero rows
    ])
    build_cache(tiny_model_dir("sd"), data, tmp_path / "cache")
    from diffalign.data import ImageOptions, get_format, read_table
    from diffalign.diffusion.model import DiffusionModel

    model = DiffusionModel.from_pretrained(tiny_model_dir("sd"), reference=None)
    batches = []
    for table in (read_table(data), LatentCache(str(tmp_path / "cache")).table()):
        dataset, collate = get_format("captioned_images").build(table, ImageOptions(resolution=64, random_flip=False))
        batches.append(model.encode_batch(collate([dataset[0], dataset[1]]), torch.Generator().manual_seed(0)))
    from_images, from_cache = batches
    assert from_cache["negative_counts"].tolist() == [2, 0]
    torch.testing.assert_close(from_cache["negative_cond"].prompt_embeds, from_images["negative_cond"].prompt_embeds)
    torch.testing.assert_close(from_cache["image_latents"], from_images["image_latents"], rtol=1e-5, atol=1e-6)
