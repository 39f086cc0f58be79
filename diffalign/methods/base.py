"""The method-plugin contract and the registry by name (DESIGN.md §4).

A method is a small class that declares what it needs and computes a loss:

- ``name`` (the registry key, e.g. ``diffusion-dpo``) and ``summary`` (one line for ``diffalign methods``);
- ``config_class``: a dataclass whose defaults are the official code's constants; its fields become
  ``diffalign train`` flags (``beta`` -> ``--beta``);
- ``modality``: the model family it trains (``diffusion`` or ``text``), which decides how the model
  is loaded, which data formats are read and how the result is exported;
- ``data_format``: the registered data format it consumes (``diffalign.data.formats``);
- ``needs_reference``: whether a frozen reference (a copy, or the LoRA base with adapters disabled)
  must be provided; ``ema_reference``: whether that reference is instead an exponential moving
  average of the policy (a teacher that follows it, saved in checkpoints), which the method updates in
  ``after_optimizer_step``;
- ``user_conditioned``: whether the policy is the base model plus PPD's user branch, the reference
  being the same network with the branch off (``diffalign.diffusion.user_branch``);
- ``needs_ddpm_unet``: what the method needs that only the DDPM UNet families (SD1.x/2.x, SDXL) have
  (DDIM inversion on ``alphas_cumprod``, ...), named when a flow-matching family refuses it; empty for
  methods that run on every family (``diffalign.diffusion.families``);
- ``encode_options()``: keyword arguments of the model's encode step (``caption_dropout``);
- ``data_options()`` / ``model_options()``: what the method adds to the data options (a user
  embeddings folder) and to the model loading (the user branch's embedding size);
- optionally ``prepare_model(model)``: called once the model is loaded (records for the export);
- ``compute_loss(model, inputs, generator)`` on the encoded batch (``model.encode_batch``: latents and
  conditioning, never pixels or prompts), with all randomness drawn from ``generator`` so that tests
  and resumed runs reproduce it;
- optionally ``step_metrics(metrics)``: metrics of a whole optimiser step derived from the reduced ones;
- optionally ``after_optimizer_step(model)``: called after every optimiser step (an EMA update).

The training loop (``diffalign.training``) is shared and knows nothing method-specific.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from diffalign.data.registry import registered_formats
from diffalign.errors import UnknownNameError
from diffalign.objectives import ObjectiveOutput
from diffalign.options import validate_fields


@dataclass
class MethodConfig:
    """Base class of method configs: hyperparameters specific to one method. Declare each field with
    ``diffalign.options.option`` (help line and valid values); ``__post_init__`` checks them, and a
    subclass with cross-field rules calls ``super().__post_init__()`` first."""

    def __post_init__(self):
        validate_fields(self)

    def for_family(self, family: Optional[str]) -> dict[str, Any]:
        """The options with those left to the model family (None: the official value per family)
        resolved for ``family`` (``sd``, ``sdxl``; None for a text model): what ``run_config.json``
        and the model card record. Configs with family defaults override it."""
        return dataclasses.asdict(self)


class Method(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    modality: ClassVar[str]
    data_format: ClassVar[str]
    needs_reference: ClassVar[bool]
    ema_reference: ClassVar[bool] = False
    negative_model: ClassVar[bool] = False
    """Whether the trained model is a negative model (Diffusion-NPO, Self-NPO): the negative branch of
    NPO-guided classifier-free guidance (``diffalign.pipelines``), not a model to sample from alone."""
    user_conditioned: ClassVar[bool] = False
    needs_ddpm_unet: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.config_class()

    def encode_options(self) -> dict[str, Any]:
        """Keyword arguments the training loop passes to ``model.encode_batch`` (none by default)."""
        return {}

    def data_options(self) -> dict[str, Any]:
        """Fields the method sets in the data format's options (none by default)."""
        return {}

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments the method adds to the modality's model loading (none by default)."""
        return {}

    def prepare_model(self, model: Any) -> None:
        """Called once after the model is loaded, before training (nothing by default)."""

    @abstractmethod
    def compute_loss(self, model: Any, inputs: dict[str, Any], generator: torch.Generator | None = None) -> ObjectiveOutput:
        """Loss of one encoded micro-batch. ``model`` is the modality's model adapter
        (``diffalign.diffusion.DiffusionModel`` or ``diffalign.text.TextModel``)."""

    def after_optimizer_step(self, model: Any) -> None:
        """Called by the loop after every optimiser step, on every process (nothing by default)."""

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """A whole optimiser step's metrics from the ones the loop reduced (count-weighted over
        micro-batches and processes, see ``ObjectiveOutput.metric_counts``): a method whose metric is
        not a mean of per-micro-batch values (KTO's margins = step chosen - step rejected) derives it
        here. The default returns ``metrics`` unchanged."""
        return metrics


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by {_REGISTRY[cls.name].__qualname__}")
    formats = registered_formats()
    if cls.data_format not in formats:
        raise ValueError(f"{cls.__qualname__}.data_format {cls.data_format!r} is not one of {sorted(formats)}")
    if formats[cls.data_format].modality != cls.modality:
        raise ValueError(f"{cls.__qualname__} is a {cls.modality} method but {cls.data_format!r} holds {formats[cls.data_format].modality} data")
    _REGISTRY[cls.name] = cls
    return cls


class UnknownMethodError(UnknownNameError):
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
