"""diffalign's pretraining recipe for the toy preset (``diffalign toy pretrain``).

The goal is a *partially right* base model: the VAE reconstructs toy images almost perfectly
(PSNR ~35 dB), and the UNet + text encoder have learnt caption-conditioned generation well enough
that most samples are a recognisable coloured shape, but not so well that every attribute is right
every time, which leaves room for preference alignment to show measured gains.

Recipe (all randomness from ``PretrainConfig.seed``; the same seed, torch build and thread count
reproduce the weights bit for bit):

1. **Data**: the *training* captions of ``world.split_prompts()`` only (the held-out captions, on
   which the demo evaluates, are never seen), ``images_per_caption`` renders each with seeds
   0..n-1, as float tensors in [-1, 1].
2. **VAE** (``vae_steps``, batch ``vae_batch``, AdamW ``vae_lr`` with cosine decay): reconstruction
   MSE (mean over pixels) on a posterior sample plus ``kl_weight`` x KL to N(0, I) (summed over
   latent elements). SD's KL-f8 weighs the KL 1e-6 against a *summed* reconstruction loss; against
   our per-pixel mean that is ~1e-9. A larger weight (1e-5 was tried) keeps posterior noise high
   (std ~0.55) and the decoder learns to average: washed-out colours, PSNR ~22 dB. Steps matter as
   much: after 1,200 steps (28 dB) the decoder rounded squares' corners and filled triangles' (the
   judge's shape term on reconstructed renders: squares 0.30, triangles 0.06), a ceiling no
   alignment could lift; 4,000 steps give 35 dB (0.73, 0.65).
3. **Latent scale**: ``vae.config.scaling_factor`` = 1 / std of the posterior means over the data
   (SD1.x's 0.18215 was computed the same way), so scaled latents have unit variance.
4. **UNet + text encoder** (``unet_steps``, batch ``unet_batch``, AdamW ``unet_lr``, linear warmup then
   cosine decay, grad-norm clip 1): the standard denoising loss (v-prediction target
   sqrt(a) eps - sqrt(1 - a) x0, as the preset's scheduler declares) on cached posterior samples,
   timesteps uniform over the 1000-step zero-terminal-SNR schedule (``preset.toy_scheduler``), captions
   replaced by "" with probability ``caption_dropout`` so classifier-free guidance works.
5. **Export**: a ``StableDiffusionPipeline`` folder (safetensors) with the DDIM scheduler.

``unet_steps`` is the knob of "partially right": fewer steps, weaker prompt adherence. With 5,000
steps the base model scores 0.830 on the demo's held-out prompts (renders score ~0.95) and 0.866 on
the validation prompts that 256 training prompts leave, where 3,000 steps scored 0.841 and left
the demo's Diffusion-DPO run (256 prompts, candidates at guidance 3) a validation win rate of 0.565
instead of 0.687.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffalign.diffusion.noising import add_noise, velocity
from diffalign.toy import world
from diffalign.toy.preset import build_toy_pipeline


@dataclass
class PretrainConfig:
    seed: int = 0
    images_per_caption: int = 8
    vae_steps: int = 4000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-8
    unet_steps: int = 5000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_warmup: int = 100
    caption_dropout: float = 0.1
    max_captions: int | None = None  # only the first N training captions (quick tests); None = all
    threads: int = 1  # torch.set_num_threads: fixed for bitwise reproducibility; 1 is also the fastest on a shared machine


def _cosine(step: int, total: int, warmup: int = 0) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def render_dataset(captions: list[str], images_per_caption: int) -> tuple[list[str], torch.Tensor]:
    """Every caption rendered with seeds 0..n-1: (captions repeated, images (N, 3, H, W) in [-1, 1])."""
    names, arrays = [], []
    for caption in captions:
        for seed in range(images_per_caption):
            names.append(caption)
            arrays.append(np.asarray(world.render(caption, seed), dtype=np.float32))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return names, images


def train_vae(vae, images: torch.Tensor, config: PretrainConfig, generator: torch.Generator) -> list[float]:
    """Stage 2: reconstruction + small KL; returns the loss per step."""
    from tqdm.auto import tqdm

    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, config.vae_steps))
    losses = []
    for _ in (bar := tqdm(range(config.vae_steps), desc="pretrain vae", unit="step")):
        batch = images[torch.randint(len(images), (config.vae_batch,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, batch) + config.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval()
    return losses


@torch.no_grad()
def encode_dataset(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds of every image."""
    means, stds = [], []
    for start in range(0, len(images), batch):
        posterior = vae.encode(images[start : start + batch]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_denoiser(pipe, captions: list[str], means: torch.Tensor, stds: torch.Tensor, config: PretrainConfig, generator: torch.Generator) -> list[float]:
    """Stage 4: the scheduler's prediction target on scaled latents, UNet and text encoder trained jointly."""
    from tqdm.auto import tqdm

    unet, text_encoder, tokenizer, scheduler = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    scale = pipe.vae.config.scaling_factor
    unique = sorted(set(captions)) + [""]
    index_of = {caption: i for i, caption in enumerate(unique)}
    token_ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    caption_index = torch.tensor([index_of[c] for c in captions])
    empty = index_of[""]

    unet.train()
    text_encoder.train()
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, config.unet_steps, config.unet_warmup))
    alphas_cumprod = scheduler.alphas_cumprod
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    losses = []
    for _ in (bar := tqdm(range(config.unet_steps), desc="pretrain unet+text", unit="step")):
        rows = torch.randint(len(means), (config.unet_batch,), generator=generator)
        latents = (means[rows] + stds[rows] * torch.randn(means[rows].shape, generator=generator)) * scale
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.unet_batch,), generator=generator)
        noisy = add_noise(latents, noise, timesteps, alphas_cumprod)
        drop = torch.rand(config.unet_batch, generator=generator) < config.caption_dropout
        ids = token_ids[torch.where(drop, torch.full_like(rows, empty), caption_index[rows])]
        hidden = text_encoder(ids)[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        target = velocity(latents, noise, timesteps, alphas_cumprod) if v_prediction else noise
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    unet.eval()
    text_encoder.eval()
    return losses


def pretrain(output_dir: str | Path, config: PretrainConfig | None = None) -> dict:
    """Run the recipe, save the pipeline to ``output_dir`` and return a summary (also ``pretrain.json``)."""
    config = config or PretrainConfig()
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    generator = torch.Generator("cpu").manual_seed(config.seed)
    pipe = build_toy_pipeline(seed=config.seed)

    train_captions, _ = world.split_prompts()
    train_captions = train_captions[: config.max_captions] if config.max_captions else train_captions
    captions, images = render_dataset(train_captions, config.images_per_caption)

    vae_losses = train_vae(pipe.vae, images, config, generator)
    means, stds = encode_dataset(pipe.vae, images)
    scaling_factor = float(1.0 / means.std())
    pipe.vae.register_to_config(scaling_factor=scaling_factor)
    with torch.no_grad():
        reconstruction = torch.cat([pipe.vae.decode(means[i : i + 256]).sample for i in range(0, len(means), 256)])
    psnr = float(10 * torch.log10(4.0 / F.mse_loss(reconstruction.clamp(-1, 1), images)))
    print(f"vae: reconstruction PSNR {psnr:.2f} dB, posterior std {float(stds.mean()):.3f}, scaling factor {scaling_factor:.4f}", flush=True)

    unet_losses = train_denoiser(pipe, captions, means, stds, config, generator)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(output_dir), safe_serialization=True)
    size = sum(f.stat().st_size for f in output_dir.rglob("*") if f.is_file())
    summary = {
        "config": asdict(config),
        "train_captions": len(train_captions),
        "images": len(images),
        "vae_final_loss": float(np.mean(vae_losses[-50:])),
        "vae_psnr_db": psnr,
        "scaling_factor": scaling_factor,
        "unet_final_loss": float(np.mean(unet_losses[-100:])),
        "seconds": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
        "size_bytes": size,
    }
    (output_dir / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
