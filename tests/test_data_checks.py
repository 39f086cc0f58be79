"""Nothing silently wrong: bad input is one clear error before any work is done (exit 2, one line naming
the file, row and field), or a counted skip with ``--skip-bad-rows``.

- every row's images are checked up front (exist, PIL ``verify()``), all bad rows reported at once;
- a decode error that only shows in a DataLoader worker is the same one line as without workers;
- an empty parquet file, a hub model id that is not cached while offline, and a full disk each say so.
"""

import errno
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import write_jsonl, write_pair_images
from diffalign.cli import main
from diffalign.data import DataError, ImageOptions, get_format, read_table
from diffalign.data.errors import DiskFullError, disk_space_errors, is_disk_full, original_message

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_argv(model_dir, data, output_dir, *extra, method="diffusion-dpo"):
    return ["train", "--method", method, "--model", model_dir, "--data", str(data), "--output-dir", str(output_dir),
            "--resolution", "64", "--max-steps", "1", "--train-batch-size", "2", "--no-progress-bar", *extra]


def error_lines(err: str, command: str = "train") -> list[str]:
    """The lines of ``err`` that are diffalign's error (there must be no traceback around them)."""
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.startswith(f"diffalign {command}: error: ")]


def truncated_jpeg(path, size: int = 64) -> None:
    """A JPEG whose header is intact (PIL opens and verifies it) but whose scan data stops early."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) * 6 // 10])


@pytest.fixture
def bad_pairs(tmp_path):
    """14 pairs, 12 of them with an unreadable image: missing files, text saved as .png, a truncated PNG."""
    records = write_pair_images(tmp_path, 14)
    (tmp_path / "img" / "text.png").write_text("not an image")
    png = (tmp_path / "img" / "0a.png").read_bytes()
    (tmp_path / "img" / "cut.png").write_bytes(png[: len(png) // 2])
    for index in range(12):
        field = ("chosen", "rejected")[index % 2]
        records[index][field] = ("img/missing.png", "img/text.png", "img/cut.png")[index % 3]
    return write_jsonl(tmp_path / "pairs.jsonl", records)


# ------------------------------------------------------------------------------ up-front image check
def test_all_bad_rows_are_one_error_before_training(tiny_model_dir, bad_pairs, tmp_path, capsys, monkeypatch):
    from diffalign.diffusion.model import DiffusionModel

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(DiffusionModel, "from_pretrained", refuse)
    output = tmp_path / "out"
    assert main(train_argv(tiny_model_dir("sd"), bad_pairs, output)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"diffalign train: error: {bad_pairs}: 12 rows have unreadable images (first 10: line 1, "
                           f"field 'chosen': image file not found: ")
    assert "line 2, field 'rejected': cannot decode image (UnidentifiedImageError: cannot identify image file" in line
    assert "line 3, field 'chosen': cannot decode image (" in line  # the truncated PNG fails verify()
    assert line.count("; line ") == 9 and "line 10, " in line and "line 11, " not in line
    assert line.endswith("); fix them or pass --skip-bad-rows to skip and count them")
    assert not (output / "metrics.jsonl").exists()  # not a single step ran


def test_one_bad_row(tmp_path):
    records = write_pair_images(tmp_path, 3)
    records[1]["rejected"] = "img/nope.png"
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    with pytest.raises(DataError) as info:
        get_format("image_pairs").build(read_table(path), ImageOptions(resolution=32))
    assert str(info.value) == (f"{path}: 1 row has unreadable images (line 2, field 'rejected': image file not found: "
                               f"{tmp_path / 'img' / 'nope.png'}); fix them or pass --skip-bad-rows to skip and count them")


def test_skip_bad_rows_skips_and_counts(tiny_model_dir, bad_pairs, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(train_argv(tiny_model_dir("sd"), bad_pairs, output, "--skip-bad-rows")) == 0
    assert "data: skipped 12 rows: 12 unreadable images (first: " in capsys.readouterr().out
    report = json.loads((output / "data_report.json").read_text())
    assert report["rows"] == 2 and report["skipped"] == {"unreadable images": 12}


def test_skip_bad_rows_also_finds_what_verify_cannot(tmp_path):
    """With --skip-bad-rows every image is decoded up front, so a truncated JPEG is skipped, not met mid-run."""
    records = write_pair_images(tmp_path, 3)
    truncated_jpeg(tmp_path / "img" / "cut.jpg")
    records[2]["rejected"] = "img/cut.jpg"
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    table = read_table(path)
    dataset, _ = get_format("image_pairs").build(table, ImageOptions(resolution=32))
    assert len(dataset) == 3  # verify() reads JPEG headers only
    dataset, _ = get_format("image_pairs").build(table, ImageOptions(resolution=32, skip_bad_rows=True))
    assert len(dataset) == 2 and dataset.skipped.counts == {"unreadable images": 1}
    assert "line 3, field 'rejected': cannot decode image (OSError: image file is truncated" in dataset.skipped.summary()


def test_max_train_samples_checks_only_the_rows_used(tmp_path):
    records = write_pair_images(tmp_path, 4)
    records[3]["chosen"] = "img/nope.png"
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    dataset, _ = get_format("image_pairs").build(read_table(path), ImageOptions(resolution=32, max_rows=3))
    assert len(dataset) == 3
    with pytest.raises(DataError, match="1 row has unreadable images"):
        get_format("image_pairs").build(read_table(path), ImageOptions(resolution=32, max_rows=4))


def test_the_check_reads_headers_and_decodes_no_pixels(tmp_path, monkeypatch):
    """The up-front check opens and verifies each image; it decodes no pixels (``Image.load``)."""
    from PIL import ImageFile

    path = write_jsonl(tmp_path / "pairs.jsonl", write_pair_images(tmp_path, 20, size=32))
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image) or load(image))
    dataset, _ = get_format("image_pairs").build(read_table(path), ImageOptions(resolution=32, progress=False))
    assert len(dataset) == 20 and decoded == []


# ------------------------------------------------------------------------------ errors in DataLoader workers
def test_a_worker_error_is_the_same_one_line(tiny_model_dir, tmp_path, capfd):
    records = write_pair_images(tmp_path, 4)
    truncated_jpeg(tmp_path / "img" / "cut.jpg")  # passes the up-front check, fails when decoded
    records[2]["rejected"] = "img/cut.jpg"
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    expected = (f"diffalign train: error: {path}: line 3, field 'rejected': cannot decode image "
                f"(OSError: image file is truncated")
    for workers in ("0", "2"):
        argv = train_argv(tiny_model_dir("sd"), path, tmp_path / f"out{workers}", "--max-steps", "4",
                          "--no-random-flip", "--dataloader-num-workers", workers)
        assert main(argv) == 2
        err = capfd.readouterr().err
        (line,) = error_lines(err)
        assert line.startswith(expected), err[-3000:]
        assert "DataLoader worker" not in err and len(err.strip().splitlines()) == 1, err[-3000:]


def test_torch_worker_exception_text_keeps_the_original_message():
    from torch._utils import ExceptionWrapper

    try:
        try:
            raise OSError("image file is truncated")
        except OSError as cause:
            raise DataError("d.jsonl: line 3, field 'rejected': cannot decode image (OSError: truncated)") from cause
    except DataError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DataError) as info:
        wrapper.reraise()
    assert str(info.value) == "d.jsonl: line 3, field 'rejected': cannot decode image (OSError: truncated)"
    assert original_message("plain message") == "plain message"


# ------------------------------------------------------------------------------ errors that blame the right thing
def test_empty_parquet_says_it_has_no_rows(tiny_model_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "image": pa.array([], pa.string())}), path)
    assert main(train_argv(tiny_model_dir("sd"), path, tmp_path / "out", method="sft")) == 2
    assert error_lines(capsys.readouterr().err) == [f"diffalign train: error: {path}: the data has no rows (an empty parquet file)"]
    folder = tmp_path / "parts"
    folder.mkdir()
    shutil.copy(path, folder / "train.parquet")
    with pytest.raises(DataError, match=f"^{folder}: the data has no rows"):
        read_table(str(folder))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet: not a readable parquet file"):
        read_table(str(tmp_path / "bad.parquet"))


@pytest.mark.parametrize("method, model", [("sft", "nobody-diffalign/not-cached"), ("text-dpo", "nobody-diffalign/no-lm")])
def test_uncached_hub_model_while_offline(pair_jsonl, tmp_path, capsys, method, model):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert main(train_argv(model, pair_jsonl, tmp_path / "out", method=method)) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"diffalign train: error: model {model!r} is not in the local hub cache and HF_HUB_OFFLINE is set: "
        f"download it first (hf download {model}) or pass a local folder"
    ]


def test_unreachable_hub_is_named(monkeypatch):
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from diffalign.diffusion.model import read_model_index
    from diffalign.errors import ModelLoadError

    def unreachable(*args, **kwargs):
        try:
            raise LocalEntryNotFoundError("cannot reach the hub and the file is not cached")
        except LocalEntryNotFoundError as error:
            raise OSError("owner/name does not appear to have a file named model_index.json.") from error

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(DiffusionPipeline, "load_config", unreachable)
    with pytest.raises(ModelLoadError, match=r"^model 'owner/name' is not in the local hub cache and the hub cannot be "
                                             r"reached: download it first \(hf download owner/name\)"):
        read_model_index("owner/name")


# ------------------------------------------------------------------------------ a full disk
def fake_disk_usage(free):
    def disk_usage(path):
        return shutil._ntuple_diskusage(10**12, 10**12 - free, free)
    return disk_usage


def test_full_disk_while_caching(tiny_model_dir, pair_jsonl, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    model = tiny_model_dir("sd")  # saved before save_file is replaced

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(shutil, "disk_usage", fake_disk_usage(1000))
    output = tmp_path / "cache"
    argv = ["cache", "--model", model, "--data", pair_jsonl, "--output", str(output), "--resolution", "64",
            "--no-progress-bar"]
    assert main(argv) == 2
    (line,) = error_lines(capsys.readouterr().err, "cache")
    assert line.startswith(f"diffalign cache: error: no space left on the disk while writing the latent cache to {output}: ")
    assert ": 1.0 KB free there, about " in line and line.endswith(" KB needed; free some space or choose another --output")
    assert os.listdir(tmp_path) == []  # the partial cache folder is removed


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save, this torch
    RuntimeError("basic_ios::clear: iostream error"),  # torch.save, other versions
])
def test_full_disk_while_checkpointing(tiny_model_dir, pair_jsonl, tmp_path, monkeypatch, capsys, error):
    from accelerate import Accelerator

    def full(self, folder, *args, **kwargs):
        os.makedirs(folder, exist_ok=True)
        (open(os.path.join(folder, "partial.bin"), "wb")).close()
        raise error

    monkeypatch.setattr(Accelerator, "save_state", full)
    monkeypatch.setattr(shutil, "disk_usage", fake_disk_usage(4096))
    output = tmp_path / "out"
    assert main(train_argv(tiny_model_dir("sd"), pair_jsonl, output)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"diffalign train: error: no space left on the disk while writing the step 1 checkpoint to "
                           f"{output / 'checkpoints'}: 4.1 KB free there, about ")
    assert line.endswith(" MB needed; free some space, lower --checkpoints-total-limit or choose another --output-dir")
    assert os.listdir(output / "checkpoints") == []  # the partial checkpoint is removed


def test_full_disk_while_exporting(tiny_model_dir, pair_jsonl, tmp_path, monkeypatch, capsys):
    from diffalign.diffusion.model import DiffusionModel

    def full(self, output_dir, unwrapped):
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")  # safetensors

    monkeypatch.setattr(DiffusionModel, "export", full)
    output = tmp_path / "out"
    assert main(train_argv(tiny_model_dir("sd"), pair_jsonl, output, "--lora-rank", "4")) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"diffalign train: error: no space left on the disk while writing the trained model to {output}: ")
    assert line.endswith(" needed; free some space or choose another --output-dir")


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", fake_disk_usage(10**11))
    assert not is_disk_full(RuntimeError("basic_ios::clear: iostream error"), str(tmp_path), needed=10**6)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"), str(tmp_path))
    assert is_disk_full(RuntimeError("basic_ios::clear: iostream error"), str(tmp_path), needed=10**12)
    with pytest.raises(PermissionError):
        with disk_space_errors(str(tmp_path), 10):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(DiskFullError, match=r"no space left on the disk while writing x to .*: 100.0 GB free there, "
                                            r"about 2.0 TB needed; free some space"):
        with disk_space_errors(str(tmp_path), lambda: 2 * 10**12, "x"):
            raise OSError(errno.ENOSPC, "No space left on device")


def _can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unprivileged user and mount namespaces (unshare -rm)")
def test_a_real_full_disk(tiny_model_dir, pair_jsonl, tmp_path):
    """A 300 KB tmpfs as --output-dir: the real torch/safetensors errors become the one sentence."""
    small = tmp_path / "small"
    small.mkdir()
    train = " ".join([sys.executable, "-m", "diffalign", *train_argv(tiny_model_dir("sd"), pair_jsonl, small / "out")])
    result = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=300k tmpfs {small} && {train}"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"diffalign train: error: no space left on the disk while writing the step 1 checkpoint to "
                           f"{small / 'out' / 'checkpoints'}: ")


def test_images_far_smaller_than_the_resolution_are_named(tmp_path, caplog):
    path = write_jsonl(tmp_path / "pairs.jsonl", write_pair_images(tmp_path, 3, size=32))
    with caplog.at_level("WARNING", logger="diffalign.data.examples"):
        get_format("image_pairs").build(read_table(path), ImageOptions(resolution=64, progress=False))
    assert caplog.messages == []
    with caplog.at_level("WARNING", logger="diffalign.data.examples"):
        get_format("image_pairs").build(read_table(path), ImageOptions(resolution=512, progress=False))
    (message,) = caplog.messages
    assert "far smaller than the training resolution (median shorter side 32 px, --resolution 512)" in message
    assert "upscaled 16.0x" in message
