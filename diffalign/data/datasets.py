"""Torch datasets over resolved image rows, and their collate functions.

``ImagePairDataset`` items: ``prompt``, ``chosen_pixels``, ``rejected_pixels`` (3, R, R) in [-1, 1],
plus ``chosen_score``/``rejected_score`` when the source has them. ``ChosenImageDataset`` items:
``prompt``, ``pixels``. Collated batches use plural keys: ``prompts`` (list[str]), stacked tensors,
``chosen_scores``/``rejected_scores`` (B,).
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from diffalign.data.images import training_transform
from diffalign.data.sources import ImageSource


class _ImageRowsDataset(Dataset):
    def __init__(self, source: ImageSource, resolution: int, seed: int = 0, center_crop: bool = True,
                 random_flip: bool = True):
        self.source = source
        self.resolution = resolution
        self.seed = seed
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source.rows)

    @property
    def skipped(self):
        """Rows left out of the source, by reason (``SkipReport``)."""
        return self.source.skipped

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index) only, so resumed runs see the same ones."""
        self.epoch = epoch

    def _pixels(self, row: int, field: str, rng: random.Random) -> torch.Tensor:
        image = self.source.image(row, field)
        return training_transform(image, self.resolution, rng, self.center_crop, self.random_flip)

    def _rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{index}")


class ImagePairDataset(_ImageRowsDataset):
    def __getitem__(self, index: int) -> dict:
        row = self.source.rows[index]
        rng = self._rng(index)
        item = {
            "prompt": row.prompt,
            "chosen_pixels": self._pixels(row.row, row.chosen_field, rng),
            "rejected_pixels": self._pixels(row.row, row.rejected_field, rng),
        }
        if row.chosen_score is not None:
            item["chosen_score"] = row.chosen_score
            item["rejected_score"] = row.rejected_score
        return item


class ChosenImageDataset(_ImageRowsDataset):
    def __getitem__(self, index: int) -> dict:
        row = self.source.rows[index]
        return {"prompt": row.prompt, "pixels": self._pixels(row.row, row.chosen_field, self._rng(index))}


def collate_images(items: list[dict]) -> dict:
    batch: dict = {"prompts": [item["prompt"] for item in items]}
    for key in items[0]:
        if key == "prompt":
            continue
        values = [item[key] for item in items]
        plural = key if key.endswith("pixels") else key + "s"
        batch[plural] = torch.stack(values) if torch.is_tensor(values[0]) else torch.tensor(values, dtype=torch.float32)
    return batch
