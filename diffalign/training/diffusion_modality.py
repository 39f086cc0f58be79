"""The diffusion modality: a diffusers pipeline's components from ``TrainConfig``, image data formats,
and the latent cache (``--data`` a ``diffalign cache`` folder: the VAE and text encoders are not
loaded, the cache's fingerprint must match the model's encoders and the run's resolution and flips)."""

from __future__ import annotations

from typing import Optional

from diffalign.data import ImageOptions, get_format
from diffalign.data.cache import LatentCache, is_latent_cache
from diffalign.data.tables import read_table
from diffalign.diffusion.fingerprint import encoder_fingerprint
from diffalign.diffusion.model import DiffusionModel, LoraSettings, default_resolution, read_model_index
from diffalign.training.config import TrainConfig
from diffalign.training.modality import Modality, reference_mode


class DiffusionModality(Modality):
    name = "diffusion"

    def __init__(self):
        self.cache: Optional[LatentCache] = None
        self.resolution: Optional[int] = None

    def build_dataset(self, config: TrainConfig, method):
        """Read and check the data before the model loads: its resolution comes from the cache (whose
        fingerprint must match the model's encoders) or the model's configs."""
        read_model_index(config.model, config.revision)  # a missing or wrong --model is named first
        if is_latent_cache(config.data):
            self.cache = LatentCache(config.data)
            self.resolution = self.cache.check_compatible(encoder_fingerprint(config.model, config.revision),
                                                          config.resolution, config.center_crop, config.random_flip)
        else:
            self.resolution = config.resolution or default_resolution(config.model, config.revision)
        table = self.cache.table() if self.cache is not None else read_table(config.data, config.data_split)
        options = ImageOptions(resolution=self.resolution, seed=config.seed, center_crop=config.center_crop,
                               random_flip=config.random_flip, skip_bad_rows=config.skip_bad_rows,
                               max_rows=config.max_train_samples, progress=config.progress_bar, **method.data_options())
        return get_format(method.data_format).build(table, options)

    def load_model(self, config: TrainConfig, method) -> DiffusionModel:
        lora = LoraSettings(config.lora_rank, config.lora_alpha, config.lora_target_modules) if config.lora_rank > 0 else None
        model = DiffusionModel.from_pretrained(
            config.model, reference=reference_mode(config, method, lora is not None), lora=lora,
            attention=config.attention, gradient_checkpointing=config.gradient_checkpointing, resolution=self.resolution,
            revision=config.revision, load_encoders=self.cache is None, **method.model_options(),
        )
        if self.cache is not None:
            model.set_empty_conditioning(self.cache.empty_conditioning())
        return model
