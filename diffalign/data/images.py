"""Image decoding and the training transforms of the official Diffusion-DPO trainer.

Transforms (research/diffusion_methods_A.md §1.5): resize the shorter side to R (bilinear), crop
R x R (centre, or random), flip horizontally with p = 0.5, scale to [-1, 1]. Each image of a pair
gets its own flip, as in the official code. Randomness comes from a ``random.Random`` the caller seeds
per (seed, epoch, row), so augmentations are reproducible and a resumed run sees the same ones.

Every image becomes 8-bit RGB through ``to_rgb`` (the scorers in ``diffalign.rewards`` use it too):

- RGB as is; 1, L, P (no transparency), CMYK, YCbCr: PIL's own conversion (CMYK without a colour profile);
- RGBA, LA, PA, RGBa, La, and P / L / RGB with a transparency key: alpha composited on white (a fully
  transparent pixel is white, a half transparent one halfway to white), never dropped to black;
- I;16, I;16B, I;16L, I;16N (16-bit) and I (32-bit integers, how PIL opens 16-bit PGM/PPM): the
  16-bit scale, v * 255 / 65535 rounded (65535 -> 255, 32768 -> 128); values outside 0..65535 are refused;
- F (32-bit float): values all within [0, 1] are read as [0, 1] (x 255), otherwise values within
  [0, 255] as 8-bit levels; NaN or values outside [0, 255] are refused;
- any other mode PIL can convert to RGB is converted by PIL; one it cannot is refused.
Grey images are replicated to 3 channels. A refusal is a ``DataError`` naming the mode and the values.

``check_image`` is the cheap up-front check: the file exists, PIL identifies it and ``verify()``
passes (header and structure: PNG chunks and CRCs; JPEG and most other formats: the header only, no
pixels decoded); ``check_image(..., decode=True)`` decodes fully.
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

    Raises ``DataError`` naming ``where`` (e.g. "row 12, field 'jpg_0'") if it cannot be decoded or
    its mode is refused (``to_rgb``)."""
    try:
        image = _open(value, where, base_dir)
        image.load()
        return to_rgb(image)
    except DataError as error:
        if str(error).startswith(where):
            raise
        raise DataError(f"{where}: {error}") from error
    except FileNotFoundError as error:
        raise DataError(f"{where}: image file not found: {error.filename}") from error
    except Exception as error:
        raise DataError(f"{where}: cannot decode image ({type(error).__name__}: {error})") from error


def check_image(value: Any, where: str, base_dir: str | None = None, decode: bool = False) -> tuple[int, int]:
    """The (width, height) of ``value``; raise ``DataError`` naming ``where`` unless it is a readable image:
    the file exists, PIL identifies it and ``verify()`` passes (no pixels decoded); ``decode=True``
    decodes it fully instead."""
    if decode:
        return decode_image(value, where, base_dir).size
    if isinstance(value, Image.Image):
        return value.size
    try:
        with _open(value, where, base_dir) as image:
            size = image.size
            image.verify()
            return size
    except DataError:
        raise
    except FileNotFoundError as error:
        raise DataError(f"{where}: image file not found: {error.filename}") from error
    except Exception as error:
        raise DataError(f"{where}: cannot decode image ({type(error).__name__}: {error})") from error


def _open(value: Any, where: str, base_dir: str | None) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, dict) and value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(_resolve(value["path"], base_dir))
    if isinstance(value, str) and value:
        return Image.open(_resolve(value, base_dir))
    raise DataError(f"{where}: expected image bytes or a path, got {type(value).__name__}")


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
WHITE = (255, 255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of an image of any mode PIL reads (rules in the module docstring); ``DataError`` for
    a mode or values it refuses."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode == "I" or mode.startswith("I;16"):
        return _grey_to_rgb(image, 65535.0, "0..65535 (16-bit)")
    if mode == "F":
        return _grey_to_rgb(image, None, "[0, 1] or [0, 255]")
    try:
        if mode in ALPHA_MODES or "transparency" in image.info:
            return Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:
        raise DataError(f"image mode {mode} cannot be converted to RGB ({error}); save it as RGB") from error


def _grey_to_rgb(image: Image.Image, full_scale: float | None, scale_name: str) -> Image.Image:
    """One-channel integer or float levels to 8-bit RGB: v * 255 / full_scale, rounded half up; for
    ``full_scale`` None (float images) 1.0 if every value is within [0, 1], else 255."""
    array = np.asarray(image).astype(np.float64)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if full_scale is None:
        full_scale = 1.0 if 0.0 <= low and high <= 1.0 else 255.0
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > full_scale:
        values = f"values from {low:g} to {high:g}" if np.isfinite(low) and np.isfinite(high) else "NaN or infinite values"
        raise DataError(f"image mode {image.mode} with {values}: diffalign reads this mode on the scale {scale_name}; "
                        f"convert the image to 8-bit RGB first")
    levels = np.floor(array * (255.0 / full_scale) + 0.5).astype(np.uint8)
    return Image.fromarray(levels).convert("RGB")


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
