"""The text modality: a causal LM (full fine-tuning or LoRA) with its reference from ``TrainConfig``,
and the TRL-format text data formats."""

from __future__ import annotations

from diffalign.data import TextOptions, get_format
from diffalign.data.errors import DataError
from diffalign.data.tables import read_table
from diffalign.errors import ModelLoadError, UsageError
from diffalign.hub import hub_unavailable_as_error, require_cached_when_offline
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
            raise ModelLoadError(f"the tokenizer of {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _loading(config: TrainConfig, load):
    """``load()`` of the causal LM or its tokenizer, every failure one ``ModelLoadError`` sentence."""
    if not config.model:
        raise DataError("no model given: pass --model PATH_OR_HUB_ID (a causal LM folder)")
    require_cached_when_offline(config.model, "config.json", config.revision)
    try:
        with hub_unavailable_as_error(config.model):
            return load()
    except (OSError, ValueError) as error:
        if isinstance(error, ModelLoadError):
            raise
        raise ModelLoadError(f"could not load the causal LM {config.model!r}: {error}") from error


class TextModality(Modality):
    name = "text"

    def __init__(self):
        self.tokenizer = None
        self.reference_logps_in_data = False

    def build_dataset(self, config: TrainConfig, method):
        """Tokenise and check the data before the model loads (only the tokenizer is needed)."""
        self.tokenizer = _loading(config, lambda: load_tokenizer(config.model, config.revision))
        options = TextOptions(tokenizer=self.tokenizer, max_length=getattr(method.config, "max_length", DEFAULT_MAX_LENGTH),
                              skip_bad_rows=config.skip_bad_rows, max_rows=config.max_train_samples)
        dataset, collate = get_format(method.data_format).build(read_table(config.data, config.data_split), options)
        self.reference_logps_in_data = dataset.has_reference_logps
        return dataset, collate

    def load_model(self, config: TrainConfig, method) -> TextModel:
        from transformers import AutoModelForCausalLM

        if config.attention not in ATTENTION:
            raise UsageError(f"--attention {config.attention!r} is not available for text models; use sdpa or native")
        policy = _loading(config, lambda: AutoModelForCausalLM.from_pretrained(
            config.model, revision=config.revision, attn_implementation=ATTENTION[config.attention]))
        if config.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = config.lora_rank > 0
        if lora:
            from peft import LoraConfig, get_peft_model

            policy = get_peft_model(policy, LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                target_modules=config.lora_target_modules or "all-linear", task_type="CAUSAL_LM",
            ))
        # precomputed reference scores in the data replace the reference model
        reference = None if self.reference_logps_in_data else reference_mode(config, method, lora)
        return TextModel(policy, self.tokenizer, reference=reference, lora=lora)
