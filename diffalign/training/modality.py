"""What the shared training loop needs from a modality (diffusion, text).

A modality knows how to load a model from a hub id or local path into a ``ModelAdapter``, how to read
the data formats its methods consume, and how to export the trained result. Methods name their
modality; ``diffalign.diffusion`` and ``diffalign.text`` register theirs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Protocol

import torch
from torch.utils.data import Dataset

from diffalign.training.config import TrainConfig


class ModelAdapter(Protocol):
    """A loaded model as the loop sees it: one trainable module plus frozen helpers.

    A structural type: model classes (``DiffusionModel``, ``TextModel``) need not import this module."""

    def trainable_module(self) -> torch.nn.Module:
        """The module whose parameters are optimised (UNet, LM); it is passed to ``accelerator.prepare``."""

    def set_trainable_module(self, module: torch.nn.Module) -> None:
        """Receive the prepared (possibly DDP-wrapped) module; forward passes with grad go through it."""

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the frozen components (encoders, reference) to ``device``, cast to ``dtype``."""

    def export(self, output_dir: str, unwrapped: torch.nn.Module) -> None:
        """Write the trained result in its library's format (diffusers / transformers / LoRA)."""


class Modality(ABC):
    name: str

    @abstractmethod
    def load_model(self, config: TrainConfig, needs_reference: bool) -> ModelAdapter: ...

    @abstractmethod
    def build_dataset(self, config: TrainConfig, data_format: str, model: ModelAdapter) -> tuple[Dataset, Callable[[list[Any]], Any]]:
        """The dataset of ``data_format`` examples at ``config.data`` and its collate function."""


_MODALITIES: dict[str, Callable[[], Modality]] = {}


def register_modality(name: str, factory: Callable[[], Modality]) -> None:
    _MODALITIES[name] = factory


def get_modality(name: str) -> Modality:
    if name == "diffusion":
        import diffalign.diffusion.modality  # noqa: F401
    elif name == "text":
        import diffalign.text.modality  # noqa: F401
    if name not in _MODALITIES:
        raise KeyError(f"unknown modality {name!r}")
    return _MODALITIES[name]()
