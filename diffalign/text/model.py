"""``TextModel``: a causal LM policy, its tokenizer and its reference, as the training loop sees it.

The reference is one of (DESIGN.md §4, TRL 1.16 §7.4):

- ``copy``: a frozen copy of the initial policy, in eval mode, never optimised;
- ``adapters``: with LoRA, the same module with its adapters disabled (the base model; no second
  copy in memory), as TRL does for a new ``peft_config``;
- precomputed: reference scores read from the data (``ref_chosen_logps`` / ``ref_rejected_logps``);
  the model is then built with ``reference=None`` and no reference is loaded.

Reference forwards run under ``torch.no_grad``. Dropout is disabled in policy and reference (TRL's
``disable_dropout=True`` default), so the policy at step 0 equals the reference exactly.
"""

from __future__ import annotations

import copy
import os
from typing import Optional

import torch

from diffalign.text.logprobs import SequenceLogps, sequence_logps, token_logps

REFERENCE_KINDS = ("copy", "adapters")


def disable_dropout(module: torch.nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, torch.nn.Dropout):
            child.p = 0.0


class TextModel:
    def __init__(self, policy: torch.nn.Module, tokenizer, reference: Optional[str] = None, lora: bool = False):
        if reference not in (None, *REFERENCE_KINDS):
            raise ValueError(f"reference must be one of {REFERENCE_KINDS} or None, got {reference!r}")
        if reference == "adapters" and not lora:
            raise ValueError("reference='adapters' needs LoRA (--lora-rank > 0); use reference='copy' for full fine-tuning")
        disable_dropout(policy)
        self.tokenizer = tokenizer
        self.lora = lora
        self.reference_kind = reference
        self.reference_model: Optional[torch.nn.Module] = None
        if reference == "copy":
            base = policy.get_base_model() if lora else policy
            self.reference_model = copy.deepcopy(base).eval().requires_grad_(False)
        self._unwrapped = policy
        self.policy = policy

    # ------------------------------------------- the training loop's model protocol
    def trainable_module(self) -> torch.nn.Module:
        return self._unwrapped

    def set_trainable_module(self, module: torch.nn.Module) -> None:
        self.policy = module

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move policy and reference to ``device``; the frozen reference is cast to ``dtype``."""
        self._unwrapped.to(device)
        if self.reference_model is not None:
            self.reference_model.to(device=device, dtype=dtype)

    def checkpointed_modules(self) -> list[torch.nn.Module]:
        """Nothing besides the policy changes in training (the reference is frozen or the base)."""
        return []

    def encode_batch(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        """The encode step: text batches are tokenised by their data format already."""
        return batch

    def export(self, output_dir: str, unwrapped: torch.nn.Module) -> None:
        """Full fine-tuning: a transformers model folder (``AutoModelForCausalLM.from_pretrained``);
        LoRA: a peft adapter folder (``PeftModel.from_pretrained(base, output_dir)``). Tokenizer too."""
        os.makedirs(output_dir, exist_ok=True)
        unwrapped.save_pretrained(output_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(output_dir)

    # ------------------------------------------------------------------ scores
    @property
    def has_reference(self) -> bool:
        return self.reference_kind is not None

    def policy_logps(self, input_ids, attention_mask, loss_mask) -> SequenceLogps:
        return sequence_logps(self.policy, input_ids, attention_mask, loss_mask)

    def policy_token_logps(self, input_ids, attention_mask, loss_mask) -> torch.Tensor:
        """(R, T-1) per-token log-probs (zero outside ``loss_mask[:, 1:]``), for sums under several masks."""
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return token_logps(logits, input_ids, loss_mask)

    @torch.no_grad()
    def reference_logps(self, input_ids, attention_mask, loss_mask) -> SequenceLogps:
        if self.reference_kind == "copy":
            return sequence_logps(self.reference_model, input_ids, attention_mask, loss_mask)
        if self.reference_kind == "adapters":
            with self._unwrapped.disable_adapter():
                return sequence_logps(self._unwrapped, input_ids, attention_mask, loss_mask)
        raise RuntimeError("this model has no reference (precomputed reference scores must come with the batch)")

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id
