"""The data-format contract and the registry by name (DESIGN.md §5).

A format is a ``DataFormat`` subclass that owns its row validation (errors name the source, row and
field; ``--skip-bad-rows`` skips and counts instead), its dataset items and its collate. Image formats
build on ``diffalign.data.examples.ImageFormat``, text formats on ``diffalign.data.text_examples.TextFormat``.
The built-in formats live in ``diffalign.data.formats``, one module each, and register on import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

from torch.utils.data import Dataset

from diffalign.data.tables import Table
from diffalign.errors import UnknownNameError


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
    import diffalign.data.formats  # noqa: F401  (registers the built-in formats)

    if name not in _FORMATS:
        raise UnknownNameError(f"unknown data format {name!r}; registered formats: {', '.join(sorted(_FORMATS))}")
    return _FORMATS[name]


def registered_formats() -> dict[str, DataFormat]:
    import diffalign.data.formats  # noqa: F401

    return dict(sorted(_FORMATS.items()))
