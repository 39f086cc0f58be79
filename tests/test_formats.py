"""The registered data formats added for wave 2 (prompts, captioned images, user-tagged pairs), the
registry itself, and the model's encode step on each of them."""

import io
import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_jsonl, write_pair_images
from diffalign.data import DataError, Example, ImageFormat, ImageOptions, get_format, read_table, register_format, registered_formats
from diffalign.diffusion.model import DiffusionModel
from diffalign.methods.base import Method, register_method


def build(data, data_format, **options):
    options.setdefault("resolution", 32)
    return get_format(data_format).build(read_table(data), ImageOptions(**options))


def batch_of(data, data_format, size=2, **options):
    dataset, collate = build(data, data_format, **options)
    return collate([dataset[i] for i in range(size)])


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionModel.from_pretrained(tiny_model_dir("sd"), reference=None, resolution=64)


def test_every_format_is_registered_with_its_modality():
    formats = registered_formats()
    assert set(formats) == {"image_pairs", "scored_image_pairs", "user_image_pairs", "chosen_images", "prompts",
                            "captioned_images", "labelled_images", "text_pairs", "text_unpaired", "text_ranked"}
    assert {name for name, fmt in formats.items() if fmt.modality == "text"} == {"text_pairs", "text_unpaired", "text_ranked"}


def test_prompts_from_a_text_file(tmp_path, model):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\n  a blue square  \n")
    batch = batch_of(str(path), "prompts")
    assert batch == {"prompts": ["a red circle", "a blue square"]}
    inputs = model.encode_batch(batch, torch.Generator().manual_seed(0))
    assert inputs["cond"].prompt_embeds.shape[0] == 2 and not any(key.endswith("_latents") for key in inputs)


def test_prompts_with_seed_images(tmp_path, model):
    records = [{"prompt": r["prompt"], "image": r["chosen"]} for r in write_pair_images(tmp_path, 2)]
    batch = batch_of(write_jsonl(tmp_path / "p.jsonl", records), "prompts", resolution=64)
    assert batch["image_pixels"].shape == (2, 3, 64, 64)
    assert model.encode_batch(batch, torch.Generator().manual_seed(0))["image_latents"].shape == (2, 4, 8, 8)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [records[0], {"prompt": "no image"}])
    with pytest.raises(DataError, match=r"line 2: either every row has an 'image' or none has \(.*line 1 has an 'image'\)"):
        build(mixed, "prompts")
    with pytest.raises(DataError, match="needs a 'prompt' field"):
        build(write_jsonl(tmp_path / "caption.jsonl", [{"caption": "x"}]), "prompts")


def test_captioned_images_encode_their_negative_prompts(tmp_path, model):
    images = write_pair_images(tmp_path, 2)
    records = [{"image": images[0]["chosen"], "prompt": "a red circle", "negative_prompts": ["a blue circle", "a red square"]},
               {"image": images[1]["chosen"], "prompt": "a green square"}]
    batch = batch_of(write_jsonl(tmp_path / "c.jsonl", records), "captioned_images", resolution=64)
    assert batch["negative_prompts"] == [["a blue circle", "a red square"], []]
    assert batch["negative_counts"].tolist() == [2, 0]
    inputs = model.encode_batch(batch, torch.Generator().manual_seed(0))
    expected = model.encode_prompts(["a blue circle", "a red square"]).prompt_embeds
    torch.testing.assert_close(inputs["negative_cond"].prompt_embeds, expected)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"image": "x.png", "prompt": "p", "negative_prompts": "not a list"}])
    with pytest.raises(DataError, match=r"line 1, field 'negative_prompts': expected a list of non-empty strings"):
        build(bad, "captioned_images")


def png(value):
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 48, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_user_image_pairs_from_pickapic_and_jsonl(tmp_path):
    table = datasets.Dataset.from_dict({"caption": ["a", "b", "c"], "jpg_0": [png(1), png(2), png(3)],
                                        "jpg_1": [png(4), png(5), png(6)], "label_0": [1.0, 0.5, 0.0], "user_id": [7, 8, 7]})
    table.to_parquet(str(tmp_path / "pairs.parquet"))
    batch = batch_of(str(tmp_path / "pairs.parquet"), "user_image_pairs")
    assert batch["users"] == ["7", "7"] and batch["chosen_pixels"].shape == (2, 3, 32, 32)
    records = write_pair_images(tmp_path, 2)
    records[0]["user"] = "alice"
    with pytest.raises(DataError, match=r"line 2, field 'user': expected a user id"):
        build(write_jsonl(tmp_path / "u.jsonl", records), "user_image_pairs")
    table.remove_columns("user_id").to_parquet(str(tmp_path / "nouser.parquet"))
    with pytest.raises(DataError, match=r"missing column\(s\) 'user_id'"):
        build(str(tmp_path / "nouser.parquet"), "user_image_pairs")


def test_a_new_format_is_one_class_and_a_method_names_it(tmp_path, monkeypatch):
    import diffalign.data.registry as formats
    import diffalign.methods.base as methods

    monkeypatch.setattr(formats, "_FORMATS", dict(formats.registered_formats()))  # leave the registries as they were
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))

    @register_format
    class GrayscaleImages(ImageFormat):
        """A format for a test: single images whose row has a 'gray' flag."""

        name = "test_grayscale_images"
        description = "a test format"

        def resolver(self, table, skipped):
            return lambda index: Example(index, table.row(index)["prompt"], {"image": "image"}, {"gray": 1.0})

    records = [{"prompt": r["prompt"], "image": r["chosen"]} for r in write_pair_images(tmp_path, 2)]
    batch = batch_of(write_jsonl(tmp_path / "g.jsonl", records), "test_grayscale_images")
    assert batch["gray"].tolist() == [1.0, 1.0] and batch["image_pixels"].shape == (2, 3, 32, 32)

    class UsesIt(Method):
        name, summary, modality, data_format, needs_reference = "test-uses-it", "", "diffusion", "test_grayscale_images", False

        def compute_loss(self, model, inputs, generator=None):
            raise NotImplementedError

    register_method(UsesIt)

    class WrongModality(UsesIt):
        name, modality = "test-wrong-modality", "text"

    with pytest.raises(ValueError, match="is a text method but 'test_grayscale_images' holds diffusion data"):
        register_method(WrongModality)

    class UnknownFormat(UsesIt):
        name, data_format = "test-unknown-format", "no_such_format"

    with pytest.raises(ValueError, match="data_format 'no_such_format' is not one of"):
        register_method(UnknownFormat)
