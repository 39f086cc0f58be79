"""The toy model preset: a tiny Stable-Diffusion-1.x-like pipeline sized for the toy world.

A real diffusers ``StableDiffusionPipeline`` (save / load with ``save_pretrained`` /
``from_pretrained``), so every code path that serves SD1.5 serves it too:

- tokenizer: a ``CLIPTokenizer`` whose BPE is trained on the toy grammar's captions
  (``tiny.small_clip_tokenizer``), ~660 tokens, ``model_max_length`` 16 (captions take <= 13);
- text encoder: ``CLIPTextModel``, 2 layers, width 32;
- VAE: ``AutoencoderKL`` with blocks (16, 32, 32) (downsampling 4x): 32x32 RGB <-> 4x8x8 latents;
- UNet: ``UNet2DConditionModel`` on 8x8 latents, blocks (32, 64), cross-attention to the text
  encoder's last hidden states, 2 heads (diffusers' ``attention_head_dim``);
- scheduler: SD's DDIM schedule (scaled_linear 0.00085 -> 0.012, T = 1000) rescaled to zero
  terminal SNR, with v-prediction and trailing timestep spacing (``toy_scheduler``).

The pretrained weights (``diffalign toy pretrain``, recipe in ``diffalign.toy.pretrain``) ship in
``diffalign/toy/assets/toy-sd`` (~5 MB of float32 safetensors). ``SAMPLING`` fixes how the toy world
samples for generation and evaluation alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from diffalign.errors import ModelNotFoundError
from diffalign.toy import world
from diffalign.tiny import small_clip_tokenizer, tiny_scheduler, tiny_text_encoder, tiny_unet

TOY_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "toy-sd"
MAX_TOKENS = 16
TOKENIZER_VOCAB = 400  # BPE training target (alphabet included); every grammar word ends up one token
SAMPLING = {"num_inference_steps": 20, "guidance_scale": 3.0, "eta": 0.0}


def toy_tokenizer():
    """The toy world's offline ``CLIPTokenizer`` (deterministic: BPE trained on the full grammar)."""
    tokenizer = small_clip_tokenizer(world.all_captions(), vocab_size=TOKENIZER_VOCAB)
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def toy_vae():
    """``AutoencoderKL`` with blocks (16, 32, 32): 4x downsampling, narrow at full resolution (the cost)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        latent_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32, 32),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=world.RESOLUTION,
    )


def toy_scheduler():
    """SD's scaled_linear betas rescaled to zero terminal SNR, v-prediction, "trailing" DDIM spacing.

    Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"): with SD's
    schedule the last training step still leaks ~7 % of the latent, so a model never learns to set
    an image's global colour from pure noise and samples drift to mid-grey. The toy world's
    full-frame white / black / grey backgrounds are exactly that case (the epsilon-prediction preset
    gave grey, textured backgrounds). The paper's fix, as diffusers implements it
    (``rescale_betas_zero_snr``, ``v_prediction``, ``timestep_spacing="trailing"``), is SD2.x-v-like
    and loads through the same ``StableDiffusionPipeline`` and ``DDPMScheduler`` code paths.
    """
    return tiny_scheduler("v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")


def build_toy_pipeline(seed: int = 0):
    """The preset with random weights (deterministic under ``seed``); ``pretrain`` trains it."""
    from diffusers import StableDiffusionPipeline

    tokenizer = toy_tokenizer()
    torch.manual_seed(seed)
    vae = toy_vae()
    text_encoder = tiny_text_encoder(len(tokenizer), hidden_size=32)
    unet = tiny_unet("sd", sample_size=world.RESOLUTION // 4, cross_attention_dim=32, block_out_channels=(32, 64), attention_head_dim=2)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=toy_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_toy_pipeline(path: str | Path | None = None):
    """The pretrained preset (``TOY_MODEL_DIR`` by default) or any pipeline folder, float32 on CPU."""
    from diffusers import StableDiffusionPipeline

    path = Path(path) if path is not None else TOY_MODEL_DIR
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"no diffusers pipeline at {path} (model_index.json missing); rebuild the toy preset with "
            f"`diffalign toy pretrain --output {TOY_MODEL_DIR}`"
        )
    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)  # float32 as saved
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "generate",
    **sampling,
) -> list[Image.Image]:
    """One image per (prompt, seed), with the preset's ``SAMPLING`` unless overridden.

    Each image has its own ``torch.Generator`` seeded with its seed, so an image depends only on
    (model, prompt, seed), not on how the prompts are batched: base and aligned models asked for the
    same (prompt, seed) start from the same initial noise.
    """
    from tqdm.auto import tqdm

    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    options = {**SAMPLING, **sampling}
    pipe.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, unit="batch"):
        batch_prompts = list(prompts[start : start + batch_size])
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        out = pipe(
            batch_prompts,
            generator=generators,
            height=world.RESOLUTION,
            width=world.RESOLUTION,
            output_type="pil",
            **options,
        )
        images.extend(out.images)
    return images
