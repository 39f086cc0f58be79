"""Building the negative UNet for NPO guidance: weight-offset transfer and LoRA fusing.

Diffusion-NPO and Self-NPO train the negative model starting from a base model (SD1.5, SDXL), yet
it is used next to any positive model fine-tuned from that base (a DPO model, DreamShaper, ...).
The official code moves the trained offset onto the positive model (research/diffusion_methods_B.md
§1.4, §2.4):

    theta_neg = theta_negtrained + (1 - m) (theta_pos - theta_base)
              = theta_base + Delta + (1 - m) (theta_pos - theta_base),   Delta = theta_negtrained - theta_base

with the merge weight ``m`` (``--merge_weight`` in the official scripts, default 0): ``m = 0`` gives
``theta_pos + Delta`` (the NPO offset on top of the positive model), ``m = 1`` the trained negative
itself. ``merge_negative_unet`` computes it; ``fuse_lora_into_unet`` first turns a negative trained as
a LoRA on the base (``pytorch_lora_weights.safetensors``, as ``diffalign train --lora-rank`` exports
it) into a plain UNet.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Optional, Union

import torch

from diffalign.errors import ModelLoadError, ModelNotFoundError, UsageError, UserError

__all__ = ["IncompatibleUNetsError", "merge_negative_unet", "fuse_lora_into_unet", "load_unet", "LORA_WEIGHT_NAME"]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class IncompatibleUNetsError(UserError, ValueError):
    """UNets whose parameters do not line up (names or shapes), so their weights cannot be combined."""


def _check_compatible(reference: dict, other: dict, other_role: str) -> None:
    for name, tensor in reference.items():
        if name not in other:
            raise IncompatibleUNetsError(
                f"the {other_role} UNet has no parameter {name!r}, which the trained negative UNet has: the "
                "UNets must share one architecture (fuse a LoRA first with fuse_lora_into_unet)"
            )
        if tuple(other[name].shape) != tuple(tensor.shape):
            raise IncompatibleUNetsError(
                f"parameter {name!r} has shape {tuple(other[name].shape)} in the {other_role} UNet but "
                f"{tuple(tensor.shape)} in the trained negative UNet: the UNets must share one architecture"
            )
    for name in other:
        if name not in reference:
            raise IncompatibleUNetsError(
                f"the {other_role} UNet has a parameter {name!r} that the trained negative UNet lacks: the "
                "UNets must share one architecture (fuse a LoRA first with fuse_lora_into_unet)"
            )


@torch.no_grad()
def merge_negative_unet(
    negative_unet: torch.nn.Module,
    base_unet: torch.nn.Module,
    positive_unet: torch.nn.Module,
    merge_weight: float = 0.0,
) -> torch.nn.Module:
    """A new UNet with ``theta_negtrained + (1 - m) (theta_pos - theta_base)`` (module docstring).

    ``negative_unet``: the trained negative (a full UNet; fuse a LoRA first with ``fuse_lora_into_unet``);
    ``base_unet``: the model it was trained from; ``positive_unet``: the model used for the positive
    branch; ``merge_weight`` ``m``: 0 (the official default) carries the full positive-minus-base
    difference over, 1 keeps the trained negative unchanged. The paper uses ``m`` in [0, 1]; other
    finite values extrapolate and are allowed. With ``positive_unet`` = ``base_unet`` every ``m`` gives
    the trained negative (Self-NPO / NPO on the base model).

    The three must have the same parameter names and shapes (else ``IncompatibleUNetsError`` naming
    the first mismatch). The arithmetic runs in float32, tensor by tensor; the result is a copy of
    ``negative_unet`` (its config, dtype and device) with the merged weights; the inputs are unchanged.
    """
    m = float(merge_weight)
    if not math.isfinite(m):
        raise UsageError(f"merge_weight must be a finite number (the paper uses 0 <= m <= 1), got {merge_weight!r}")
    negative_state = negative_unet.state_dict()
    base_state = base_unet.state_dict()
    positive_state = positive_unet.state_dict()
    _check_compatible(negative_state, base_state, "base")
    _check_compatible(negative_state, positive_state, "positive")

    merged = copy.deepcopy(negative_unet)
    carry = 1.0 - m
    for name, target in merged.state_dict().items():  # tensors sharing storage with `merged`
        if not target.is_floating_point():
            continue
        negative = negative_state[name].to(device=target.device, dtype=torch.float32)
        positive = positive_state[name].to(device=target.device, dtype=torch.float32)
        base = base_state[name].to(device=target.device, dtype=torch.float32)
        target.copy_((negative + carry * (positive - base)).to(target.dtype))
    return merged


def load_unet(source: str, subfolder: str = "unet", revision: Optional[str] = None):
    """The ``UNet2DConditionModel`` of a pipeline folder or hub id (its ``subfolder``), or of a UNet folder."""
    from diffusers import UNet2DConditionModel

    if os.path.isfile(os.path.join(source, "config.json")) and not os.path.isdir(os.path.join(source, subfolder)):
        subfolder = None  # `source` is a UNet folder itself
    return UNet2DConditionModel.from_pretrained(source, subfolder=subfolder, revision=revision)


def fuse_lora_into_unet(
    base: Union[str, torch.nn.Module],
    lora: str,
    lora_scale: float = 1.0,
    weight_name: str = LORA_WEIGHT_NAME,
    subfolder: str = "unet",
):
    """A plain ``UNet2DConditionModel`` equal to ``base`` with the LoRA in folder ``lora`` fused in.

    ``base``: a UNet module (copied, not changed) or a pipeline folder / hub id (its ``subfolder``) or a
    UNet folder. ``lora``: a folder holding ``weight_name`` with the UNet LoRA in diffusers' format
    (``unet.``-prefixed keys, as ``save_lora_weights`` and diffalign's LoRA export write it), or that
    file's path. The LoRA is loaded through diffusers' PEFT integration (``load_lora_adapter``), merged
    into the weights (``fuse_lora``, scaled by ``lora_scale``) and its layers removed (``unload_lora``),
    so the result has no adapters left and can be saved, merged or used as ``negative_unet``.
    """
    if os.path.isfile(lora):
        lora, weight_name = os.path.dirname(lora) or ".", os.path.basename(lora)
    if not os.path.isfile(os.path.join(lora, weight_name)):
        raise ModelNotFoundError(f"no LoRA weights at {os.path.join(lora, weight_name)}")
    if isinstance(base, torch.nn.Module):
        unet = copy.deepcopy(base)
    else:
        try:
            unet = load_unet(base, subfolder)
        except Exception as error:
            raise ModelLoadError(f"could not load the base UNet from {base!r}: {error}") from error
    if getattr(unet, "peft_config", None):
        raise UsageError("the base UNet already carries LoRA adapters: pass the UNet without adapters")
    unet.load_lora_adapter(lora, prefix="unet", weight_name=weight_name, adapter_name="npo")
    if not getattr(unet, "peft_config", None):
        raise ModelLoadError(f"{os.path.join(lora, weight_name)} holds no UNet LoRA weights (keys starting with 'unet.')")
    unet.fuse_lora(lora_scale=lora_scale)
    unet.unload_lora()
    return unet
