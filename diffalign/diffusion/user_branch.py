"""PPD's decoupled user cross-attention on SD1.x/2.x and SDXL UNets (Dang et al., "Personalized
Preference Fine-tuning of Diffusion Models", CVPR 2025, arXiv 2501.06655; research/diffusion_methods_B.md
§3.3). No official diffusion code exists; this follows the spec's IP-Adapter-style recommendation.

Every cross-attention layer l (``attn2``) with query Q = W_q h gets a second, decoupled attention over
N user tokens::

    Attn_l = softmax(Q K_txt^T / sqrt(d)) V_txt + lambda * softmax(Q K_u^T / sqrt(d)) V_u
    K_u = W'_k U,   V_u = W'_v U,   U = P(u) = LayerNorm(reshape(W_p u + b_p, N x d_ctx))

u is the user embedding (D values, ``diffalign users embed``), N = 4 tokens, d_ctx the UNet's
cross-attention width. P first standardises each of u's dimensions with the training embeddings' mean
and standard deviation (``UserProjection``): embeddings come at wildly different scales per
dimension (an LLM's hidden state has a few huge ones; the toy encoder's dimensions span 0.01 to 0.2),
and without it the user-specific part of u is a small perturbation of P's bias that LayerNorm mostly
removes, so the users' tokens start almost alike and Adam's per-weight steps barely separate them. The
export folds the standardisation into P's weights, W' = W / sigma and b' = b - W' mu, so the file
keeps IP-Adapter's layout and takes raw embeddings. The layout is exactly IP-Adapter's (Ye et al. 2023, arXiv 2308.06721), so the
branch runs on diffusers' own IP-Adapter machinery: P is an ``ImageProjection`` in
``unet.encoder_hid_proj``, the layers use ``IPAdapterAttnProcessor2_0`` (or the plain / xformers
variant of the chosen attention backend), u travels as ``added_cond_kwargs["image_embeds"]`` (``Conditioning.user_embeds``) and
lambda is the processors' ``scale``. An exported branch therefore loads with diffusers'
``pipeline.load_ip_adapter(folder, subfolder="", weight_name=..., image_encoder_folder=None)`` (whose
IP-Adapter loader fixes N = 4; hence N is not an option).

Initialisation (spec §3.3, §3.7 (i)): W'_v = 0, so the branch adds exactly 0 and the policy equals the
base model for every u; W'_k starts as a copy of the layer's text key projection W_k (IP-Adapter's
choice: the user tokens are attended like text from the first step), P as ``nn.Linear``'s default. At
init dL/dW'_v != 0 while dL/dW'_k = dL/dP = 0 (the branch output does not depend on them while V_u = 0).

The reference of PPD's objective is this same network with lambda = 0 (``user_branch_scale``): the
processors then skip the branch, so no second UNet copy is held.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

USER_TOKENS = 4
"""N, the user tokens per cross-attention layer (IP-Adapter's 4: diffusers' loader assumes it)."""


def _branch_processor_for(current, hidden_size: int, cross_attention_dim: int):
    """The IP-Adapter processor matching the layer's current attention backend (sdpa, native, xformers)."""
    from diffusers.models.attention_processor import (
        IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor,
    )

    name = type(current).__name__
    processor_class = (IPAdapterXFormersAttnProcessor if "XFormers" in name
                       else IPAdapterAttnProcessor if name == "AttnProcessor" else IPAdapterAttnProcessor2_0)
    return processor_class(hidden_size=hidden_size, cross_attention_dim=cross_attention_dim, num_tokens=(USER_TOKENS,), scale=1.0)


def _cross_attention_names(unet) -> list[str]:
    """The cross-attention processors' names in ``unet.attn_processors`` order (the IP-Adapter file's key order)."""
    return [name for name in unet.attn_processors if not name.endswith("attn1.processor")]


def _cross_attention_processors(unet) -> list:
    """The cross-attention layers' processors in that order (one walk over the UNet: every reference
    forward switches the branch off and on again)."""
    return [processor for name, processor in unet.attn_processors.items() if not name.endswith("attn1.processor")]


def has_user_branch(unet) -> bool:
    return getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj" and unet.encoder_hid_proj is not None


def user_projection_class():
    from diffusers.models.embeddings import ImageProjection

    class UserProjection(ImageProjection):
        """IP-Adapter's ``ImageProjection`` (LayerNorm(reshape(W u + b))) on the standardised embedding
        (u - mean) / std; ``mean`` and ``std`` are buffers (saved in checkpoints, never trained)."""

        def __init__(self, embedding_mean: torch.Tensor, embedding_std: torch.Tensor, cross_attention_dim: int):
            super().__init__(image_embed_dim=embedding_mean.numel(), cross_attention_dim=cross_attention_dim,
                             num_image_text_embeds=USER_TOKENS)
            self.register_buffer("embedding_mean", embedding_mean.detach().float().reshape(-1).clone())
            self.register_buffer("embedding_std", embedding_std.detach().float().reshape(-1).clone())

        def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
            standardised = (image_embeds.float() - self.embedding_mean) / self.embedding_std
            return super().forward(standardised)

    return UserProjection


