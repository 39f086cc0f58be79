"""The diffusion modality: a diffusers pipeline's components from ``TrainConfig``, image data formats,
and the latent cache (``--data`` a ``diffalign cache`` folder: the VAE and text encoders are not
loaded, the cache's fingerprint must match the model's encoders and the run's resolution and flips)."""

from __future__ import annotations

from typing import Optional

from diffalign.data import ImageOptions, get_format
from diffalign.data.cache import LatentCache, is_latent_cache
from diffalign.data.tables import read_table
from diffalign.diffusion.fingerprint import encoder_fingerprint
from diffalign.diffusion.families import TimestepDensity
from diffalign.diffusion.model import DiffusionModel, LoraSettings, default_resolution, model_family
from diffalign.errors import UserError
from diffalign.methods.base import registered_methods
from diffalign.training.config import TrainConfig
from diffalign.training.modality import Modality, reference_mode


class UnsupportedFamilyError(UserError, ValueError):
    """A method the model's family cannot run (``Method.needs_ddpm_unet`` on a flow-matching family)."""


def check_family_supports(family, method) -> None:
    if method.needs_ddpm_unet and not family.ddpm_unet:
        runnable = [name for name, cls in registered_methods().items() if cls.modality == "diffusion" and not cls.needs_ddpm_unet]
        raise UnsupportedFamilyError(f"{method.name} needs {method.needs_ddpm_unet}, which {family.title} models "
                                     f"(flow-matching transformers) do not have; on them use {', '.join(runnable)}")


class DiffusionModality(Modality):
    name = "diffusion"

    def __init__(self):
        self.cache: Optional[LatentCache] = None
        self.resolution: Optional[int] = None

    def build_dataset(self, config: TrainConfig, method):
        """Read and check the data before the model loads: its resolution comes from the cache (whose
        fingerprint must match the model's encoders) or the model's configs."""
        check_family_supports(model_family(config.model, config.revision), method)  # a missing or wrong --model is named first
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
            timestep_density=TimestepDensity(config.timestep_density) if config.timestep_density is not None else None,
        )
        if self.cache is not None:
            model.set_empty_conditioning(self.cache.empty_conditioning())
        return model
