"""Tiny models built from configs with random weights, fully offline: for tests, benchmarks and the toy world.

Diffusion: real diffusers pipelines (``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` /
``StableDiffusion3Pipeline``) with the same components and config keys as SD1.x, SDXL and SD3.5, only narrower, so the loading, training and export
code paths that serve real checkpoints are the ones exercised (research/packaging.md §2-§3). The
tokenizer is a real ``CLIPTokenizer``: either the full OpenAI-CLIP vocabulary derived from the BPE
file that open_clip ships (token ids identical to CLIP's), or a small BPE trained on a given corpus,
which keeps the text embedding table tiny. SD3's T5 tokenizer is a ``T5TokenizerFast`` over a small
Unigram model trained the same way (no sentencepiece file needed).

Text: a byte-level BPE trained with ``tokenizers`` on the given corpus, wrapped as a
``PreTrainedTokenizerFast`` with ChatML-style special tokens and chat template, and a
``LlamaForCausalLM`` from a narrow config; ``save_tiny_lm`` writes a folder that
``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` (and ``diffalign train --model``) load.

This module imports nothing from diffalign, so every layer (tests, toy world, benchmarks) can use it.
"""

from __future__ import annotations

import gzip
import os
from typing import Iterable, Literal

import torch

Family = Literal["sd", "sdxl", "sd3", "flux"]

