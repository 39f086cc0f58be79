"""Shared fixtures: tiny SD1.x-like and SDXL-like pipelines saved to disk (loaded back through the real
``from_pretrained`` path) and a small preference dataset of generated images. No hub access."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import diffalign  # noqa: E402,F401  (torchvision CPU shim before anything imports torchvision)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is fastest, and CI has 2 cores


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family, prediction_type="epsilon")`` -> path of a saved tiny pipeline."""
    from diffalign.tiny import build_tiny_pipeline

    built = {}

    def get(family: str, prediction_type: str = "epsilon") -> str:
        key = (family, prediction_type)
        if key not in built:
            path = tmp_path_factory.mktemp(f"tiny-{family}-{prediction_type}")
            build_tiny_pipeline(family, prediction_type=prediction_type).save_pretrained(path)
            built[key] = str(path)
        return built[key]

    return get


def write_pair_images(folder, count: int, size: int = 64, seed: int = 0) -> list[dict]:
    """``count`` random image pairs saved as PNG under ``folder/img``; returns jsonl records."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    records = []
    for index in range(count):
        names = []
        for side in ("a", "b"):
            name = f"img/{index}{side}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, name))
            names.append(name)
        records.append({"prompt": f"a red circle number {index}", "chosen": names[0], "rejected": names[1]})
    return records


def write_jsonl(path, records) -> str:
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def pair_jsonl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    return write_jsonl(folder / "pairs.jsonl", write_pair_images(folder, 8))


def perturb(module, scale: float = 0.01, seed: int = 1) -> None:
    """Move every parameter of ``module`` by ``scale`` x N(0, 1) noise (a policy away from its reference)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


def run_shortened_demo(output_dir, method: str) -> dict:
    """``diffalign demo --method METHOD`` at the smallest settings (4 prompts, 2 steps, 3 evaluation
    prompts x 1 seed); returns ``report.json``."""
    from diffalign.cli import main

    code = main(["demo", "--method", method, "--output-dir", str(output_dir), "--train-prompts", "4", "--candidates", "2",
                 "--eval-prompts", "3", "--eval-seeds", "1", "--steps", "2", "--batch-size", "2", "--threads", "1",
                 "--bench-prompts", "2", "--no-progress"])
    assert code == 0
    return json.loads((output_dir / "report.json").read_text())


def png_bytes(seed: int, size: int = 64) -> bytes:
    """A random RGB image as PNG bytes (how Pick-a-Pic stores its images)."""
    import io

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def pickapic_with_ties(tmp_path_factory):
    """A Pick-a-Pic-schema ``save_to_disk`` dataset: 6 rows, 2 of them ties (label_0 = 0.5)."""
    import datasets

    labels = [1.0, 0.5, 0.0, 1.0, 0.5, 0.0]
    table = datasets.Dataset.from_dict({
        "caption": [f"a red circle number {i}" for i in range(len(labels))],
        "jpg_0": [png_bytes(2 * i) for i in range(len(labels))],
        "jpg_1": [png_bytes(2 * i + 1) for i in range(len(labels))],
        "label_0": labels,
    })
    path = tmp_path_factory.mktemp("pickapic") / "pickapic"
    datasets.DatasetDict({"train": table}).save_to_disk(str(path))
    return str(path)
