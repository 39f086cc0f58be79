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
            ``rewards/accuracies``, ``rewards/margins``. A metric with nothing to average in this
            micro-batch (KTO's ``rewards/chosen`` without a desirable example) is left out, never NaN or 0.
        metric_counts: name -> how many things the metric's value is the mean of (a number or a scalar
            tensor). The training loop logs, per optimiser step, sum(value x count) / sum(count) over
            the accumulation micro-batches and processes that have the metric. Convention: a metric
            not listed counts 1, i.e. it is a per-micro-batch mean weighted like every other
            micro-batch (micro-batches have equal sizes, so this is also the mean over the examples);
            a metric over a data-dependent subset counts the subset's size (KTO's ``rewards/chosen``
            and ``logps/chosen`` count the desirable examples), so the logged value is the mean over
            all such examples of the step. A name's unit must be the same in every micro-batch; a
            count of 0 means the metric is absent.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    metric_counts: dict[str, torch.Tensor | float] = field(default_factory=dict)


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
