"""Defaults that follow the model and the data: the training resolution, empty sources."""

import pytest

from conftest import write_jsonl
from diffalign.cli import main
from diffalign.training import TrainConfig, build_method
from diffalign.training.diffusion_modality import DiffusionModality


def test_resolution_defaults_to_the_models_own(tiny_model_dir, pair_jsonl):
    # the tiny SD fixture: UNet sample size 8 x VAE factor 8 = 64 px (not diffusers' 512)
    config = TrainConfig(method="sft", model=tiny_model_dir("sd"), data=pair_jsonl)
    modality = DiffusionModality()
    dataset, _ = modality.build_dataset(config, build_method(config))
    assert modality.resolution == 64 and dataset[0]["image_pixels"].shape == (3, 64, 64)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_an_empty_jsonl_says_so(tiny_model_dir, tmp_path, capsys, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    argv = ["train", "--method", "diffusion-dpo", "--model", tiny_model_dir("sd"), "--data", str(path),
            "--output-dir", str(tmp_path / "out"), "--no-progress-bar"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{path}: the data has no rows (an empty file or split)" in err and "missing column" not in err
