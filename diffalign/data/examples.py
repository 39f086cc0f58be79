"""Validated examples of the image formats, the torch dataset over them, and their collate.

A format validates each row of a ``Table`` into an ``Example``: the row's prompt, its images by role
(``chosen``/``rejected``, or ``image``) as the table fields that hold them, and extras (scores, user,
negative prompts). ``ImageExamples`` turns an example into a training item:

- ``prompt`` (str) and the extras as they are;
- per image role ``r``: ``r_pixels`` (3, R, R) in [-1, 1] after the official Diffusion-DPO transforms
  (``diffalign.data.images``), or, from a latent cache, ``r_latent_mean`` / ``r_latent_std`` of the
  same centre crop and flip, plus ``prompt_cond`` (and ``negative_prompt_cond``) text embeddings.

Augmentations depend on (seed, epoch, index) only, so a resumed run sees the same ones, and the cache
draws the same flips as the images. ``collate_examples`` stacks items into a batch with plural keys:
``prompts`` (list[str]), ``users``, ``chosen_scores``/``rejected_scores`` (B,), stacked tensors.
"""

from __future__ import annotations

import logging
import math
import os
import random
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from diffalign.data.errors import DataError, SkipReport
from diffalign.data.images import check_image, decode_image, training_transform
from diffalign.data.registry import DataFormat
from diffalign.data.tables import Table

LISTED_BAD_ROWS = 10  # bad rows an error lists (all are counted)
PROGRESS_DELAY_S = 2.0  # the image check shows a progress bar only once it has taken this long

UPSCALE_WARNING = 2
"""Warn when the median image's shorter side is less than 1/UPSCALE_WARNING of the training resolution."""
logger = logging.getLogger(__name__)

PLURAL_KEYS = {"prompt": "prompts", "user": "users", "user_embedding": "user_embeddings", "chosen_score": "chosen_scores", "rejected_score": "rejected_scores"}


@dataclass
class Example:
    """One validated row: ``images`` maps a role to the table field holding that image."""

    index: int
    prompt: str
    images: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageOptions:
    """What the image formats need from the run (``TrainConfig``'s data options)."""

    resolution: int = 512
    seed: int = 0
    center_crop: bool = True
    random_flip: bool = True
    skip_bad_rows: bool = False
    max_rows: Optional[int] = None
    progress: bool = True  # a progress bar for the up-front image check when it takes more than a moment
    user_embeddings: Optional[str] = None  # PPD: a ``diffalign users embed`` folder conditioning each pair (user_image_pairs)


