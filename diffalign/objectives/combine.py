"""Weighted sums of objectives: TRL 1.16's ``loss_type=[...]`` with ``loss_weights`` (RPO = sigmoid +
alpha * sft, MPO = 0.8 sigmoid + 0.2 bco_pair + 1.0 sft), CPO = preference + alpha * NLL and
ORPO = NLL + odds-ratio term.

    loss = sum_k w_k * loss_k,    losses = sum_k w_k * losses_k

Metrics: each term's metrics, the first term's value (and its ``metric_counts`` entry) kept where names
repeat (the reward metrics of TRL's DPO do not depend on the loss type), plus ``loss/<name>`` = the
term's unweighted loss.
"""

from __future__ import annotations

from typing import Sequence

from diffalign.objectives.output import ObjectiveOutput


def combine_losses(terms: Sequence[tuple[str, ObjectiveOutput, float]]) -> ObjectiveOutput:
    """Combine ``(name, output, weight)`` terms whose per-sample ``losses`` share one shape."""
    if not terms:
        raise ValueError("combine_losses needs at least one term")
    names = [name for name, _, _ in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"term names must be unique, got {names}")
    shape = terms[0][1].losses.shape
    loss = losses = None
    metrics, counts = {}, {}
    for name, output, weight in terms:
        if output.losses.shape != shape:
            raise ValueError(f"term {name!r} has per-sample shape {tuple(output.losses.shape)}, expected {tuple(shape)}")
        loss = weight * output.loss if loss is None else loss + weight * output.loss
        losses = weight * output.losses if losses is None else losses + weight * output.losses
        for key, value in output.metrics.items():
            if key not in metrics:
                metrics[key] = value
                if key in output.metric_counts:
                    counts[key] = output.metric_counts[key]
        metrics[f"loss/{name}"] = output.loss.detach()
    return ObjectiveOutput(loss=loss, losses=losses, metrics=metrics, metric_counts=counts)
