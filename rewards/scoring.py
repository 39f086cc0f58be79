"""Scoring image listings in memory-bounded chunks, with unreadable images skipped and counted on request."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from diffalign.data.errors import DataError
from diffalign.data.images import decode_image
from diffalign.rewards.base import Scorer
from diffalign.rewards.records import ImageRecord


@dataclass
class Skipped:
    """Images left out because they could not be read (only when ``skip_invalid``)."""

    errors: list[str] = field(default_factory=list)
    indices: set[int] = field(default_factory=set)  # positions in the listing (set by ``score_records``)

    def __len__(self) -> int:
        return len(self.errors)


def load_images(records: Sequence[ImageRecord], skip_invalid: bool, skipped: Skipped) -> list[Image.Image | None]:
    """The RGB images of ``records``, read as training reads images (``diffalign.data.images.decode_image``:
    alpha on white, 16-bit scaled to 8 bits); an unreadable one raises a ``DataError`` naming its row, or
    is ``None`` and recorded."""
    images: list[Image.Image | None] = []
    for record in records:
        try:
            images.append(decode_image(record.path, record.where))
        except DataError as error:
            if not skip_invalid:
                raise
            skipped.errors.append(str(error))
            images.append(None)
    return images


def score_records(
    scorer: Scorer, records: Sequence[ImageRecord], chunk_size: int = 64, skip_invalid: bool = False
) -> tuple[torch.Tensor, Skipped]:
    """Float32 (N,) scores in listing order; NaN for skipped images (and where the scorer gives NaN)."""
    scores = torch.full((len(records),), math.nan)
    skipped = Skipped()
    with tqdm(total=len(records), desc=f"scoring ({getattr(scorer, 'name', type(scorer).__name__)})", unit="img") as bar:
        for start in range(0, len(records), chunk_size):
            chunk = records[start : start + chunk_size]
            images = load_images(chunk, skip_invalid, skipped)
            kept = [i for i, image in enumerate(images) if image is not None]
            skipped.indices.update(start + i for i, image in enumerate(images) if image is None)
            if kept:
                values = scorer.score([images[i] for i in kept], [chunk[i].prompt for i in kept])
                scores[torch.tensor(kept) + start] = values.float().cpu()
            bar.update(len(chunk))
    return scores, skipped
