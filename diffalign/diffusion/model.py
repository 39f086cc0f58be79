"""``DiffusionModel``: a diffusers text-to-image model as the trainers see it.

It holds the trainable denoiser (a UNet, or SD3's / FLUX's transformer; full or with LoRA adapters through
peft), the frozen VAE and text encoders, the reference and the model's family
(``diffalign.diffusion.families``: the noise schedule, prompt encoding, model call, LoRA targets,
export pipeline), and offers the few operations every method composes: the encode step, timestep
sampling, forward noising, the policy and reference predictions, and the regression target (epsilon
or v on the DDPM UNet families, the flow velocity eps - x0 on the flow-matching ones). Everything
family-specific is delegated to the family, so that the methods never branch on it. The denoiser
attributes keep the name ``unet`` (``unet``, ``unwrapped_unet``, ``reference_unet``) for every family.

The encode step (``encode_batch``, DESIGN.md §4) runs between collate and loss: a raw batch (pixels
and prompts, or their cached latents and embeddings) becomes model inputs (latents per image role,
the prompt conditioning with caption dropout applied), so methods never call the VAE or a text
encoder. Trained from a latent cache (``load_encoders=False``), the VAE and text encoders are never
loaded; the empty-prompt conditioning then comes from the cache.

Reference handling (research/diffusion_methods_A.md §2.3):
- ``copy``: a frozen copy of the initial UNet (official Diffusion-DPO), in the mixed-precision dtype;
- ``adapters``: with LoRA, the same UNet with its adapters disabled under no_grad (diffusers LoRA
  port): no second copy in memory. LoRA B matrices start at zero, so both give the same loss at init;
- ``ema``: a copy of the trainable UNet (adapters included) that follows it as an exponential moving
  average (``update_reference_ema``, Self-NPO's teacher); kept in float32 so that updates of 1e-3 of a
  step are not rounded away, run under autocast, and saved in checkpoints (``checkpointed_modules``);
- ``user-off``: PPD (``user_embedding_stats``): the same UNet with its user branch at lambda = 0 (and its
  adapters disabled, with LoRA), i.e. the base model, under no_grad: no second copy. The branch's
  zero-initialised values make the policy equal it at init (``diffalign.diffusion.user_branch``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from diffalign.diffusion.conditioning import Conditioning
from diffalign.diffusion.families import ModelFamily, TimestepDensity, family_for_pipeline, trained_pipelines
from diffalign.diffusion.user_branch import add_user_branch, has_user_branch, user_branch_scale, user_branch_state_dict
from diffalign.errors import ModelLoadError
from diffalign.hub import hub_unavailable_as_error, require_cached_when_offline

IMAGE_ROLES = ("chosen", "rejected", "image")
"""Image roles of a batch (``<role>_pixels`` or ``<role>_latent_mean/_std``), in the order the encode
step concatenates them: one posterior draw covers all images of a micro-batch."""
ENCODED_SUFFIXES = ("_pixels", "_latent_mean", "_latent_std")
USER_ADAPTER_FILE = "user_adapter.safetensors"
USER_ADAPTER_CONFIG = "user_adapter.json"
"""PPD's export: the user branch in IP-Adapter's layout, and what generating with it needs (the base
model, the embedding size and how the embeddings were made)."""


@dataclass
class LoraSettings:
    rank: int
    alpha: Optional[float] = None
    target_modules: Optional[Sequence[str]] = None

    def peft_config(self, default_targets: Sequence[str]):
        """peft's config; ``default_targets`` (the family's) unless ``target_modules`` is given."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha if self.alpha is not None else self.rank,
            init_lora_weights="gaussian",
            target_modules=list(self.target_modules or default_targets),
        )


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` without diffusers' ``ModelMixin.to`` warning that "modules should be kept in
    float32: []" (it warns whenever a dtype is given, even for models with no such module)."""
    return torch.nn.Module.to(module, dtype=dtype)


def read_model_index(model: str, revision: Optional[str] = None) -> dict:
    """The pipeline's ``model_index.json`` from a local folder or the hub."""
    local = os.path.join(model, "model_index.json")
    if os.path.isdir(model):
        if not os.path.isfile(local):
            raise ModelLoadError(f"{model} is a folder but has no model_index.json: not a diffusers pipeline folder")
        with open(local) as handle:
            return json.load(handle)
    if os.path.exists(model) or model.startswith((".", "/")) or model.count("/") != 1:
        raise ModelLoadError(f"model {model!r} is neither a local diffusers pipeline folder nor a hub id (owner/name)")
    from diffusers import DiffusionPipeline

    require_cached_when_offline(model, "model_index.json", revision)
    try:
        with hub_unavailable_as_error(model):
            return dict(DiffusionPipeline.load_config(model, revision=revision))
    except ModelLoadError:
        raise
    except Exception as error:  # repo missing, gated, ...
        raise ModelLoadError(f"could not load model {model!r} from the hub: {error}") from error


def model_family(model: str, revision: Optional[str] = None) -> type[ModelFamily]:
    """The family of a pipeline folder or hub id (from its ``model_index.json``), or a ``ModelLoadError``."""
    index = read_model_index(model, revision)
    family = family_for_pipeline(index.get("_class_name"))
    if family is None:
        raise ModelLoadError(
            f"model {model!r} is a {index.get('_class_name')}; diffalign trains {', '.join(trained_pipelines())} models"
        )
    return family


def default_resolution(model: str, revision: Optional[str] = None) -> int:
    """The model's own training resolution: denoiser sample size x the VAE's downsampling factor (read
    from the two configs, nothing loaded): 512 for SD1.5, 1024 for SDXL and SD3.5."""
    from diffusers import AutoencoderKL

    family = model_family(model, revision)
    try:
        denoiser = family.denoiser_class().load_config(model, subfolder=family.denoiser_subfolder, revision=revision)
        vae = AutoencoderKL.load_config(model, subfolder="vae", revision=revision)
    except Exception as error:
        raise ModelLoadError(f"could not read the {family.denoiser_subfolder}/ and vae/ configs of {model!r}: {error}") from error
    return family.resolution_of(denoiser, vae)


class DiffusionModel:
    """See the module docstring. Build with ``DiffusionModel.from_pretrained``."""

    def __init__(self, family: ModelFamily, unet, vae, text_encoders, tokenizers, inference_scheduler,
                 reference_unet=None, reference_mode: Optional[str] = None, lora: Optional[LoraSettings] = None,
                 resolution: int = 512, vae_config: Optional[dict] = None, source: Optional[str] = None,
                 revision: Optional[str] = None):
        self.family_adapter = family
        self.family = family.name
        self.unet = unet
        self.unwrapped_unet = unet
        self.vae = vae
        self.vae_config = dict(vae_config if vae_config is not None else vae.config)
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.noise_scheduler = family.noise_scheduler
        self.inference_scheduler = inference_scheduler
        self.reference_unet = reference_unet
        self.reference_mode = reference_mode
        self.lora = lora
        self.resolution = resolution
        self.source, self.revision = source, revision
        self.alphas_cumprod = family.alphas_cumprod
        self.prediction_type = family.prediction_type
        self.num_train_timesteps = family.num_train_timesteps
        self.device = torch.device("cpu")
        self.weight_dtype = torch.float32
        self._empty_conditioning: Optional[Conditioning] = None
        self.user_adapter_info: dict = {}
        """What PPD's export records beside the branch (the user embeddings' encoder), set by the trainer."""

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, model: str, *, reference: Optional[str] = "copy", lora: Optional[LoraSettings] = None,
                        attention: str = "sdpa", gradient_checkpointing: bool = False, resolution: Optional[int] = None,
                        revision: Optional[str] = None, load_encoders: bool = True,
                        user_embedding_stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                        timestep_density: Optional[TimestepDensity] = None) -> "DiffusionModel":
        """Load the components of a pipeline of a registered family (hub id or local folder).

        ``reference``: None (no reference), ``copy``, ``adapters`` (needs ``lora``), ``ema`` or ``user-off``
        (needs ``user_embedding_stats``).
        ``user_embedding_stats``: (mean, std) per dimension of the training user embeddings: install
        PPD's user branch for them (``diffalign.diffusion.user_branch``); the UNet's own weights are
        then frozen (trainable: the branch, plus the adapters with ``lora``).
        ``resolution``: of the training images; None is the model's own (UNet sample size x VAE factor).
        ``load_encoders=False``: only the VAE's config is read, and neither the VAE nor the text encoders
        are loaded (training from a latent cache).
        ``timestep_density``: the training timestep density of a flow-matching family (default: the
        family's, ``diffalign.diffusion.families.flow``).
        """
        import diffusers
        from diffusers import AutoencoderKL

        family_class = model_family(model, revision)
        index = read_model_index(model, revision)
        if timestep_density is not None and family_class.ddpm_unet:
            raise ModelLoadError(f"a timestep density is for the flow-matching families; {family_class.title} models "
                                 "draw DDPM timesteps uniformly")
        if user_embedding_stats is not None and not family_class.ddpm_unet:
            raise ModelLoadError(f"PPD's user branch lives in a UNet's cross-attention; {family_class.title} models have none")
        if reference == "adapters" and lora is None:
            raise ModelLoadError("reference 'adapters' needs LoRA (--lora-rank > 0); use reference 'copy' for full fine-tuning")
        if (reference == "user-off") != (user_embedding_stats is not None):
            raise ValueError("reference 'user-off' and user_embedding_stats go together")

        def load(loader, subfolder):
            try:
                return loader.from_pretrained(model, subfolder=subfolder, revision=revision)
            except Exception as error:
                raise ModelLoadError(f"could not load {subfolder}/ of {model!r}: {error}") from error

        family = family_class.load_schedule(load)
        if timestep_density is not None:
            family.density = timestep_density
        unet = load(family_class.denoiser_class(), family_class.denoiser_subfolder)
        vae, vae_config, text_encoders, tokenizers = None, None, [], []
        if load_encoders:
            vae = load(AutoencoderKL, "vae")
            text_encoders, tokenizers = family.load_text_encoders(load)
        else:
            try:
                vae_config = AutoencoderKL.load_config(model, subfolder="vae", revision=revision)
            except Exception as error:
                raise ModelLoadError(f"could not read vae/config.json of {model!r}: {error}") from error
        if resolution is None:
            resolution = family.resolution_of(unet.config, vae.config if vae is not None else vae_config)
        inference_scheduler = load(getattr(diffusers, index["scheduler"][1]), "scheduler")

        for frozen in (vae, *text_encoders):
            if frozen is not None:
                frozen.requires_grad_(False).eval()
        family.set_attention_backend(unet, attention)
        reference_unet = None
        if reference == "copy":
            reference_unet = copy.deepcopy(unet).requires_grad_(False).eval()
        if lora is not None or user_embedding_stats is not None:
            unet.requires_grad_(False)
        if lora is not None:
            unet.add_adapter(lora.peft_config(family.lora_targets))
        if user_embedding_stats is not None:  # after the backend (the branch follows it) and the adapters (never on the branch)
            add_user_branch(unet, *user_embedding_stats)
        if reference == "ema":  # after the adapters: the teacher averages them too
            reference_unet = copy.deepcopy(unet).requires_grad_(False).eval()
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        return cls(family, unet, vae, text_encoders, tokenizers, inference_scheduler,
                   reference_unet=reference_unet, reference_mode=reference, lora=lora, resolution=resolution,
                   vae_config=vae_config, source=model, revision=revision)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one training image's latents."""
        size = self.resolution // 2 ** (len(self.vae_config["block_out_channels"]) - 1)
        return (self.vae_config["latent_channels"], size, size)

    @property
    def has_encoders(self) -> bool:
        """Whether the VAE and text encoders are loaded (not when training from a latent cache)."""
        return self.vae is not None

    # ------------------------------------------- the training loop's ModelAdapter protocol
    def trainable_module(self) -> torch.nn.Module:
        return self.unwrapped_unet

    def set_trainable_module(self, module: torch.nn.Module) -> None:
        self.unet = module

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Frozen text encoders and reference in ``dtype``; the VAE stays float32 (SD VAEs overflow in fp16).
        With LoRA or a user branch the frozen base weights are cast too, the trainable ones stay float32."""
        self.device = torch.device(device)
        self.weight_dtype = dtype
        if self.vae is not None:
            self.vae.to(self.device)
        for text_encoder in self.text_encoders:
            text_encoder.to(self.device, dtype=dtype)
        if self.reference_unet is not None:
            self.reference_unet.to(self.device)
            if self.reference_mode == "copy":
                cast(self.reference_unet, dtype)
        self.unwrapped_unet.to(self.device)
        if (self.lora is not None or has_user_branch(self.unwrapped_unet)) and dtype != torch.float32:
            cast(self.unwrapped_unet, dtype)
            for parameter in self.unwrapped_unet.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()

    def export(self, output_dir: str, unwrapped: torch.nn.Module) -> None:
        """Full fine-tuning: a complete diffusers pipeline folder at ``output_dir`` (``from_pretrained`` it).
        LoRA: ``pytorch_lora_weights.safetensors`` there, for ``pipe.load_lora_weights(output_dir)``.
        PPD (a user branch): ``user_adapter.safetensors`` + ``user_adapter.json`` (and the LoRA file with
        LoRA), for the base model's pipeline: the UNet's own weights did not change."""
        pipeline_class = self.pipeline_class()
        if has_user_branch(unwrapped):
            self._export_user_adapter(output_dir, unwrapped)
        if self.lora is not None:
            layers = self.family_adapter.lora_layers(unwrapped)
            # the adapter's config (lora_alpha above all) travels in the file's metadata: without it every
            # diffusers loader applies the LoRA at scale 1 instead of alpha / rank
            metadata = unwrapped.peft_config["default"].to_dict()
            pipeline_class.save_lora_weights(output_dir, safe_serialization=True,
                                             **self.family_adapter.lora_save_kwargs(layers, metadata))
            return
        if has_user_branch(unwrapped):
            return
        unet = cast(copy.deepcopy(unwrapped).to("cpu"), torch.float32)
        if self.has_encoders:
            pipeline = self.build_pipeline(unet=unet, device="cpu")
        else:  # trained from a latent cache: the other components come from the source model's files
            pipeline = pipeline_class.from_pretrained(self.source, revision=self.revision,
                                                      **{self.family_adapter.denoiser_subfolder: unet})
        pipeline.save_pretrained(output_dir, safe_serialization=True)

    def _export_user_adapter(self, output_dir: str, unwrapped: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        state = user_branch_state_dict(unwrapped)
        save_file(state, os.path.join(output_dir, USER_ADAPTER_FILE))
        config = {"base_model": self.source, "revision": self.revision, "family": self.family,
                  "embedding_dim": state["image_proj.proj.weight"].shape[1], **self.user_adapter_info}
        with open(os.path.join(output_dir, USER_ADAPTER_CONFIG), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)

    # ------------------------------------------------------------------------------ generation
    def pipeline_class(self):
        return self.family_adapter.pipeline_class()

    def build_pipeline(self, unet: Optional[torch.nn.Module] = None, device=None):
        """A diffusers pipeline over these components (the policy denoiser unless ``unet`` is given)."""
        unet = unet if unet is not None else self.unwrapped_unet
        components = dict(vae=self.vae, scheduler=copy.deepcopy(self.inference_scheduler),
                          **{self.family_adapter.denoiser_subfolder: unet},
                          **self.family_adapter.pipeline_components(self.text_encoders, self.tokenizers))
        pipeline = self.pipeline_class()(**components)
        return pipeline.to(device) if device is not None else pipeline

    # ---------------------------------------------------------------------------- the encode step
    def encode_batch(self, batch: dict, generator: Optional[torch.Generator] = None, caption_dropout: float = 0.0) -> dict:
        """Model inputs of a collated batch; all randomness from ``generator``, drawn in this order:

        1. caption dropout: B uniforms (always, so the stream does not depend on the probability); a
           prompt whose draw is below ``caption_dropout`` gets the empty prompt's conditioning
           (official Diffusion-DPO / SmPO / InPO: 0.2, research/diffusion_methods_A.md Q5);
        2. one posterior sample for every image of the batch, roles concatenated in ``IMAGE_ROLES``
           order: latents = (mean + std * N(0, I) - shift) * scaling_factor (a sample, not the mode, as
           the official trainers do), from the VAE (float32, outside autocast) or from cached mean/std.

        Returns the batch's other keys unchanged, plus ``<role>_latents`` (B, C, h, w) per image role,
        ``cond`` (B rows) and, with negative prompts, ``negative_cond`` (one row per negative prompt).
        """
        prompts = batch["prompts"]
        inputs = {key: value for key, value in batch.items()
                  if not key.endswith(ENCODED_SUFFIXES) and key not in ("prompt_cond", "negative_prompt_cond")}
        dropped = torch.rand(len(prompts), generator=generator) < caption_dropout
        roles = [role for role in IMAGE_ROLES if f"{role}_pixels" in batch or f"{role}_latent_mean" in batch]
        if roles:
            if f"{roles[0]}_pixels" in batch:
                mean, std = self.posterior(torch.cat([batch[f"{role}_pixels"] for role in roles]))
            else:
                mean = torch.cat([batch[f"{role}_latent_mean"] for role in roles]).to(self.device, torch.float32)
                std = torch.cat([batch[f"{role}_latent_std"] for role in roles]).to(self.device, torch.float32)
            latents = self.sample_latents(mean, std, generator)
            inputs.update({f"{role}_latents": chunk for role, chunk in zip(roles, latents.split(len(prompts)))})
        inputs["cond"] = self._conditioning(batch.get("prompt_cond"), prompts).where(dropped, self.empty_conditioning())
        if "negative_prompts" in batch:
            flat = [prompt for negatives in batch["negative_prompts"] for prompt in negatives]
            inputs["negative_cond"] = self._conditioning(batch.get("negative_prompt_cond"), flat)
        return inputs

    def null_conditioning(self) -> Conditioning:
        """The unconditional branch's conditioning as the family's pipeline builds it (one row): the
        empty prompt's for SD1.x/2.x; for SDXL all-zero prompt and pooled embeddings with the usual
        time ids (``force_zeros_for_empty_prompt``, as the Self-NPO and NPO SDXL code)."""
        return self.family_adapter.null_conditioning(self.empty_conditioning())

    def empty_conditioning(self) -> Conditioning:
        """The empty prompt's conditioning (one row), which caption dropout swaps in."""
        if self._empty_conditioning is None:
            if not self.has_encoders:
                raise RuntimeError("no text encoders are loaded: set_empty_conditioning() from the latent cache first")
            self._empty_conditioning = self.encode_prompts([""])
        return self._empty_conditioning

    def set_empty_conditioning(self, tensors: dict[str, torch.Tensor]) -> None:
        """The empty prompt's conditioning from a latent cache (one row per tensor)."""
        self._empty_conditioning = self._to_model(Conditioning.from_tensors(tensors))

    def _conditioning(self, cached: Optional[dict], prompts: Sequence[str]) -> Conditioning:
        if cached is not None:
            return self._to_model(Conditioning.from_tensors(cached))
        if not self.has_encoders:
            raise RuntimeError("this batch has raw prompts but the text encoders are not loaded")
        return self.encode_prompts(prompts)

    def _to_model(self, cond: Conditioning) -> Conditioning:
        """Cached embeddings on the model's device, in the dtype the text encoders would produce."""
        return cond.map(lambda tensor: tensor.to(self.device, self.weight_dtype if tensor.is_floating_point() else tensor.dtype))

    # ------------------------------------------------------------------------------ operations
    @torch.no_grad()
    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's mean and std of images in [-1, 1], (B, 3, H, W) -> 2 x (B, C, H/8, W/8), float32."""
        pixels = pixels.to(self.device, dtype=torch.float32)
        distribution = self.vae.encode(pixels).latent_dist
        return distribution.mean, distribution.std

    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A posterior sample times the VAE scaling factor (after its shift, where the VAE has one)."""
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
        shift = self.vae_config.get("shift_factor") or 0.0
        return (mean + std * noise - shift) * self.vae_config["scaling_factor"]

    def encode_images(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """VAE latents of images in [-1, 1]: a posterior sample (``sample_latents``)."""
        return self.sample_latents(*self.posterior(pixels), generator)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return self.family_adapter.encode_prompts(self.text_encoders, self.tokenizers, prompts, self.resolution)

    def sample_timesteps(self, count: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        """``count`` training timesteps from ``generator``: DDPM integers uniform on {0, ..., T - 1}, or a
        flow-matching family's T sigma drawn from its timestep density."""
        return self.family_adapter.sample_timesteps(count, generator, device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM), x_sigma = (1 - sigma) x0 + sigma eps (flow)."""
        return self.family_adapter.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The regression target: the noise (epsilon-prediction), the velocity (v-prediction) or eps - x0 (flow)."""
        return self.family_adapter.target(latents, noise, timesteps)

    def epsilon(self, prediction: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The noise a UNet prediction implies (DDPM families)."""
        return self.family_adapter.epsilon(prediction, noisy_latents, timesteps)

    def denoised(self, prediction: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The clean latent x0 a UNet prediction implies (DDPM families)."""
        return self.family_adapter.denoised(prediction, noisy_latents, timesteps)

    def policy(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The trainable denoiser's prediction, with grad (through the accelerate-prepared module)."""
        return self.family_adapter.forward(self.unet, noisy_latents, timesteps, cond)

    @torch.no_grad()
    def policy_no_grad(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The current policy's prediction without grad (used by inversion), bypassing DDP."""
        with self._autocast():
            return self.family_adapter.forward(self.unwrapped_unet, noisy_latents, timesteps, cond)

    @torch.no_grad()
    def reference(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The frozen reference's prediction, detached."""
        if self.reference_mode in ("copy", "ema"):
            with self._autocast():
                return self.family_adapter.forward(self.reference_unet, noisy_latents, timesteps, cond).detach()
        if self.reference_mode in ("adapters", "user-off"):
            with self._base_weights(), self._autocast():
                return self.family_adapter.forward(self.unwrapped_unet, noisy_latents, timesteps, cond).detach()
        raise RuntimeError("this model was loaded without a reference (reference=None)")

    @torch.no_grad()
    def update_reference_ema(self, decay: float) -> None:
        """theta_ref <- decay * theta_ref + (1 - decay) * theta for every trainable parameter theta
        (reference ``ema``): a constant rate from the first step, as Self-NPO's teacher (diffusers'
        ``EMAModel`` warms its decay up and copies the weights at its first step, so it is not used)."""
        if self.reference_mode != "ema":
            raise RuntimeError(f"update_reference_ema needs reference 'ema', this model has {self.reference_mode!r}")
        for (name, teacher), (student_name, student) in zip(self.reference_unet.named_parameters(),
                                                            self.unwrapped_unet.named_parameters()):
            if name != student_name:
                raise RuntimeError(f"the EMA reference's parameter {name} does not match the UNet's {student_name}")
            if student.requires_grad:
                teacher.lerp_(student.detach().to(teacher.dtype), 1.0 - decay)

    def checkpointed_modules(self) -> list[torch.nn.Module]:
        """Modules a checkpoint must hold besides the trainable one: the EMA reference, which training changes."""
        return [self.reference_unet] if self.reference_mode == "ema" else []

    @contextlib.contextmanager
    def _base_weights(self):
        """The trainable UNet as the base model inside the block: adapters disabled, user branch at lambda = 0."""
        with contextlib.ExitStack() as stack:
            if has_user_branch(self.unwrapped_unet):
                stack.enter_context(user_branch_scale(self.unwrapped_unet, 0.0))
            if self.lora is not None:
                self.unwrapped_unet.disable_adapters()
                stack.callback(self.unwrapped_unet.enable_adapters)
            yield

    def _autocast(self):
        if self.weight_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.weight_dtype)