CLIP_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clip_tokenizer_from_open_clip():
    """The OpenAI CLIP tokenizer (49408 tokens), rebuilt offline from open_clip's bundled BPE merges."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe_path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe_path) as bpe_file:
        lines = bpe_file.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_tokens = list(_bytes_to_unicode().values())
    vocab = byte_tokens + [token + "</w>" for token in byte_tokens]
    vocab += ["".join(merge.split()) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(vocab)},
        merges=[tuple(merge.split()) for merge in merges],
        model_max_length=CLIP_MAX_LENGTH,
    )


def small_clip_tokenizer(corpus: Iterable[str], vocab_size: int = 400):
    """A ``CLIPTokenizer`` whose BPE is trained on ``corpus`` (CLIP's pre-tokenisation and ``</w>`` suffix)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    byte_alphabet = list(_bytes_to_unicode().values())
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=byte_alphabet, end_of_word_suffix="</w>", show_progress=False
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    trained = tokenizer.get_vocab()
    vocab = byte_alphabet + [token + "</w>" for token in byte_alphabet]
    vocab += sorted((t for t in trained if t not in set(vocab)), key=trained.get)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    merges = [tuple(m) if isinstance(m, (tuple, list)) else tuple(m.split()) for m in _merges_of(tokenizer)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def _merges_of(tokenizer) -> list:
    import json

    return json.loads(tokenizer.to_str())["model"]["merges"]


def tiny_unet(family: Family = "sd", sample_size: int = 8, cross_attention_dim: int = 32, latent_channels: int = 4, block_out_channels=(32, 64), pooled_dim: int = 32, attention_head_dim: int = 8):
    """A tiny ``UNet2DConditionModel``; ``latent_channels`` is its input and output channel count (the VAE's
    latent channels); ``attention_head_dim`` is diffusers' legacy name for the number of heads."""
    from diffusers import UNet2DConditionModel

    kwargs = dict(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(block_out_channels) - 1),
        up_block_types=("UpBlock2D",) * (len(block_out_channels) - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=min(32, block_out_channels[0]),
    )
    if family == "sdxl":
        kwargs.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + pooled_dim,
            use_linear_projection=True,
            transformer_layers_per_block=(1,) * len(block_out_channels),
        )
    return UNet2DConditionModel(**kwargs)


def tiny_vae(downsample_blocks: int = 3, width: int = 32, latent_channels: int = 4, **overrides):
    """A tiny ``AutoencoderKL``; ``downsample_blocks`` + 1 blocks give a 2**downsample_blocks scale factor;
    ``overrides``: further config keys (SD3's ``scaling_factor``, ``shift_factor``, ...)."""
    from diffusers import AutoencoderKL

    blocks = downsample_blocks + 1
    return AutoencoderKL(
        latent_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=(width,) * blocks,
        norm_num_groups=min(32, width),
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        sample_size=8 * 2**downsample_blocks,
        **overrides,
    )


def tiny_text_encoder(vocab_size: int, hidden_size: int = 32, with_projection: bool = False, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_scheduler(prediction_type: str = "epsilon", **overrides):
    """The SD1.5 / SDXL training schedule (scaled_linear 0.00085 -> 0.012, T = 1000) as a DDIM scheduler;
    ``overrides`` are further ``DDIMScheduler`` options."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
        **overrides,
    )


def tiny_t5_tokenizer(corpus: Iterable[str], vocab_size: int = 200):
    """A ``T5TokenizerFast`` (``<pad>`` = 0, ``</s>`` = 1 appended, ``<unk>`` = 2) over a Unigram model
    trained on ``corpus`` with T5's Metaspace pre-tokenisation."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def tiny_t5_encoder(vocab_size: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=2 * d_model, d_kv=8, num_layers=1,
                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def tiny_sd3_transformer(sample_size: int = 8, latent_channels: int = 16, joint_attention_dim: int = 32,
                         pooled_projection_dim: int = 32):
    """A tiny ``SD3Transformer2DModel`` (patch 2, two joint blocks, SD3.5's qk RMS norm)."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=sample_size, patch_size=2, in_channels=latent_channels, num_layers=2,
                                 attention_head_dim=8, num_attention_heads=4, joint_attention_dim=joint_attention_dim,
                                 caption_projection_dim=32, pooled_projection_dim=pooled_projection_dim,
                                 out_channels=latent_channels, pos_embed_max_size=16, qk_norm="rms_norm")


def tiny_flux_transformer(latent_channels: int = 16, joint_attention_dim: int = 32, pooled_projection_dim: int = 32):
    """A tiny ``FluxTransformer2DModel`` on packed latents (4 x ``latent_channels`` features), one double and
    one single block, with FLUX.1-dev's guidance embedding."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=joint_attention_dim,
                                  pooled_projection_dim=pooled_projection_dim, guidance_embeds=True, axes_dims_rope=(4, 4, 8))


def build_tiny_pipeline(
    family: Family = "sd",
    prediction_type: str = "epsilon",
    tokenizer=None,
    latent_size: int = 8,
    seed: int = 0,
):
    """A tiny SD1.x-like or SDXL-like pipeline with random weights (deterministic under ``seed``).

    Images are ``latent_size * 8`` pixels square (the VAE downsamples by 8, as SD's does).
    SD3-like (``family="sd3"``, ``prediction_type`` unused): two CLIP encoders with projections (16 wide
    each, concatenated: 32 = the tiny T5's width = the transformer's joint attention width; pooled 16 +
    16), a VAE with 16 latent channels and SD3's scaling and shift factors, the flow-matching scheduler
    with SD3's shift 3. FLUX-like (``family="flux"``): a CLIP encoder (32 wide: its pooled output is the
    transformer's pooled projection) and a tiny T5 (32 = the joint attention width), a VAE with 16 latent
    channels and FLUX's scaling and shift factors, the flow-matching scheduler with FLUX's dynamic shift.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    tokenizer = tokenizer if tokenizer is not None else small_clip_tokenizer(_DEFAULT_CORPUS)
    vocab_size = len(tokenizer)
    if family == "sd3":
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        t5_tokenizer = tiny_t5_tokenizer(_DEFAULT_CORPUS)
        return StableDiffusion3Pipeline(
            transformer=tiny_sd3_transformer(sample_size=latent_size),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=tiny_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                         use_post_quant_conv=False),
            text_encoder=tiny_text_encoder(vocab_size, hidden_size=16, with_projection=True, projection_dim=16),
            tokenizer=tokenizer,
            text_encoder_2=tiny_text_encoder(vocab_size, hidden_size=16, with_projection=True, projection_dim=16),
            tokenizer_2=tokenizer,
            text_encoder_3=tiny_t5_encoder(len(t5_tokenizer)),
            tokenizer_3=t5_tokenizer,
        )
    vae = tiny_vae()
    scheduler = tiny_scheduler(prediction_type)
    if family == "sd":
        unet = tiny_unet("sd", sample_size=latent_size, cross_attention_dim=32)
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=tiny_text_encoder(vocab_size),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        # penultimate hidden states of both encoders are concatenated: 32 + 32 = 64 = cross_attention_dim
        unet = tiny_unet("sdxl", sample_size=latent_size, cross_attention_dim=64, pooled_dim=32)
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=tiny_text_encoder(vocab_size),
            text_encoder_2=tiny_text_encoder(vocab_size, with_projection=True, projection_dim=32),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    if family == "flux":
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        t5_tokenizer = tiny_t5_tokenizer(_DEFAULT_CORPUS)
        return FluxPipeline(
            transformer=tiny_flux_transformer(),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                      base_image_seq_len=256, max_image_seq_len=4096),
            vae=tiny_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                         use_post_quant_conv=False),
            text_encoder=tiny_text_encoder(vocab_size),
            tokenizer=tokenizer,
            text_encoder_2=tiny_t5_encoder(len(t5_tokenizer)),
            tokenizer_2=t5_tokenizer,
        )
    raise ValueError(f"family must be 'sd', 'sdxl', 'sd3' or 'flux', got {family!r}")


_DEFAULT_CORPUS = [
    "a red circle on a blue background",
    "a photo of a cat sitting on a green sofa",
    "a small yellow square at the top left",
    "a large purple triangle in the center",
    "an astronaut corgi riding a horse on the moon",
]


def build_sd_proportioned_pipeline(seed: int = 0, tokenizer=None):
    """An SD1.5-proportioned ``StableDiffusionPipeline`` with random weights, for CPU cost benchmarks.

    Same components and config keys as SD1.5 (4 UNet levels, 2 layers per block, cross-attention in
    the top three levels, 8 heads; VAE with 4 levels of 2 ResNet layers, latents 4 channels / 8x
    downsampling, scaling factor 0.18215; a CLIP text transformer with quick_gelu and head size 64;
    epsilon prediction on the SD training schedule), scaled so that the cost split between the parts
    is about SD1.5's at 512 px, but at 256 px images (32x32 latents):

    - UNet: channels (48, 96, 192, 192) = SD's (320, 640, 1280, 1280) x 0.15, cross-attention dim
      256, 19.9 M parameters (SD1.5: 860 M);
    - VAE: channels (16, 32, 64, 64) = SD's (128, 256, 512, 512) / 8, 0.5 M encoder parameters;
    - text encoder: hidden 256, 4 layers, 4 heads, MLP 1024 (SD1.5's CLIP ViT-L/14 text model: 768,
      12 layers, 12 heads, 3072); the tokenizer is ``small_clip_tokenizer`` unless one is given (the
      full CLIP vocabulary via ``clip_tokenizer_from_open_clip`` only grows the embedding table).

    Measured forward costs at batch 2 on one CPU thread (torch 2.13, median of interleaved calls):
    VAE encoder at 256 px ~= 0.6 x one UNet forward (0.50-0.65 over six runs on a 2-core VM; SD1.5 at
    512 px: ~0.6), text encoder (77 tokens) ~= 0.045 x one UNet forward; one UNet forward 0.35-0.40 s.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tokenizer if tokenizer is not None else small_clip_tokenizer(_DEFAULT_CORPUS)
    vocab_size = len(tokenizer)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(48, 96, 192, 192),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=256,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=16,
        sample_size=256,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=256,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    ))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=tiny_scheduler("epsilon"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# ------------------------------------------------------------------------------ text LMs
LM_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LM_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=LM_CHAT_TEMPLATE)


def tiny_lm(vocab_size: int, hidden_size: int = 32, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_lm(path: str, corpus: Iterable[str], hidden_size: int = 32, layers: int = 2, seed: int = 0) -> str:
    tokenizer = tiny_tokenizer(corpus)
    model = tiny_lm(len(tokenizer), hidden_size, layers, seed)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
