"""Classifier-free guidance with a separate negative UNet (Diffusion-NPO / Self-NPO inference), SD1.x/2.x.

At every denoising step the guided noise prediction is

    eps = eps_neg(x_t, t, c_neg) + w * (eps_pos(x_t, t, c) - eps_neg(x_t, t, c_neg))

where ``eps_pos`` is the pipeline's ``unet`` on the prompt ``c`` and ``eps_neg`` is ``negative_unet``
on the negative prompt ``c_neg`` (the empty prompt unless ``negative_prompt`` is given). With no
negative UNet, ``eps_neg`` comes from ``unet`` itself and this is ordinary classifier-free guidance.

Source: Wang et al., "Diffusion-NPO: Negative Preference Optimization for Better Preference Aligned
Generation of Diffusion Models", ICLR 2025, and its follow-up Self-NPO; the reference implementation
is the pair of "double UNet" pipelines in github.com/G-U-N/Diffusion-NPO. The negative model is meant
to be a UNet trained towards what people dislike (NPO: DPO with the labels swapped; Self-NPO: trained
on the model's own anti-guided predictions), optionally moved onto another positive model with
``diffalign.pipelines.merge_negative_unet``.

How this implementation departs from the official double-UNet pipelines:

- every guidance scale works. The official pipelines only build the guided prediction for
  ``w > 1`` and fail otherwise; diffusers' own pipelines quietly switch guidance off for ``w <= 1``.
  Here ``w == 1`` runs the positive branch alone (bit-exact ``eps_pos``, the negative model is not
  called), ``w == 0`` runs the negative branch alone (``eps_neg``, unless ``guidance_rescale`` needs
  ``eps_pos``), and any other value, ``w < 1`` and ``w < 0`` included, follows the equation;
- the UNet input is ``scheduler.scale_model_input(x_t, t)`` for both branches. The official SD1.5
  pipeline gives the negative UNet the unscaled latents, which only goes unnoticed with schedulers
  whose scaling is the identity (DDIM, DPM-Solver) and is wrong for Euler-type schedulers;
- when the negative UNet is missing or is the very module used as ``unet``, both branches run as one
  batched forward on ``[c_neg; c]``, exactly as diffusers does, so the result equals
  ``StableDiffusionPipeline`` bit for bit for ``w > 1``. A distinct negative UNet needs two forwards.

Models with a guidance embedding (``unet.config.time_cond_proj_dim``, LCM-style distilled UNets) are
refused: they are not sampled with classifier-free guidance. IP-Adapter inputs are not supported.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput, StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg, retrieve_timesteps

__all__ = ["StableDiffusionNPOPipeline", "NPOGuidanceMixin"]


def _cat_conditions(first: dict, second: dict) -> dict:
    """UNet keyword inputs of two branches stacked along the batch: ``[first; second]`` (nested dicts too)."""
    return {
        key: _cat_conditions(value, second[key]) if isinstance(value, dict) else torch.cat([value, second[key]])
        for key, value in first.items()
    }


def _cast_conditions(conditions: dict, dtype: torch.dtype) -> dict:
    """Floating tensors of ``conditions`` in ``dtype`` (a no-op when they already are)."""
    return {
        key: _cast_conditions(value, dtype) if isinstance(value, dict)
        else value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value
        for key, value in conditions.items()
    }


class NPOGuidanceMixin:
    """What ``StableDiffusionNPOPipeline`` and ``StableDiffusionXLNPOPipeline`` share: which branches a
    guidance scale needs, one step's ``eps_neg + w (eps_pos - eps_neg)`` from ``unet`` and
    ``negative_unet``, and the model-independent steps of ``__call__`` (``_begin_call``, ``_batch_size``,
    ``_initial_latents``, the ``_denoise`` loop). Each pipeline's ``__call__`` does the rest: checking
    its inputs, encoding the prompts, building each branch's UNet inputs and decoding."""

    def __setattr__(self, name: str, value: Any) -> None:
        # diffusers keeps a component registered as None at (None, None) in model_index.json when it is
        # assigned later, so `pipe.negative_unet = unet; pipe.save_pretrained(...)` would drop it.
        # Registering it again records its class, and save_pretrained then writes negative_unet/.
        if name == "negative_unet" and value is not None and name in self.__dict__:
            recorded = self.config.get(name, (None, None))
            if isinstance(recorded, (tuple, list)) and recorded[0] is None:
                self.register_modules(negative_unet=value)
                return
        super().__setattr__(name, value)

    @property
    def shares_unet(self) -> bool:
        """Whether the negative branch uses ``unet`` itself (no ``negative_unet``, or the same module):
        the two branches then run as one batched forward, as in diffusers' pipelines."""
        negative = getattr(self, "negative_unet", None)
        return negative is None or negative is self.unet

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the negative branch is evaluated: every guidance scale but 1 (diffusers: only ``> 1``)."""
        return self._guidance_scale != 1

    @staticmethod
    def guidance_branches(guidance_scale: float, guidance_rescale: float = 0.0) -> tuple[bool, bool]:
        """``(run_negative, run_positive)`` for guidance scale ``w``: ``w == 1`` needs only the positive
        branch, ``w == 0`` only the negative one (unless ``guidance_rescale`` needs ``eps_pos``), any
        other ``w`` both."""
        if guidance_scale == 1:
            return False, True
        if guidance_scale == 0 and not guidance_rescale > 0:
            return True, False
        return True, True

    def _check_guidance_model(self) -> None:
        for name in ("unet", "negative_unet"):
            model = getattr(self, name, None)
            if model is not None and getattr(model.config, "time_cond_proj_dim", None) is not None:
                raise ValueError(
                    f"{name} has a guidance embedding (time_cond_proj_dim={model.config.time_cond_proj_dim}): "
                    "guidance-distilled models are not sampled with classifier-free guidance, so NPO guidance does not apply"
                )

    def _begin_call(
        self,
        guidance_scale: float,
        guidance_rescale: float,
        clip_skip: Optional[int],
        cross_attention_kwargs: Optional[dict],
    ) -> tuple[bool, bool]:
        """Start a ``__call__``: refuse guidance-distilled models, record the call's settings (where
        diffusers' properties and ``_denoise`` read them) and return ``(run_negative, run_positive)``,
        the branches ``guidance_branches`` says this guidance needs."""
        self._check_guidance_model()
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        self._guidance_branches = self.guidance_branches(guidance_scale, guidance_rescale)
        return self._guidance_branches

    @staticmethod
    def _batch_size(prompt: Union[str, list[str], None], prompt_embeds: Optional[torch.Tensor]) -> int:
        """Number of prompts: 1 for a string, the list's length, else ``prompt_embeds``' batch size."""
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list):
            return len(prompt)
        return prompt_embeds.shape[0]

    def _initial_latents(
        self,
        num_images: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator,
        latents: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """``x_T`` for ``num_images`` images with ``unet``'s channels (``prepare_latents``: given
        ``latents`` or fresh noise, scaled by the scheduler's ``init_noise_sigma``)."""
        channels = self.unet.config.in_channels
        return self.prepare_latents(num_images, channels, height, width, dtype, device, generator, latents)

    def _branch_noise(self, unet, model_input: torch.Tensor, t, conditions: dict, cross_attention_kwargs) -> torch.Tensor:
        dtype = unet.dtype
        prediction = unet(
            model_input.to(dtype),
            t,
            **_cast_conditions(conditions, dtype),
            cross_attention_kwargs=cross_attention_kwargs,
            return_dict=False,
        )[0]
        return prediction.to(model_input.dtype)

    def guided_noise(
        self,
        latents: torch.Tensor,
        t,
        positive: Optional[dict],
        negative: Optional[dict],
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        cross_attention_kwargs: Optional[dict] = None,
    ) -> torch.Tensor:
        """One step's guided noise prediction for the current latents ``x_t``.

        ``positive`` / ``negative``: the UNet keyword inputs of each branch (``encoder_hidden_states``,
        SDXL's ``added_cond_kwargs``), None for a branch that is not evaluated (see
        ``guidance_branches``). The model input is ``scheduler.scale_model_input(x_t, t)`` for both.
        """
        model_input = self.scheduler.scale_model_input(latents, t)
        if negative is None:
            return self._branch_noise(self.unet, model_input, t, positive, cross_attention_kwargs)
        if positive is None:
            negative_unet = self.unet if self.shares_unet else self.negative_unet
            return self._branch_noise(negative_unet, model_input, t, negative, cross_attention_kwargs)
        if self.shares_unet:
            # one forward on [c_neg; c], as diffusers' pipelines do (bit-identical results)
            both = self._branch_noise(
                self.unet, torch.cat([model_input, model_input]), t, _cat_conditions(negative, positive), cross_attention_kwargs
            )
            noise_negative, noise_positive = both.chunk(2)
        else:
            noise_negative = self._branch_noise(self.negative_unet, model_input, t, negative, cross_attention_kwargs)
            noise_positive = self._branch_noise(self.unet, model_input, t, positive, cross_attention_kwargs)
        noise = noise_negative + guidance_scale * (noise_positive - noise_negative)
        if guidance_rescale > 0:
            noise = rescale_noise_cfg(noise, noise_positive, guidance_rescale=guidance_rescale)
        return noise

    def _run_step_callback(self, callback_on_step_end, step: int, t, tensors: dict, names: Sequence[str]) -> dict:
        """``callback_on_step_end(self, step, t, {name: tensor})``; returns the tensors it replaced."""
        if callback_on_step_end is None:
            return {}
        outputs = callback_on_step_end(self, step, t, {name: tensors[name] for name in names})
        return dict(outputs or {})

    def _denoise(
        self,
        timesteps,
        tensors: dict,
        positive: Callable[[dict], dict],
        negative: Callable[[dict], dict],
        generator,
        eta: float,
        callback_on_step_end: Optional[Callable],
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> dict:
        """The denoising loop: one ``guided_noise`` and one scheduler step (``generator``, ``eta``: its
        extra arguments where it takes them) per timestep, with the guidance ``_begin_call`` recorded.

        ``tensors``: the tensors ``callback_on_step_end`` may read and replace, under diffusers' names,
        starting with ``"latents"`` (``x_T``). ``positive`` / ``negative`` build a branch's UNet keyword
        inputs for a step from the current ``tensors`` (so a callback's replacements count from the next
        step on); each is called only when its branch is evaluated. Returns ``tensors`` after the last
        step (a new dict; ``"latents"`` holds the final latents).
        """
        run_negative, run_positive = self._guidance_branches
        scale, rescale, attention_kwargs = self._guidance_scale, self._guidance_rescale, self._cross_attention_kwargs
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        tensors = dict(tensors)
        self._num_timesteps = len(timesteps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for step, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latents = tensors["latents"]
                noise = self.guided_noise(
                    latents,
                    t,
                    positive(tensors) if run_positive else None,
                    negative(tensors) if run_negative else None,
                    scale,
                    rescale,
                    attention_kwargs,
                )
                tensors["latents"] = self.scheduler.step(noise, t, latents, **extra_step_kwargs, return_dict=False)[0]
                replaced = self._run_step_callback(
                    callback_on_step_end, step, t, tensors, callback_on_step_end_tensor_inputs
                )
                tensors.update((name, value) for name, value in replaced.items() if name in tensors)
                progress_bar.update()
        return tensors


class StableDiffusionNPOPipeline(NPOGuidanceMixin, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` whose classifier-free guidance takes its negative branch from a second
    UNet: ``eps = eps_neg(x, t, c_neg) + w (eps_pos(x, t, c) - eps_neg(x, t, c_neg))`` (module docstring).

    ``negative_unet``: an optional ``UNet2DConditionModel`` with the same input/output and conditioning
    as ``unet``. It is a regular pipeline component: ``save_pretrained`` writes it to ``negative_unet/``
    and ``from_pretrained`` loads it back; ``from_pretrained(folder, negative_unet=unet)`` puts a
    separately trained negative next to any SD pipeline folder or hub id, and
    ``StableDiffusionNPOPipeline.from_pipe(pipe, negative_unet=unet)`` reuses a loaded pipeline's
    components. Without it the pipeline is plain classifier-free guidance, valid for every ``w``.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->negative_unet->vae"
    _optional_components = list(StableDiffusionPipeline._optional_components) + ["negative_unet"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: Optional[StableDiffusionSafetyChecker] = None,
        feature_extractor: Optional[CLIPImageProcessor] = None,
        image_encoder: Optional[CLIPVisionModelWithProjection] = None,
        requires_safety_checker: bool = True,
        negative_unet: Optional[UNet2DConditionModel] = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self.register_modules(negative_unet=negative_unet)

    def _default_size(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else (size[0], size[1])
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, list[str], None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        timesteps: Optional[list[int]] = None,
        sigmas: Optional[list[float]] = None,
        guidance_scale: float = 7.5,
        negative_prompt: Union[str, list[str], None] = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Union[torch.Generator, list[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[dict[str, Any]] = None,
        guidance_rescale: float = 0.0,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        """Generate images with NPO-guided classifier-free guidance.

        The arguments are those of ``StableDiffusionPipeline.__call__`` (IP-Adapter inputs and the
        deprecated ``callback``/``callback_steps`` excepted) with one difference: ``guidance_scale`` is
        ``w`` in ``eps_neg + w (eps_pos - eps_neg)`` for every real value. ``w == 1`` is the positive model
        alone (the negative model and prompt are not used), ``w == 0`` the negative model on the negative
        prompt alone. ``negative_prompt`` (default: the empty prompt) is ``c_neg``, the negative model's
        conditioning. ``guidance_rescale`` (Lin et al. 2023) rescales the guided prediction towards
        ``eps_pos``'s standard deviation whenever both branches run.

        Returns a ``StableDiffusionPipelineOutput`` (``images``, ``nsfw_content_detected``), or the tuple
        ``(images, nsfw_content_detected)`` when ``return_dict`` is False.
        """
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        if height is None or width is None:
            default_height, default_width = self._default_size()
            height, width = height or default_height, width or default_width
        self.check_inputs(
            prompt,
            height,
            width,
            None,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        run_negative, run_positive = self._begin_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        num_images = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
        device = self._execution_device

        # Prompt conditioning: c for the positive UNet, c_neg (negative prompt, default "") for the negative one.
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            run_negative,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )

        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        latents = self._initial_latents(num_images, height, width, prompt_embeds.dtype, device, generator, latents)

        def positive(tensors: dict) -> dict:
            return {"encoder_hidden_states": tensors["prompt_embeds"]}

        def negative(tensors: dict) -> dict:
            return {"encoder_hidden_states": tensors["negative_prompt_embeds"]}

        tensors = {"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
        tensors = self._denoise(
            timesteps, tensors, positive, negative, generator, eta, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        latents, prompt_embeds = tensors["latents"], tensors["prompt_embeds"]

        has_nsfw_concept = None
        if output_type == "latent":
            image = latents
        else:
            latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            image = self.vae.decode(latents, return_dict=False, generator=generator)[0]
            image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
        denormalize = [True] * image.shape[0] if has_nsfw_concept is None else [not flagged for flagged in has_nsfw_concept]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        self.maybe_free_model_hooks()

        if not return_dict:
            return image, has_nsfw_concept
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw_concept)
