"""Data formats, registered by name: what a method consumes (DESIGN.md §5).

A format is one small module with a ``DataFormat`` subclass that owns its row validation (errors name
the source, row and field; ``--skip-bad-rows`` skips and counts instead), its dataset items and its
collate. Reading a source into a ``Table`` (jsonl, txt, parquet, ``save_to_disk``, hub id, latent
cache) is shared (``diffalign.data.tables``). Methods name the format they consume
(``Method.data_format``).

Add a format: one module here with a ``@register_format`` class, one import line at the end of
this file, tests, and its schema in the README.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

from torch.utils.data import Dataset

from diffalign.data.tables import Table


class DataFormat(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    modality: ClassVar[str]  # "diffusion" (images and prompts) or "text" (tokenised completions)

    @abstractmethod
    def build(self, table: Table, options: Any) -> tuple[Dataset, Callable[[list[Any]], Any]]:
        """The dataset of validated ``table`` rows and its collate function. ``options``:
        ``ImageOptions`` for diffusion formats, ``TextOptions`` for text formats. The dataset has a
        ``skipped`` ``SkipReport`` of the rows left out."""


_FORMATS: dict[str, DataFormat] = {}


def register_format(cls: type[DataFormat]) -> type[DataFormat]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _FORMATS and type(_FORMATS[cls.name]) is not cls:
        raise ValueError(f"data format {cls.name!r} is already registered by {type(_FORMATS[cls.name]).__qualname__}")
    _FORMATS[cls.name] = cls()
    return cls


def get_format(name: str) -> DataFormat:
    if name not in _FORMATS:
        raise KeyError(f"unknown data format {name!r}; registered formats: {', '.join(sorted(_FORMATS))}")
    return _FORMATS[name]


def registered_formats() -> dict[str, DataFormat]:
    return dict(sorted(_FORMATS.items()))


# The built-in formats register themselves on import.
from diffalign.data.formats import (  # noqa: E402,F401
    captioned_images, chosen_images, image_pairs, prompts, scored_image_pairs, text_pairs, text_ranked, text_unpaired,
    user_image_pairs,
)
