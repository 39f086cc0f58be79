"""Reading images for scorers: RGB conversion and clear errors for missing or corrupt files."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageLoadError(ValueError):
    """An image file that is missing or cannot be decoded."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL mode (alpha dropped, as ``Image.convert`` does), never 4 channels."""
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an RGB image, raising ``ImageLoadError`` naming the file on failure."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError as error:
        raise ImageLoadError(f"image not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageLoadError(f"cannot decode image {path}: {error}") from error