def embedding_statistics(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per dimension of training embeddings [M, D]; a constant dimension gets std 1."""
    embeddings = embeddings.float()
    std = embeddings.std(dim=0, unbiased=False)
    return embeddings.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std))


def add_user_branch(unet, embedding_mean: torch.Tensor, embedding_std: torch.Tensor) -> list[torch.nn.Parameter]:
    """Install the user branch on ``unet`` for embeddings standardised with ``embedding_mean`` and
    ``embedding_std`` (D each; see the module docstring) and return its parameters (P, and W'_k, W'_v of
    every cross-attention layer), trainable, float32. Call it after the attention backend is set: the
    branch's processors follow each layer's backend."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    if has_user_branch(unet):
        raise ValueError("this UNet already has a user branch (or an IP-Adapter)")
    cross_attention_dim = unet.config.cross_attention_dim
    projection = user_projection_class()(embedding_mean, embedding_std, cross_attention_dim)
    processors = dict(unet.attn_processors)
    for name in _cross_attention_names(unet):
        attention = unet.get_submodule(name[: -len(".processor")])
        text_key = getattr(attention.to_k, "base_layer", attention.to_k)  # under LoRA, peft wraps the layer
        processor = _branch_processor_for(processors[name], text_key.out_features, text_key.in_features)
        with torch.no_grad():
            processor.to_k_ip[0].weight.copy_(text_key.weight)
            processor.to_v_ip[0].weight.zero_()
        processors[name] = processor
    device = next(unet.parameters()).device
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([projection]).to(device)
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
    unet.set_attn_processor(processors)
    parameters = user_branch_parameters(unet)
    for parameter in parameters:
        parameter.data = parameter.data.to(device, torch.float32)
        parameter.requires_grad_(True)
    return parameters


def set_user_branch_scale(unet, scale: float) -> None:
    """lambda of every branch layer from now on (0 skips the branch: the base model)."""
    for processor in _cross_attention_processors(unet):
        processor.scale = [scale]


@contextlib.contextmanager
def user_branch_scale(unet, scale: float) -> Iterator[None]:
    """Run ``unet`` with lambda = ``scale`` inside the block (no-grad uses only: a forward recomputed by
    gradient checkpointing after the block would see the old lambda)."""
    processors = _cross_attention_processors(unet)
    previous = [processor.scale for processor in processors]
    for processor in processors:
        processor.scale = [scale]
    try:
        yield
    finally:
        for processor, old in zip(processors, previous):
            processor.scale = old


def _branch_tensors(unet) -> dict[str, torch.nn.Parameter]:
    """The branch's parameters under their IP-Adapter file names: ``image_proj.proj.*``,
    ``image_proj.norm.*`` and ``ip_adapter.{2k+1}.to_{k,v}_ip.weight`` for the k-th cross-attention
    layer (the numbering of diffusers' IP-Adapter loader, which counts self- and cross-attention)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    tensors = {
        "image_proj.proj.weight": projection.image_embeds.weight, "image_proj.proj.bias": projection.image_embeds.bias,
        "image_proj.norm.weight": projection.norm.weight, "image_proj.norm.bias": projection.norm.bias,
    }
    for k, processor in enumerate(_cross_attention_processors(unet)):
        tensors[f"ip_adapter.{2 * k + 1}.to_k_ip.weight"] = processor.to_k_ip[0].weight
        tensors[f"ip_adapter.{2 * k + 1}.to_v_ip.weight"] = processor.to_v_ip[0].weight
    return tensors


def user_branch_parameters(unet) -> list[torch.nn.Parameter]:
    return list(_branch_tensors(unet).values())


def user_branch_state_dict(unet) -> dict[str, torch.Tensor]:
    """The branch in IP-Adapter's file layout, float32 on the CPU, taking raw embeddings (the
    standardisation folded into P: W' = W / std, b' = b - W' mean): what ``load_ip_adapter`` reads."""
    state = {key: value.detach().to("cpu", torch.float32) for key, value in _branch_tensors(unet).items()}
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    mean = getattr(projection, "embedding_mean", None)
    if mean is not None:
        weight = state["image_proj.proj.weight"] / projection.embedding_std.detach().cpu()[None, :]
        state["image_proj.proj.weight"] = weight
        state["image_proj.proj.bias"] = state["image_proj.proj.bias"] - weight @ mean.detach().cpu()
    return {key: value.contiguous() for key, value in state.items()}


def load_user_branch_state_dict(unet, state: dict[str, torch.Tensor]) -> None:
    """Copy a ``user_branch_state_dict`` (raw-embedding weights) into a UNet that has a branch of the
    same shape; its standardisation becomes the identity."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    if getattr(projection, "embedding_mean", None) is not None:
        projection.embedding_mean.zero_()
        projection.embedding_std.fill_(1.0)
    live = _branch_tensors(unet)
    if set(state) != set(live):
        missing, extra = sorted(set(live) - set(state)), sorted(set(state) - set(live))
        raise ValueError(f"the user branch does not fit this UNet (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for key, parameter in live.items():
            if state[key].shape != parameter.shape:
                raise ValueError(f"user branch tensor {key} has shape {tuple(state[key].shape)}, this UNet needs {tuple(parameter.shape)}")
            parameter.copy_(state[key])
