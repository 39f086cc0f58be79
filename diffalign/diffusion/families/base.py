"""The model-family contract: what differs between text-to-image families, owned by one adapter each.

``diffalign.diffusion.model.DiffusionModel`` delegates every family-specific step to its family, so
that the methods never branch on the family. A family adapter owns:

- loading: the denoiser (``denoiser_class`` from ``denoiser_subfolder``), the text encoders and
  tokenizers (``load_text_encoders``) and the training noise schedule (``load_schedule``); the VAE is
  an ``AutoencoderKL`` for every family, its scaling and shift factors read from its config;
- prompt encoding (``encode_prompts``) and the unconditional branch's conditioning (``null_conditioning``);
- the training noise schedule: timestep sampling (``sample_timesteps``), forward noising
  (``add_noise``) and the regression target (``target``);
- the model call (``forward``), the attention backend (``set_attention_backend``);
- LoRA: the target modules (``lora_targets``) and the keyword names of the diffusers export
  (``lora_save_kwargs``); the generation pipeline (``pipeline_class``, ``pipeline_components``);
- defaults: ``default_guidance`` (classifier-free guidance scale of its pipeline).

Adding a family = one module with a subclass + one line in ``diffalign.diffusion.families.FAMILIES``.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional, Sequence

import torch

from diffalign.diffusion.conditioning import Conditioning

Loader = Callable[[type, str], object]
"""``load(component_class, subfolder)``: a component of the model's folder (errors as ``ModelLoadError``)."""


class ModelFamily:
    """One text-to-image family (module docstring); an instance holds its training noise schedule."""

    name: ClassVar[str]
    """Short name (``sd``, ``sdxl``, ``sd3``): what run files and per-family method defaults use."""
    title: ClassVar[str]
    """Human name in messages (``SD1.x/2.x``)."""
    pipeline_class_names: ClassVar[tuple[str, ...]]
    """``model_index.json`` class names of this family; the first is the diffusers pipeline it exports."""
    denoiser_subfolder: ClassVar[str]
    ddpm_unet: ClassVar[bool]
    """Whether the denoiser is a UNet trained on a DDPM ``alphas_cumprod`` schedule (SD1.x/2.x, SDXL):
    what DDIM inversion, DDIM self-sampling and PPD's UNet user branch need."""
    lora_targets: ClassVar[tuple[str, ...]]
    default_guidance: ClassVar[float]
    prediction_type: ClassVar[str]
    alphas_cumprod: Optional[torch.Tensor] = None
    """The DDPM schedule (float64, UNet families); None for the flow-matching ones."""

    def __init__(self, noise_scheduler):
        self.noise_scheduler = noise_scheduler
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def denoiser_class(cls) -> type:
        raise NotImplementedError

    @classmethod
    def load_schedule(cls, load: Loader) -> "ModelFamily":
        """This family with the training noise schedule of the model's ``scheduler/`` config."""
        raise NotImplementedError

    def load_text_encoders(self, load: Loader) -> tuple[list, list]:
        """(text encoders, tokenizers) in the pipeline's order."""
        raise NotImplementedError

    @staticmethod
    def resolution_of(denoiser_config, vae_config) -> int:
        """The model's own training resolution: denoiser sample size x the VAE's downsampling factor."""
        return denoiser_config["sample_size"] * 2 ** (len(vae_config["block_out_channels"]) - 1)

    # ------------------------------------------------------------------------------ conditioning
    def encode_prompts(self, text_encoders, tokenizers, prompts: Sequence[str], resolution: int) -> Conditioning:
        raise NotImplementedError

    def null_conditioning(self, empty: Conditioning) -> Conditioning:
        """The unconditional branch's conditioning (one row) as the family's pipeline builds it from
        the empty prompt's ``empty``: by default the empty prompt's own."""
        return empty

    # ------------------------------------------------------------------------------- the schedule
    def sample_timesteps(self, count: int, generator: Optional[torch.Generator], device=None) -> torch.Tensor:
        raise NotImplementedError

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- the model
    def forward(self, network: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's prediction on ``noisy`` latents (B, C, h, w) at ``timesteps``."""
        raise NotImplementedError

    def set_attention_backend(self, network: torch.nn.Module, backend: str) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------------------- export, pipeline
    def lora_layers(self, denoiser: torch.nn.Module) -> dict:
        """The denoiser's LoRA weights in the layout its pipeline's ``load_lora_weights`` reads: peft's own
        keys (as diffusers' SD3 / FLUX DreamBooth-LoRA scripts save them)."""
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(denoiser)

    def lora_save_kwargs(self, layers: dict, metadata: dict) -> dict:
        """Keyword arguments of the pipeline class's ``save_lora_weights`` for the denoiser's layers."""
        return {f"{self.denoiser_subfolder}_lora_layers": layers, f"{self.denoiser_subfolder}_lora_adapter_metadata": metadata}

    @classmethod
    def pipeline_class(cls):
        import diffusers

        return getattr(diffusers, cls.pipeline_class_names[0])

    def pipeline_components(self, text_encoders, tokenizers) -> dict:
        """The pipeline's text components (and fixed options) besides the VAE, denoiser and scheduler."""
        raise NotImplementedError
