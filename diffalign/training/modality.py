"""What the shared training loop needs from a modality (diffusion, text).

A modality turns a ``TrainConfig`` into a ``ModelAdapter`` (loading a model from a hub id or local
path), reads the data format a method consumes into a dataset, and leaves the export to the model.
The glue lives here, on the training side: ``diffalign.diffusion`` and ``diffalign.text`` offer
models with explicit constructor arguments and know nothing of ``TrainConfig`` (DESIGN.md §2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Protocol

import torch
from torch.utils.data import Dataset

from diffalign.training.config import TrainConfig


class ModelAdapter(Protocol):
    """A loaded model as the loop sees it: one trainable module plus frozen helpers.

    A structural type: model classes (``DiffusionModel``, ``TextModel``) do not import this module."""

    def trainable_module(self) -> torch.nn.Module:
        """The module whose parameters are optimised (UNet, LM); it is passed to ``accelerator.prepare``."""

    def set_trainable_module(self, module: torch.nn.Module) -> None:
        """Receive the prepared (possibly DDP-wrapped) module; forward passes with grad go through it."""

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the frozen components (encoders, reference) to ``device``, cast to ``dtype``."""

    def checkpointed_modules(self) -> list[torch.nn.Module]:
        """Modules besides the trainable one that training changes and checkpoints must hold (an EMA reference)."""

    def encode_batch(self, batch: dict, generator: Optional[torch.Generator] = None, **options) -> dict:
        """The encode step between collate and loss (outside autocast): raw batch -> model inputs."""

    def export(self, output_dir: str, unwrapped: torch.nn.Module) -> None:
        """Write the trained result in its library's format (diffusers / transformers / LoRA)."""


class Modality(ABC):
    """Called in this order: ``build_dataset`` (the data is read and checked before any model loads),
    then ``load_model``."""

    name: str

    @abstractmethod
    def build_dataset(self, config: TrainConfig, method) -> tuple[Dataset, Callable[[list[Any]], Any]]:
        """The dataset of ``method.data_format`` examples at ``config.data`` and its collate function."""

    @abstractmethod
    def load_model(self, config: TrainConfig, method) -> ModelAdapter:
        """The model ``method`` trains (with the reference it needs, see ``reference_mode``)."""


def reference_mode(config: TrainConfig, method, lora: bool) -> Optional[str]:
    """None without a reference; ``ema`` for a method whose reference follows the policy; ``user-off``
    for a user-conditioned one (PPD: the same UNet with its user branch off);
    ``--reference auto`` is the LoRA base with adapters disabled under LoRA, else a frozen copy."""
    if not method.needs_reference:
        return None
    if method.ema_reference:
        return "ema"
    if method.user_conditioned:
        return "user-off"
    return config.reference if config.reference != "auto" else ("adapters" if lora else "copy")
