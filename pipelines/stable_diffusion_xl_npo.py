"""Classifier-free guidance with a separate negative UNet (Diffusion-NPO / Self-NPO inference), SDXL.

Same guidance as ``StableDiffusionNPOPipeline`` (see ``diffalign.pipelines.stable_diffusion_npo`` for
the equation, its source and what differs from the official double-UNet pipelines):

    eps = eps_neg(x_t, t, c_neg) + w * (eps_pos(x_t, t, c) - eps_neg(x_t, t, c_neg))

with SDXL's conditioning: ``c`` / ``c_neg`` are the concatenated penultimate hidden states of both text
encoders plus the pooled embedding of the second one and the size/crop ``time_ids``. Without a
``negative_prompt`` and with ``force_zeros_for_empty_prompt`` (SDXL base's setting), ``c_neg`` is all
zeros (prompt and pooled embeddings), as in diffusers and in the official NPO SDXL pipeline; the
``negative_original_size`` / ``negative_crops_coords_top_left`` / ``negative_target_size`` arguments set
the negative branch's ``time_ids`` (default: the positive branch's).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

from diffalign.pipelines.stable_diffusion_npo import NPOGuidanceMixin

__all__ = ["StableDiffusionXLNPOPipeline"]


def _execution_device_of(module: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where ``module`` runs (its offload hook's device when offloaded); ``fallback`` on older diffusers."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:
        return fallback
    return get_module_execution_device(module)


class StableDiffusionXLNPOPipeline(NPOGuidanceMixin, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` whose classifier-free guidance takes its negative branch from a second
    UNet: ``eps = eps_neg(x, t, c_neg) + w (eps_pos(x, t, c) - eps_neg(x, t, c_neg))`` (module docstring).

    ``negative_unet``: an optional SDXL ``UNet2DConditionModel`` (same conditioning as ``unet``). It is a
    regular pipeline component: ``save_pretrained`` writes ``negative_unet/``, ``from_pretrained`` loads
    it back, ``from_pretrained(folder, negative_unet=unet)`` and ``from_pipe(pipe, negative_unet=unet)``
    compose a positive pipeline with a separately trained negative. Without it the pipeline is plain
    classifier-free guidance, valid for every ``w``.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->negative_unet->vae"
    _optional_components = list(StableDiffusionXLPipeline._optional_components) + ["negative_unet"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: Optional[CLIPVisionModelWithProjection] = None,
        feature_extractor: Optional[CLIPImageProcessor] = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: Optional[bool] = None,
        negative_unet: Optional[UNet2DConditionModel] = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_modules(negative_unet=negative_unet)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] from final latents; a float16 VAE flagged ``force_upcast`` decodes in float32
        (SDXL's VAE overflows in float16) and is cast back afterwards."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
        latents = latents.to(vae.dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            channels = latents.shape[1]
            mean = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        latents = latents.to(_execution_device_of(vae, latents.device))
        try:
            image = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
        return image

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, list[str], None] = None,
        prompt_2: Union[str, list[str], None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        timesteps: Optional[list[int]] = None,
        sigmas: Optional[list[float]] = None,
        denoising_end: Optional[float] = None,
        guidance_scale: float = 5.0,
        negative_prompt: Union[str, list[str], None] = None,
        negative_prompt_2: Union[str, list[str], None] = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Union[torch.Generator, list[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        negative_pooled_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[dict[str, Any]] = None,
        guidance_rescale: float = 0.0,
        original_size: Optional[tuple[int, int]] = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: Optional[tuple[int, int]] = None,
        negative_original_size: Optional[tuple[int, int]] = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: Optional[tuple[int, int]] = None,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        """Generate images with NPO-guided classifier-free guidance.

        The arguments are those of ``StableDiffusionXLPipeline.__call__`` (IP-Adapter inputs and the
        deprecated ``callback``/``callback_steps`` excepted) with one difference: ``guidance_scale`` is
        ``w`` in ``eps_neg + w (eps_pos - eps_neg)`` for every real value (default 5, the NPO SDXL
        setting). ``w == 1`` is the positive model alone (the negative model and prompt are not used),
        ``w == 0`` the negative model on ``c_neg`` alone. ``guidance_rescale`` rescales the guided
        prediction towards ``eps_pos``'s standard deviation whenever both branches run.

        Returns a ``StableDiffusionXLPipelineOutput`` (``images``), or ``(images,)`` when ``return_dict``
        is False.
        """
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        self.check_inputs(
            prompt,
            prompt_2,
            height,
            width,
            None,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        run_negative, run_positive = self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        self._denoising_end = denoising_end
        num_images = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
        device = self._execution_device

        # Prompt conditioning: c for the positive UNet, c_neg for the negative one (all zeros by default).
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=run_negative,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )

        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        latents = self._initial_latents(num_images, height, width, prompt_embeds.dtype, device, generator, latents)

        # SDXL micro-conditioning: (original size, crop top-left, target size) per branch.
        if self.text_encoder_2 is None:
            projection_dim = int(pooled_prompt_embeds.shape[-1])
        else:
            projection_dim = self.text_encoder_2.config.projection_dim

        def time_ids(original, crop, target):
            ids = self._get_add_time_ids(
                original, crop, target, dtype=prompt_embeds.dtype, text_encoder_projection_dim=projection_dim
            )
            return ids.to(device).repeat(num_images, 1)

        add_time_ids = time_ids(original_size, crops_coords_top_left, target_size)
        if negative_original_size is not None and negative_target_size is not None:
            negative_add_time_ids = time_ids(negative_original_size, negative_crops_coords_top_left, negative_target_size)
        else:
            negative_add_time_ids = add_time_ids

        if denoising_end is not None and 0 < denoising_end < 1:
            train_steps = self.scheduler.config.num_train_timesteps
            cutoff = int(round(train_steps - denoising_end * train_steps))
            timesteps = timesteps[: int((timesteps >= cutoff).sum())]

        # Each branch's UNet inputs at a step: c (which a callback may replace) and c_neg (fixed).
        def positive(tensors: dict) -> dict:
            added = {"text_embeds": tensors["add_text_embeds"].to(device), "time_ids": tensors["add_time_ids"]}
            return {"encoder_hidden_states": tensors["prompt_embeds"].to(device), "added_cond_kwargs": added}

        def negative(tensors: dict) -> dict:
            added = {"text_embeds": negative_pooled_prompt_embeds.to(device), "time_ids": negative_add_time_ids}
            return {"encoder_hidden_states": negative_prompt_embeds.to(device), "added_cond_kwargs": added}

        tensors = {
            "latents": latents,
            "prompt_embeds": prompt_embeds,
            "add_text_embeds": pooled_prompt_embeds,
            "add_time_ids": add_time_ids,
        }
        tensors = self._denoise(
            timesteps, tensors, positive, negative, generator, eta, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        latents = tensors["latents"]

        if output_type == "latent":
            image = latents
        else:
            image = self._decode(latents)
            if self.watermark is not None:
                image = self.watermark.apply_watermark(image)
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)
