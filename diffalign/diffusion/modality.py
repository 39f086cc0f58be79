"""The diffusion modality: load a diffusers pipeline's components, read image preference data."""

from __future__ import annotations

from diffalign.data import ChosenImageDataset, ImagePairDataset, collate_images, load_image_source
from diffalign.diffusion.model import DiffusionModel, LoraSettings
from diffalign.training.config import TrainConfig
from diffalign.training.modality import Modality, register_modality

REFERENCE_MODES = ("auto", "copy", "adapters")


class DiffusionModality(Modality):
    name = "diffusion"

    def load_model(self, config: TrainConfig, needs_reference: bool) -> DiffusionModel:
        lora = None
        if config.lora_rank > 0:
            lora = LoraSettings(config.lora_rank, config.lora_alpha, config.lora_target_modules)
        if config.reference not in REFERENCE_MODES:
            raise ValueError(f"--reference must be one of {', '.join(REFERENCE_MODES)}, got {config.reference!r}")
        reference = None
        if needs_reference:
            reference = config.reference if config.reference != "auto" else ("adapters" if lora else "copy")
        return DiffusionModel.from_pretrained(
            config.model, reference=reference, lora=lora, attention=config.attention,
            gradient_checkpointing=config.gradient_checkpointing, resolution=config.resolution, revision=config.revision,
        )

    def build_dataset(self, config: TrainConfig, data_format: str, model: DiffusionModel):
        single = data_format == "chosen_images"
        source = load_image_source(
            config.data, config.data_split, need_scores=data_format == "scored_image_pairs", single_images=single,
            skip_bad_rows=config.skip_bad_rows, max_rows=config.max_train_samples,
        )
        dataset_class = ChosenImageDataset if single else ImagePairDataset
        dataset = dataset_class(source, config.resolution, config.seed, config.center_crop, config.random_flip)
        return dataset, collate_images


register_modality("diffusion", DiffusionModality)
