"""Image decoding and the training transforms of the official Diffusion-DPO trainer.

Transforms (research/diffusion_methods_A.md §1.5): resize the shorter side to R (bilinear), crop
R x R (centre, or random), flip horizontally with p = 0.5, scale to [-1, 1]. Each image of a pair
gets its own flip, as in the official code. Randomness comes from a ``random.Random`` the caller seeds
per (seed, epoch, row), so augmentations are reproducible and a resumed run sees the same ones.
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffalign.data.errors import DataError


def decode_image(value: Any, where: str, base_dir: str | None = None) -> Image.Image:
    """An RGB image from bytes, a {'bytes'|'path'} dict (datasets' Image feature), a PIL image or a path.

    Raises ``DataError`` naming ``where`` (e.g. "row 12, field 'jpg_0'") if it cannot be decoded."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(_resolve(value["path"], base_dir))
        elif isinstance(value, str) and value:
            image = Image.open(_resolve(value, base_dir))
        else:
            raise DataError(f"{where}: expected image bytes or a path, got {type(value).__name__}")
        image.load()
        return image.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError as error:
        raise DataError(f"{where}: image file not found: {error.filename}") from error
    except Exception as error:
        raise DataError(f"{where}: cannot decode image ({type(error).__name__}: {error})") from error


def _resolve(path: str, base_dir: str | None) -> str:
    return path if os.path.isabs(path) or base_dir is None else os.path.join(base_dir, path)


def training_transform(image: Image.Image, resolution: int, rng: random.Random, center_crop: bool = True,
                       random_flip: bool = True) -> torch.Tensor:
    """(3, R, R) float32 in [-1, 1]."""
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(new_size, Image.BILINEAR)
    if center_crop:
        left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
    else:
        left, top = rng.randint(0, new_size[0] - resolution), rng.randint(0, new_size[1] - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    if random_flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
