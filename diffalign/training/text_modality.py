"""The text modality: a causal LM (full fine-tuning or LoRA) with its reference from ``TrainConfig``,
and the TRL-format text data formats."""

from __future__ import annotations

import os

from diffalign.data import TextOptions, get_format
from diffalign.data.errors import DataError
from diffalign.data.tables import read_table
from diffalign.errors import ModelLoadError
from diffalign.text.model import TextModel
from diffalign.training.config import TrainConfig
from diffalign.training.modality import Modality, reference_mode

DEFAULT_MAX_LENGTH = 1024  # TRL DPOConfig / KTOConfig max_length
ATTENTION = {"sdpa": "sdpa", "native": "eager"}


def load_tokenizer(path: str, revision=None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class TextModality(Modality):
    name = "text"

    def load_model(self, config: TrainConfig, needs_reference: bool) -> TextModel:
        from transformers import AutoModelForCausalLM

        if not config.model:
            raise DataError("no model given: pass --model PATH_OR_HUB_ID (a causal LM folder)")
        if config.attention not in ATTENTION:
            raise ValueError(f"--attention {config.attention!r} is not available for text models; use sdpa or native")
        from huggingface_hub import constants, try_to_load_from_cache

        missing = f"model {config.model!r} is not in the local hub cache and"
        fix = f"download it first (hf download {config.model}) or pass a local folder"
        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        hub_id = config.model.count("/") <= 1 and not config.model.startswith((".", "/")) and not os.path.exists(config.model)
        if offline and hub_id:
            try:
                cached = isinstance(try_to_load_from_cache(config.model, "config.json", revision=config.revision), str)
            except Exception:  # not a valid repo id: from_pretrained says so below
                cached = True
            if not cached:
                raise ModelLoadError(f"{missing} HF_HUB_OFFLINE is set: {fix}")
        try:
            policy = AutoModelForCausalLM.from_pretrained(config.model, revision=config.revision,
                                                          attn_implementation=ATTENTION[config.attention])
            tokenizer = load_tokenizer(config.model, config.revision)
        except (OSError, ValueError) as error:
            chain = [error, error.__cause__, error.__context__]
            if any(type(link).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") for link in chain):
                reason = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
                raise ModelLoadError(f"{missing} {reason}: {fix}") from error
            raise ModelLoadError(f"could not load the causal LM {config.model!r}: {error}") from error
        if config.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = config.lora_rank > 0
        if lora:
            from peft import LoraConfig, get_peft_model

            policy = get_peft_model(policy, LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                target_modules=config.lora_target_modules or "all-linear", task_type="CAUSAL_LM",
            ))
        return TextModel(policy, tokenizer, reference=reference_mode(config, needs_reference, lora), lora=lora)

    def build_dataset(self, config: TrainConfig, method, model: TextModel):
        options = TextOptions(tokenizer=model.tokenizer, max_length=getattr(method.config, "max_length", DEFAULT_MAX_LENGTH),
                              skip_bad_rows=config.skip_bad_rows, max_rows=config.max_train_samples)
        dataset, collate = get_format(method.data_format).build(read_table(config.data, config.data_split), options)
        if dataset.has_reference_logps and model.has_reference:
            model.drop_reference()
        return dataset, collate
