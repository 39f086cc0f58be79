"""Attention backend choice for diffusers UNets.

- ``sdpa`` (default): ``torch.nn.functional.scaled_dot_product_attention`` (``AttnProcessor2_0``), which
  dispatches to FlashAttention / memory-efficient kernels on CUDA and a fused CPU kernel elsewhere.
- ``xformers``: ``xformers.ops.memory_efficient_attention``; CUDA only (xformers has no CPU kernels),
  installed with the ``diffalign[xformers]`` extra.
- ``native``: the plain matmul-softmax-matmul processor (``AttnProcessor``), for debugging and parity.
"""

from __future__ import annotations

import torch

from diffalign.errors import UserError

ATTENTION_BACKENDS = ("sdpa", "xformers", "native")


class AttentionBackendError(UserError, RuntimeError):
    pass


def set_attention_backend(unet: torch.nn.Module, backend: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if backend == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())
    elif backend == "native":
        unet.set_attn_processor(AttnProcessor())
    elif backend == "xformers":
        check_xformers_usable()
        unet.enable_xformers_memory_efficient_attention()
    else:
        raise AttentionBackendError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")


def check_xformers_usable() -> None:
    """Raise a clear error unless xformers is installed and a CUDA device is available."""
    from diffusers.utils import is_xformers_available

    if not is_xformers_available():
        raise AttentionBackendError(
            "--attention xformers needs the xformers package (pip install 'diffalign[xformers]', CUDA only); "
            "the default --attention sdpa needs nothing extra"
        )
    if not torch.cuda.is_available():
        raise AttentionBackendError("--attention xformers needs a CUDA GPU (xformers has no CPU kernels); use --attention sdpa")
