"""The text modality: loads a causal LM (full fine-tuning or LoRA) with its reference, reads TRL-format
datasets (``diffalign.text.data``), exports transformers / peft folders."""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import Dataset

from diffalign.data.errors import DataError
from diffalign.data.sources import load_hf_dataset, read_jsonl
from diffalign.errors import ModelLoadError
from diffalign.text.data import TextCollator, build_text_dataset
from diffalign.text.model import TextModel
from diffalign.training.config import TrainConfig
from diffalign.training.modality import Modality, register_modality

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
        try:
            policy = AutoModelForCausalLM.from_pretrained(config.model, revision=config.revision,
                                                          attn_implementation=ATTENTION[config.attention])
            tokenizer = load_tokenizer(config.model, config.revision)
        except (OSError, ValueError) as error:
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
        reference = None
        if needs_reference:
            reference = config.reference if config.reference != "auto" else ("adapters" if lora else "copy")
        return TextModel(policy, tokenizer, reference=reference, lora=lora)

    def build_dataset(self, config: TrainConfig, data_format: str, model: TextModel) -> tuple[Dataset, Callable[[list[Any]], Any]]:
        if not config.data:
            raise DataError("no data given: pass --data PATH_OR_HUB_ID")
        table = read_jsonl(config.data) if config.data.endswith((".jsonl", ".json")) else load_hf_dataset(config.data, config.data_split)
        max_length = config.method_args.get("max_length", DEFAULT_MAX_LENGTH)
        dataset = build_text_dataset(table, config.data, data_format, model.tokenizer, max_length,
                                     config.skip_bad_rows, config.max_train_samples)
        if dataset.has_reference_logps and model.has_reference:
            model.drop_reference()
        return dataset, TextCollator(data_format, model.pad_token_id, max_length)


register_modality("text", TextModality)
