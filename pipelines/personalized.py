"""Personalised generation with a PPD user adapter (Dang et al., CVPR 2025, arXiv 2501.06655;
research/diffusion_methods_B.md §3.5).

``StableDiffusionPPDPipeline`` / ``StableDiffusionXLPPDPipeline`` are diffusers' pipelines with a
``diffalign train --method ppd`` adapter loaded (``load_user_adapter``) and three more call arguments:

- ``user_embedding``: the user's embedding u (D,), from ``diffalign users embed``
  (``UserEmbeddings.user_mean``), from a user's example pairs embedded on the fly (``embed_user``), or
  an interpolation ``interpolate_users(u_a, u_b, alpha) = (1 - alpha) u_a + alpha u_b``; None generates
  with the branch off, i.e. exactly the base model;
- ``user_scale``: lambda, the personalisation strength (default: the training value, 1);
- everything else is the base pipeline's.

The adapter is the user branch in IP-Adapter's file layout, so it loads through diffusers' own
``load_ip_adapter(..., image_encoder_folder=None)`` and u travels as ``ip_adapter_image_embeds``. With
classifier-free guidance both branches carry u, (c, u) and (empty, u) (spec §3.5 [REC]: the training's
caption dropout kept u, and a u-free unconditional branch would let guidance cancel part of the
personalisation). With a u of exact zeros the branch still adds W'_v LayerNorm(P(0)), not nothing:
"no user" is ``user_embedding=None``.

Interpolating embeddings equals interpolating the user tokens' inputs; with N = 4 tokens and a
LayerNorm in P it is not the same as interpolating the branch's outputs (spec §3.5, an open question
there), and the endpoints alpha = 0 and 1 reproduce each user bit for bit.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Optional, Sequence

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from diffalign.diffusion.model import USER_ADAPTER_CONFIG, USER_ADAPTER_FILE
from diffalign.errors import UsageError
from diffalign.pipelines.npo_merge import LORA_WEIGHT_NAME
from diffalign.rewards.user_encoders import Shot, UserEncoder, rebuild_user_encoder

__all__ = ["StableDiffusionPPDPipeline", "StableDiffusionXLPPDPipeline", "interpolate_users", "read_user_adapter_config"]

PIPELINE_FAMILY = {"StableDiffusionPPDPipeline": "sd", "StableDiffusionXLPPDPipeline": "sdxl"}


def interpolate_users(user_a: torch.Tensor, user_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """u_alpha = (1 - alpha) u_a + alpha u_b (alpha = 0: u_a, alpha = 1: u_b, exactly)."""
    return (1.0 - alpha) * user_a + alpha * user_b


def read_user_adapter_config(folder: str) -> dict:
    """The ``user_adapter.json`` of a ``ppd`` run's output folder (a ``UsageError`` naming what is missing)."""
    weights, config_path = os.path.join(folder, USER_ADAPTER_FILE), os.path.join(folder, USER_ADAPTER_CONFIG)
    if not (os.path.isfile(weights) and os.path.isfile(config_path)):
        raise UsageError(f"--user-adapter {folder} holds no {USER_ADAPTER_FILE} and {USER_ADAPTER_CONFIG}: give the output "
                         "folder of a `diffalign train --method ppd` run")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise UsageError(f"{config_path} is not readable JSON ({error}): rerun the export or the training") from error
    if not isinstance(config, dict) or not isinstance(config.get("embedding_dim"), int):
        raise UsageError(f"{config_path} has no integer 'embedding_dim': it is not a diffalign PPD adapter config")
    return config


def user_encoder_of(config: dict, device: Optional[str] = None) -> UserEncoder:
    """The encoder that made the adapter's training embeddings (``config["encoder"]``, its ``describe()``)."""
    if not (config.get("encoder") or {}).get("name"):
        raise UsageError("the user adapter does not record its user encoder, so example pairs cannot be embedded; "
                         "give a user from --user-embeddings instead")
    return rebuild_user_encoder(config["encoder"], **({"device": device} if device else {}))


class UserConditionedMixin:
    """``load_user_adapter``, ``embed_user`` and the ``user_embedding`` / ``user_scale`` call arguments
    (module docstring), over a diffusers pipeline that supports IP-Adapter inputs."""

    user_adapter_config: Optional[dict] = None

    def load_user_adapter(self, folder: str) -> dict:
        """Load a ``ppd`` run's adapter (and its LoRA, if it trained one) into this pipeline."""
        config = read_user_adapter_config(folder)
        family = PIPELINE_FAMILY[type(self).__name__]
        if config.get("family") not in (None, family):
            raise UsageError(f"the user adapter in {folder} was trained on an {config['family']} model, not {family}")
        from diffusers.utils import logging as diffusers_logging

        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its note that no image encoder is loaded: PPD has none
        try:
            self.load_ip_adapter(folder, subfolder="", weight_name=USER_ADAPTER_FILE, image_encoder_folder=None)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        if os.path.isfile(os.path.join(folder, LORA_WEIGHT_NAME)):
            self.load_lora_weights(folder, weight_name=LORA_WEIGHT_NAME)
        self.user_adapter_config = config
        return config

    def embed_user(self, shots: Sequence[Shot], encoder: Optional[UserEncoder] = None) -> torch.Tensor:
        """u (D,) of a user's example pairs, with the adapter's own encoder unless ``encoder`` is given."""
        encoder = encoder or user_encoder_of(self._adapter_config())
        return encoder.embed([list(shots)])[0]

    def _adapter_config(self) -> dict:
        if self.user_adapter_config is None:
            raise RuntimeError("no user adapter is loaded: call load_user_adapter(folder) first")
        return self.user_adapter_config

    def __call__(self, prompt=None, *, user_embedding: Optional[torch.Tensor] = None, user_scale: Optional[float] = None,
                 **kwargs):
        config = self._adapter_config()
        dimension = config["embedding_dim"]
        if user_embedding is None:
            user_embedding, scale = torch.zeros(dimension), 0.0  # the branch is skipped: the base model
        else:
            scale = config.get("user_scale", 1.0) if user_scale is None else user_scale
        user_embedding = torch.as_tensor(user_embedding).reshape(-1)
        if user_embedding.numel() != dimension:
            raise UsageError(f"the user embedding has {user_embedding.numel()} values, the adapter takes {dimension}")
        if isinstance(prompt, str) or prompt is None and kwargs.get("prompt_embeds") is None:
            rows = 1
        else:
            rows = len(prompt) if prompt is not None else kwargs["prompt_embeds"].shape[0]
        embeds = user_embedding.reshape(1, 1, -1).expand(rows, 1, dimension)
        guidance = kwargs.get("guidance_scale", inspect.signature(super().__call__).parameters["guidance_scale"].default)
        if guidance > 1:  # the pipeline's classifier-free guidance: [unconditional; conditional], both with u
            embeds = torch.cat([embeds, embeds])
        self.set_ip_adapter_scale(scale)
        return super().__call__(prompt, ip_adapter_image_embeds=[embeds.to(self._execution_device, self.unet.dtype)], **kwargs)


class StableDiffusionPPDPipeline(UserConditionedMixin, StableDiffusionPipeline):
    """SD1.x/2.x with a PPD user adapter (module docstring)."""


class StableDiffusionXLPPDPipeline(UserConditionedMixin, StableDiffusionXLPipeline):
    """SDXL with a PPD user adapter (module docstring)."""
