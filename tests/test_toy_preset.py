"""The toy preset: the shipped pretrained pipeline, and the pretraining recipe that rebuilds it."""

import json

import numpy as np
import pytest

import diffalign  # noqa: F401  (torchvision CPU shim first)
from diffalign.toy import judge, preset, world


def test_shipped_preset_is_small_and_loads_as_a_diffusers_pipeline():
    from diffusers import StableDiffusionPipeline

    folder = preset.TOY_MODEL_DIR
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 10 * 1024**2
    assert any(f.suffix == ".safetensors" for f in files) and not any(f.suffix == ".bin" for f in files)
    pipe = preset.load_toy_pipeline()
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.tokenizer.model_max_length == preset.MAX_TOKENS
    summary = json.loads((folder / "pretrain.json").read_text())
    assert summary["vae_psnr_db"] > 25


def test_shipped_preset_is_partially_right_on_held_out_prompts_and_seeded():
    """Better than chance by a wide margin (renders score ~0.95, empty images ~0.1), not perfect."""
    pipe = preset.load_toy_pipeline()
    _, held_out = world.split_prompts()
    prompts = world.sample_prompts(held_out, 16, seed=7)
    images = preset.generate(pipe, prompts, list(range(16)), progress=False)
    assert images[0].size == (world.RESOLUTION, world.RESOLUTION)
    scores = judge.ToyJudge().score(images, prompts)
    assert 0.45 < float(scores.mean()) < 0.93
    # an image depends on (prompt, seed) only, not on its batch
    again = preset.generate(pipe, prompts[3:5], [3, 4], progress=False)
    for a, b in zip(again, images[3:5]):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_pretrain_recipe_is_deterministic_and_exports_a_loadable_pipeline(tmp_path):
    from diffalign.toy.pretrain import PretrainConfig, pretrain
    from safetensors.torch import load_file

    config = PretrainConfig(images_per_caption=1, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, max_captions=16)
    first = pretrain(tmp_path / "a", config)
    pretrain(tmp_path / "b", config)
    assert first["train_captions"] == 16 and first["images"] == 16
    for part in ("unet", "vae", "text_encoder"):
        a = load_file(next((tmp_path / "a" / part).glob("*.safetensors")))
        b = load_file(next((tmp_path / "b" / part).glob("*.safetensors")))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    pipe = preset.load_toy_pipeline(tmp_path / "a")
    assert pipe.vae.config.scaling_factor == pytest.approx(first["scaling_factor"])
    assert pipe.vae.config.scaling_factor != 0.18215
    assert preset.generate(pipe, [world.all_captions()[0]], [0], progress=False, num_inference_steps=2)[0].size == (32, 32)


def test_load_names_the_rebuild_command_when_the_folder_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffalign toy pretrain"):
        preset.load_toy_pipeline(tmp_path)
