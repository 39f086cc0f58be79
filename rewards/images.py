"""Reading images for scorers: RGB conversion and clear errors for missing or corrupt files.

``to_rgb`` is the training data's converter (``diffalign.data.images.to_rgb``), so a scorer sees the
image training sees: alpha composited on white, 16-bit scaled to 8 bits (rules in that module).
"""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from diffalign.data.errors import DataError
from diffalign.data.images import to_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageLoadError(ValueError):
    """An image file that is missing or cannot be decoded."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an RGB image, raising ``ImageLoadError`` naming the file on failure."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError as error:
        raise ImageLoadError(f"image not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, DataError) as error:
        raise ImageLoadError(f"cannot decode image {path}: {error}") from error
