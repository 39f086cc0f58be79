"""The method-plugin contract and the registry by name (DESIGN.md §4).

A method is a small class that declares what it needs and computes a loss:

- ``name`` (the registry key, e.g. ``diffusion-dpo``) and ``summary`` (one line for ``diffalign methods``);
- ``config_class``: a dataclass whose defaults are the official code's constants; its fields become
  ``diffalign train`` flags (``beta`` -> ``--beta``);
- ``modality``: the model family it trains (``diffusion`` or ``text``), which decides how the model
  is loaded, which data formats are read and how the result is exported;
- ``data_format``: the examples it consumes (see ``DATA_FORMATS``);
- ``needs_reference``: whether a frozen reference (a copy, or the LoRA base with adapters disabled)
  must be provided;
- ``compute_loss(model, batch, generator)`` with all randomness drawn from ``generator`` so that tests
  and resumed runs reproduce it.

The training loop (``diffalign.training``) is shared and knows nothing method-specific.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from diffalign.objectives import ObjectiveOutput

DATA_FORMATS = {
    "image_pairs": "prompt + chosen image + rejected image (Pick-a-Pic v2 schema or diffalign jsonl)",
    "scored_image_pairs": "image pairs that also carry both images' reward scores",
    "chosen_images": "prompt + one preferred image (image pairs are reduced to their winner)",
    "text_pairs": "prompt + chosen + rejected completions (TRL preference format)",
    "text_unpaired": "prompt + completion + desirable/undesirable label (TRL unpaired format)",
    "text_ranked": "prompt + several completions with scores (listwise)",
}


@dataclass
class MethodConfig:
    """Base class of method configs: hyperparameters specific to one method."""


class Method(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    modality: ClassVar[str]
    data_format: ClassVar[str]
    needs_reference: ClassVar[bool]

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.config_class()

    @abstractmethod
    def compute_loss(self, model: Any, batch: dict[str, Any], generator: torch.Generator | None = None) -> ObjectiveOutput:
        """Loss of one micro-batch. ``model`` is the modality's model adapter
        (``diffalign.diffusion.DiffusionModel`` or ``diffalign.text.TextModel``)."""


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by {_REGISTRY[cls.name].__qualname__}")
    if cls.data_format not in DATA_FORMATS:
        raise ValueError(f"{cls.__qualname__}.data_format {cls.data_format!r} is not one of {sorted(DATA_FORMATS)}")
    _REGISTRY[cls.name] = cls
    return cls


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def get_method_class(name: str) -> type[Method]:
    import diffalign.methods  # noqa: F401  (registers the built-in methods)

    if name not in _REGISTRY:
        raise UnknownMethodError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered_methods() -> dict[str, type[Method]]:
    import diffalign.methods  # noqa: F401

    return dict(sorted(_REGISTRY.items()))
