"""The value every objective returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ObjectiveOutput:
    """A reduced loss, its per-sample values and metrics named as TRL names them.

    Attributes:
        loss: scalar, the mean of ``losses`` (the micro-batch reduction; the trainer divides by the
            gradient-accumulation steps).
        losses: shape (B,), the unreduced per-sample (per-pair, per-example) losses.
        metrics: name -> detached scalar tensor, for example ``rewards/chosen``, ``rewards/rejected``,
            ``rewards/accuracies``, ``rewards/margins``.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def as_float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Upcast scores to at least float32 before any subtraction: diffusion error differences are ~1e-4
    and text log-probs reach thousands of nats, so half-precision differences would be noise
    (text_objectives.md §9.4). float64 inputs stay float64."""
    return tuple(t if t.dtype == torch.float64 else t.float() for t in tensors)


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise a ValueError naming the argument whose shape differs from the first one's."""
    items = list(tensors.items())
    first_name, first = items[0]
    if first.dim() != 1:
        raise ValueError(f"{first_name} must have shape (B,), got {tuple(first.shape)}")
    for name, tensor in items[1:]:
        if tensor.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but {first_name} has shape {tuple(first.shape)}"
            )
