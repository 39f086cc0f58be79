"""Text conditioning of SD1.x/2.x and SDXL UNets (research/diffusion_methods_A.md §1.3-§1.4).

- SD1.x/2.x: the CLIP text encoder's last hidden state, (B, 77, D).
- SDXL: the penultimate hidden states of both encoders (CLIP-L and OpenCLIP-bigG) concatenated on
  the feature axis, the second encoder's pooled projection as ``text_embeds``, and the six
  micro-conditioning numbers ``time_ids`` = (orig_h, orig_w, crop_top, crop_left, target_h, target_w).
  The official Diffusion-DPO / SmPO / InPO trainers use the constant (R, R, 0, 0, R, R) for every
  sample; so does diffalign (spec Q8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class Conditioning:
    """What a UNet forward needs besides the noisy latents and the timesteps."""

    prompt_embeds: torch.Tensor
    added_cond_kwargs: Optional[dict[str, torch.Tensor]] = None
    user_embeds: Optional[torch.Tensor] = None
    """PPD's user embeddings (B, D), for a UNet with the decoupled user branch
    (``diffalign.diffusion.user_branch``); not text, so caption dropout and the cache leave them alone."""

    def with_user_embeds(self, user_embeds: torch.Tensor) -> "Conditioning":
        return Conditioning(self.prompt_embeds, self.added_cond_kwargs, user_embeds.to(self.prompt_embeds.device))

    def repeat_for_pair(self) -> "Conditioning":
        """Conditioning for a [winners; losers] batch: the same prompt conditions both halves."""
        return self.map(lambda tensor: torch.cat([tensor, tensor], dim=0))

    @staticmethod
    def concat(parts: Sequence["Conditioning"]) -> "Conditioning":
        """The rows of ``parts`` one after the other (one batched forward over several conditionings)."""
        added = None
        if parts[0].added_cond_kwargs is not None:
            added = {key: torch.cat([part.added_cond_kwargs[key] for part in parts]) for key in parts[0].added_cond_kwargs}
        users = None if parts[0].user_embeds is None else torch.cat([part.user_embeds for part in parts])
        return Conditioning(torch.cat([part.prompt_embeds for part in parts]), added, users)

    def map(self, function) -> "Conditioning":
        added = None if self.added_cond_kwargs is None else {k: function(v) for k, v in self.added_cond_kwargs.items()}
        users = None if self.user_embeds is None else function(self.user_embeds)
        return Conditioning(function(self.prompt_embeds), added, users)

    def where(self, mask: torch.Tensor, other: "Conditioning") -> "Conditioning":
        """Rows of ``other`` (one row, broadcast) where ``mask`` (B,) is True, else this conditioning's rows."""
        def pick(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            row_mask = mask.to(mine.device).reshape(-1, *[1] * (mine.dim() - 1))
            return torch.where(row_mask, theirs.to(mine.device, mine.dtype), mine)

        added = None
        if self.added_cond_kwargs is not None:
            added = {key: pick(value, other.added_cond_kwargs[key]) for key, value in self.added_cond_kwargs.items()}
        return Conditioning(pick(self.prompt_embeds, other.prompt_embeds), added, self.user_embeds)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors by name (``prompt_embeds``, and SDXL's ``text_embeds``, ``time_ids``): what the cache stores."""
        return {"prompt_embeds": self.prompt_embeds, **(self.added_cond_kwargs or {})}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Conditioning":
        added = {key: value for key, value in tensors.items() if key != "prompt_embeds"}
        return cls(tensors["prompt_embeds"], added or None)

    def unet_kwargs(self) -> dict:
        kwargs = {"encoder_hidden_states": self.prompt_embeds}
        if self.added_cond_kwargs is not None:
            kwargs["added_cond_kwargs"] = self.added_cond_kwargs
        if self.user_embeds is not None:  # IP-Adapter's input slot: one adapter, one "image" (the user) per row
            kwargs["added_cond_kwargs"] = {**kwargs.get("added_cond_kwargs", {}), "image_embeds": [self.user_embeds[:, None, :]]}
        return kwargs


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_sd_prompts(text_encoder, tokenizer, prompts: Sequence[str]) -> Conditioning:
    input_ids = tokenize(tokenizer, prompts).to(text_encoder.device)
    return Conditioning(text_encoder(input_ids)[0])


@torch.no_grad()
def encode_sdxl_prompts(text_encoders, tokenizers, prompts: Sequence[str], resolution: int) -> Conditioning:
    hidden_states = []
    pooled = None
    for text_encoder, tokenizer in zip(text_encoders, tokenizers):
        input_ids = tokenize(tokenizer, prompts).to(text_encoder.device)
        output = text_encoder(input_ids, output_hidden_states=True)
        hidden_states.append(output.hidden_states[-2])
        pooled = output[0]  # CLIPTextModelWithProjection: text_embeds (the second encoder's, as in SDXL)
    prompt_embeds = torch.cat(hidden_states, dim=-1)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=prompt_embeds.dtype)
    time_ids = time_ids.repeat(len(prompts), 1).to(prompt_embeds.device)
    return Conditioning(prompt_embeds, {"text_embeds": pooled, "time_ids": time_ids})