class ImageExamples(Dataset):
    """Items of validated examples (see the module docstring); ``skipped`` counts what was left out."""

    def __init__(self, table: Table, examples: list[Example], options: ImageOptions, skipped: SkipReport):
        self.table = table
        self.examples = examples
        self.options = options
        self.skipped = skipped
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        rng = random.Random(f"{self.options.seed}/{self.epoch}/{index}")
        record, where = self.table.row(example.index), self.table.where(example.index)
        item: dict[str, Any] = {"prompt": example.prompt}
        for role, column in example.images.items():
            item.update(self._image(record[column], f"{where}, field {column!r}", role, rng))
        item.update(example.extras)
        if self.table.encoded is not None:
            item["prompt_cond"] = self.table.encoded.conditioning(example.prompt)
            if "negative_prompts" in example.extras:
                item["negative_prompt_cond"] = self.table.encoded.conditioning_rows(example.extras["negative_prompts"])
        return item

    def _image(self, value: Any, where: str, role: str, rng: random.Random) -> dict[str, torch.Tensor]:
        if self.table.encoded is not None:
            flip = self.options.random_flip and rng.random() < 0.5  # the draw training_transform makes
            mean, std = self.table.encoded.latents(value, flip, where)
            return {f"{role}_latent_mean": mean, f"{role}_latent_std": std}
        image = decode_image(value, where, self.table.base_dir)
        options = self.options
        return {f"{role}_pixels": training_transform(image, options.resolution, rng, options.center_crop, options.random_flip)}

    def check_images(self, limit: Optional[int] = None) -> None:
        """Check every image of every example before any work is done (``check_image``: the file exists
        and PIL's ``verify()`` passes; with ``skip_bad_rows`` each image is decoded fully instead).

        Without ``skip_bad_rows`` all bad rows are collected and one ``DataError`` lists the first
        ``LISTED_BAD_ROWS`` (row, field, reason) and counts them all; with it they are dropped and
        counted as "unreadable images" in ``skipped``. With a ``limit`` only the rows that will be used
        are checked: the first ``limit`` examples, or with ``skip_bad_rows`` until ``limit`` are kept."""
        kept, bad, shorter_sides = [], [], []
        decode = self.options.skip_bad_rows
        examples = self.examples if decode or limit is None else self.examples[:limit]
        images = sum(len(example.images) for example in (examples if limit is None else examples[:limit]))
        main_process = os.environ.get("LOCAL_RANK", "0") == "0"
        with tqdm(total=images, desc="checking images", unit="image", leave=False, delay=PROGRESS_DELAY_S,
                  disable=not (self.options.progress and main_process)) as progress:
            for example in examples:
                if limit is not None and len(kept) >= limit:
                    break
                record, where = self.table.row(example.index), self.table.where(example.index)
                errors = []
                for column in example.images.values():
                    try:
                        size = check_image(record[column], f"{where}, field {column!r}", self.table.base_dir, decode=decode)
                        shorter_sides.append(min(size))
                    except DataError as error:
                        errors.append(str(error))
                progress.update(len(example.images))
                if not errors:
                    kept.append(example)
                elif decode:
                    self.skipped.add("unreadable images", "; ".join(errors))
                else:
                    bad.append(errors)
        if bad:
            prefix = f"{self.table.name}: "
            listed = "; ".join("; ".join(error.removeprefix(prefix) for error in errors) for errors in bad[:LISTED_BAD_ROWS])
            rows = f"{len(bad)} rows have" if len(bad) > 1 else "1 row has"
            first = f"first {LISTED_BAD_ROWS}: " if len(bad) > LISTED_BAD_ROWS else ""
            raise DataError(f"{self.table.name}: {rows} unreadable images ({first}{listed}); "
                            f"fix them or pass --skip-bad-rows to skip and count them")
        self.examples = kept
        self._warn_if_upscaled(shorter_sides)

    def _warn_if_upscaled(self, shorter_sides: list[int]) -> None:
        """Images far smaller than the training resolution are upscaled into blur: say so (once)."""
        if not shorter_sides:
            return
        median = sorted(shorter_sides)[len(shorter_sides) // 2]
        resolution = self.options.resolution
        if median * UPSCALE_WARNING < resolution and os.environ.get("LOCAL_RANK", "0") == "0":
            logger.warning(f"{self.table.name}: the images are far smaller than the training resolution (median shorter "
                           f"side {median} px, --resolution {resolution}): they are upscaled {resolution / median:.1f}x; "
                           f"pass --resolution to train nearer their size")


class ImageFormat(DataFormat):
    """A diffusion format: ``resolver`` validates one row into an ``Example`` (or None for a row it
    skipped and counted itself); the dataset, collate, skip counting and cache support are shared."""

    modality = "diffusion"

    @abstractmethod
    def resolver(self, table: Table, skipped: SkipReport) -> Callable[[int], Optional[Example]]:
        """A function from a row index to its ``Example``, raising ``DataError`` for a bad row."""

    def build(self, table: Table, options: ImageOptions):
        skipped = SkipReport()
        examples = resolve_examples(table, self.resolver(table, skipped), options.skip_bad_rows, skipped)
        return finish_examples(table, examples, options, skipped), collate_examples


def collate_examples(items: list[dict]) -> dict:
    """Stack items into a batch (plural keys for per-example values; text embeddings as dicts of tensors,
    negative prompts' embeddings concatenated over the batch with ``negative_counts``)."""
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        name = PLURAL_KEYS.get(key, key)
        if key == "negative_prompt_cond":
            batch[key] = {k: torch.cat([value[k] for value in values]) for k in first}
        elif isinstance(first, dict):
            batch[key] = {k: torch.stack([value[k] for value in values]) for k in first}
        elif torch.is_tensor(first):
            batch[name] = torch.stack(values)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            batch[name] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[name] = values
    if "negative_prompts" in batch:
        batch["negative_counts"] = torch.tensor([len(value) for value in batch["negative_prompts"]])
    return batch


def resolve_examples(table: Table, resolve: Callable[[int], Optional[Example]], skip_bad_rows: bool,
                     skipped: SkipReport) -> list[Example]:
    """``resolve(index)`` for every row; a ``DataError`` fails the load, or with ``skip_bad_rows`` is
    counted as a skipped row. ``resolve`` returns None for rows it skipped (and counted) itself."""
    examples = []
    for index in range(len(table)):
        try:
            example = resolve(index)
        except DataError as error:
            if not skip_bad_rows:
                raise
            skipped.add("bad rows", str(error))
            continue
        if example is not None:
            examples.append(example)
    return examples


def finish_examples(table: Table, examples: list[Example], options: ImageOptions, skipped: SkipReport,
                    dataset_class: type[ImageExamples] = ImageExamples, **dataset_options) -> ImageExamples:
    """The dataset of ``examples`` (a ``dataset_class`` built with ``dataset_options``), cut to
    ``max_rows``, every image checked up front (``check_images``; not for a latent cache, whose images
    were checked when it was built)."""
    dataset = dataset_class(table, examples, options, skipped, **dataset_options)
    if table.encoded is None:
        dataset.check_images(options.max_rows)
    if options.max_rows is not None:
        dataset.examples = dataset.examples[: options.max_rows]
    if not dataset.examples:
        raise DataError(f"{table.name}: no usable rows ({skipped.summary()})")
    return dataset


# ----------------------------------------------------------------------------- field validation
def string_field(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}, field {name!r}: expected a string, got {type(value).__name__}")
    return value


def score_field(value: Any, where: str, name: str) -> float:
    """A finite number (a 1-element list, as SmPO's preprocessing stores PickScores, is unwrapped)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise DataError(f"{where}, field {name!r}: expected a finite number, got {value!r}")


def string_list_field(value: Any, where: str, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise DataError(f"{where}, field {name!r}: expected a list of non-empty strings, got {value!r:.80}")
    return list(value)


def require(record: dict, where: str, *names: str) -> None:
    for name in names:
        if record.get(name) is None or record.get(name) == "":
            raise DataError(f"{where}: missing field {name!r}")
