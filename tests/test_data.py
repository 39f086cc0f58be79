"""Image data formats: the Pick-a-Pic v2 winner rule, ties, bad rows, corrupt images, jsonl."""

import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.data import DataError, ImageOptions, collate_examples, get_format, read_table


def load(data, data_format="image_pairs", **options):
    """The dataset of ``data`` read as ``data_format`` (resolution 32 unless given)."""
    options.setdefault("resolution", 32)
    dataset, _ = get_format(data_format).build(read_table(data), ImageOptions(**options))
    return dataset


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 48, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def pickapic(labels, **extra_columns):
    n = len(labels)
    columns = {"caption": [f"prompt {i}" for i in range(n)], "jpg_0": [png_bytes(10 * i) for i in range(n)],
               "jpg_1": [png_bytes(10 * i + 5) for i in range(n)], "label_0": labels}
    columns.update(extra_columns)
    return datasets.Dataset.from_dict(columns)


@pytest.fixture
def saved_pickapic(tmp_path):
    def save(table):
        path = tmp_path / "pickapic"
        datasets.DatasetDict({"train": table}).save_to_disk(str(path))
        return str(path)

    return save


def test_label_0_zero_means_jpg_1_wins_and_ties_are_counted(saved_pickapic):
    dataset = load(saved_pickapic(pickapic([1.0, 0.0, 0.5, 0.5])), random_flip=False)
    assert [(e.index, e.images) for e in dataset.examples] == [(0, {"chosen": "jpg_0", "rejected": "jpg_1"}),
                                                                (1, {"chosen": "jpg_1", "rejected": "jpg_0"})]
    assert dataset.skipped.counts == {"ties (label_0 = 0.5)": 2}
    item = dataset[1]
    # row 1: jpg_1 (value 15) won over jpg_0 (value 10)
    assert item["chosen_pixels"].mean().item() == pytest.approx(15 / 127.5 - 1, abs=1e-6)
    assert item["rejected_pixels"].mean().item() == pytest.approx(10 / 127.5 - 1, abs=1e-6)


def test_parquet_and_reward_scores(tmp_path):
    path = tmp_path / "train.parquet"
    pickapic([0.0, 1.0], ps_score_0=[[0.2], [0.3]], ps_score_1=[[0.25], [0.1]]).to_parquet(str(path))
    dataset = load(str(path), "scored_image_pairs")
    assert [(e.extras["chosen_score"], e.extras["rejected_score"]) for e in dataset.examples] == [(0.25, 0.2), (0.3, 0.1)]
    batch = collate_examples([dataset[i] for i in range(2)])
    assert batch["chosen_scores"].tolist() == pytest.approx([0.25, 0.3])


def test_bad_label_names_row_and_field(saved_pickapic):
    with pytest.raises(DataError, match=r"row 1, field 'label_0': expected 0, 0.5 or 1, got 0.7"):
        load(saved_pickapic(pickapic([1.0, 0.7])))


def test_bad_rows_are_skipped_and_counted_when_asked(saved_pickapic):
    table = pickapic([1.0, 0.7, 0.0])
    dataset = load(saved_pickapic(table), skip_bad_rows=True)
    assert [e.index for e in dataset.examples] == [0, 2]
    assert dataset.skipped.counts == {"bad rows": 1}
    assert "field 'label_0'" in dataset.skipped.summary()


def test_missing_column_is_named(saved_pickapic):
    table = pickapic([1.0]).remove_columns("label_0")
    with pytest.raises(DataError, match="missing column\\(s\\) 'label_0'"):
        load(saved_pickapic(table))


def test_corrupt_image_error_or_counted_skip(saved_pickapic):
    table = pickapic([1.0, 1.0, 0.0])
    table = datasets.Dataset.from_dict({**table.to_dict(), "jpg_1": [png_bytes(1), b"not an image", png_bytes(2)]})
    path = saved_pickapic(table)
    with pytest.raises(DataError, match=r"1 row has unreadable images \(row 1, field 'jpg_1': cannot decode image"):
        load(path)  # every image is checked up front (tests/test_data_checks.py)
    dataset = load(path, skip_bad_rows=True)
    assert [e.index for e in dataset.examples] == [0, 2]
    assert dataset.skipped.counts == {"unreadable images": 1}


def test_jsonl_paths_are_relative_to_the_file(tmp_path, pair_jsonl):
    item = load(pair_jsonl, "chosen_images")[0]
    assert item["image_pixels"].shape == (3, 32, 32) and item["prompt"] == "a red circle number 0"


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p", "chosen": "a.png"}, "line 1: missing field 'rejected'"),
    ({"chosen": "a.png", "rejected": "b.png"}, "line 1, field 'prompt': expected a string"),
])
def test_jsonl_missing_fields(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=message):
        load(str(path))


def test_jsonl_missing_image_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "nope.png", "rejected": "nope2.png"}) + "\n")
    with pytest.raises(DataError, match="line 1, field 'chosen': image file not found"):
        load(str(path))[0]


def test_invalid_json_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p"}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load(str(path))


def test_augmentations_are_reproducible_per_epoch(pair_jsonl):
    dataset = load(pair_jsonl, seed=3)
    flips = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        first = dataset[0]["chosen_pixels"]
        dataset.set_epoch(epoch)
        assert torch.equal(first, dataset[0]["chosen_pixels"])
        flips.append(first)
    assert any(not torch.equal(flips[0], other) for other in flips[1:])


def test_jsonl_errors_give_the_line_number_and_datasets_the_row_index(tmp_path, saved_pickapic):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a.png", "rejected": "b.png"}\n\n\n{"prompt": "q", "chosen": "a.png"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl: line 4: missing field 'rejected'"):
        load(str(path))
    with pytest.raises(DataError, match=r"pickapic: row 1, field 'label_0'"):
        load(saved_pickapic(pickapic([1.0, 0.7])))
