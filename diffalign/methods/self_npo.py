"""Self-NPO: a negative model from the model's own truncated, anti-guided samples, no preference data.

Wang et al. 2025, "Self-NPO: Negative Preference Optimization of Diffusion Models by Simply Learning
from Itself without Explicit Preference Annotations" (arXiv 2505.11777; v2 "Data-Free Diffusion Model
Enhancement via Truncated Diffusion Fine-Tuning"); official code github.com/G-U-N/Self-NPO
(``train.py`` SD1.5, ``train_xl.py`` SDXL). Equations and constants: research/diffusion_methods_B.md §2.

Per prompt c (the policy theta is the student, the reference an EMA teacher theta_bar of it):

1. start: k ~ U{1..N}, t_s = tau_k on the grid tau_k = (T/N) k - 1 (N = 25: {39, ..., 999});
   y = sqrt(abar_{t_s}) z0 + sqrt(1 - abar_{t_s}) eps from a latent z0 (see "Seeding");
2. K = 5 DDIM steps of T/N down the grid with the teacher, guided in the LCM convention
   ``x_g = x_c + w (x_c - x_null)``, ``eps_g = eps_c + w (eps_c - eps_null)`` (x: the x0 predictions;
   null: the empty prompt, zeros for SDXL), w = -1 for SD1.x (the unconditional prediction; the
   conditional forward is skipped) and -5 for SDXL (anti-guidance); a sixth teacher evaluation at the
   end point t' = max(t_s - K T/N, 0) gives the target x* = x_g;
3. re-noise with the exact forward kernel to s ~ U{t'+1..T-1}: x_s ~ q(x_s | y_K);
4. L = mean over elements of sqrt((x0_theta(x_s, s, c) - sg(x*))^2 + delta^2) - delta (pseudo-Huber,
   delta = 1e-3; ``loss_type=l2``: the squared error), x0_theta from the student's epsilon or v;
5. after every optimiser step theta_bar <- 0.999 theta_bar + 0.001 theta (``after_optimizer_step``).

The student learns to denoise what the anti-guided teacher produces from t', a weaker model; the
exported student is the negative model for NPO-guided classifier-free guidance
(``diffalign.pipelines``, ``diffalign generate --negative-model``).

Seeding (``seed_from``). The official code forward-noises real image latents (``images``: the
``prompts`` format's ``image`` field). Without images, ``auto`` uses ``samples``: the teacher draws
its own x_{t_s} by DDIM from pure noise at T-1 down the same grid to t_s, guided with
``sample_guidance`` (diffusers convention; default 1, the model's own unguided samples: the weak
generations a negative model should learn, at one forward per row and step). This keeps every start
level of the grid, at about N - k extra teacher steps per example. ``noise`` starts at t_s = T-1 from
pure noise (no extra cost), but then t' = T-1 - K T/N (799 for SD) and only s > t' is ever trained.
``samples`` with guidance 1 is the default for prompt-only data because it keeps the official start
distribution over the whole grid; on the toy world's validation prompts it was the best of the
three (``noise`` fell far below the base; guided samples at 3.0 did worse than unguided ones: README).

Differences from the official code, on purpose: the teacher's sixth evaluation always runs (the
official loop skips it when every sample of a batch ran off the grid early, t_s <= 199, and then
regresses onto the previous point's prediction); any batch size works (the official null embedding
batch is the training batch size); v-prediction models are supported (x0 = sqrt(abar) x - sqrt(1 -
abar) v, eps = sqrt(abar) v + sqrt(1 - abar) x); the EMA teacher is float32 and saved in checkpoints.
The official recipe: full fine-tuning (``--lora-rank 0``; LoRA also works, the teacher then averages
the adapters), ``--learning-rate 1e-6`` (SDXL 1e-7), weight decay 1e-3 (SDXL 0), constant schedule,
gradient clip 1.0, batch 20 (SDXL 10), 1000 steps, no caption dropout.

Randomness, from the step's generator after the encode step: the start indices k (B; not for
``noise``), the start noise (B latents), then the re-noising levels s (B uniforms) and noise z (B latents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from diffalign.diffusion import Conditioning, denoising_errors, pseudo_huber_errors
from diffalign.diffusion.noising import sample_noise
from diffalign.diffusion.truncated import ddim_grid, ddim_step, previous_timesteps, renoise
from diffalign.errors import UsageError
from diffalign.methods.base import MethodConfig, register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP, DenoisingMethod
from diffalign.objectives import ObjectiveOutput
from diffalign.options import OptionError, option

OFFICIAL_TEACHER_GUIDANCE = {"sd": -1.0, "sdxl": -5.0}
SEED_SOURCES = ("auto", "images", "noise", "samples")


@dataclass
class SelfNPOConfig(MethodConfig):
    teacher_guidance: Optional[float] = option(
        "teacher guidance w in the LCM convention x_c + w (x_c - x_null) (official: -1 for SD1.x, i.e. the "
        "unconditional prediction, and -5 for SDXL; default: the model family's)", default=None)
    grid_steps: int = option("DDIM grid size N over the training timesteps (official 25: steps of 40)", default=25, ge=2)
    truncated_steps: int = option("teacher DDIM steps K from the start point (official 5)", default=5, ge=1)
    loss_type: str = option("regression loss in x0 space (official: pseudo_huber)", default="pseudo_huber",
                            choices=("pseudo_huber", "l2"))
    huber_delta: float = option("pseudo-Huber delta (official 1e-3)", default=1e-3, gt=0)
    ema_decay: float = option("EMA rate of the teacher after every optimiser step (official 0.999)", default=0.999,
                              ge=0, le=1)
    seed_from: str = option("start latents: images (forward-noised data images, official), noise (pure noise at "
                            "T-1), samples (the teacher's own DDIM samples from noise), auto (images if the data "
                            "has them, else samples)", default="auto", choices=SEED_SOURCES)
    sample_guidance: float = option("classifier-free guidance scale (diffusers convention) of the teacher's own "
                                    "samples with seed_from samples (1: unguided, the model's weak generations)",
                                    default=1.0)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP + " (official: 0)", default=0.0, ge=0, le=1)

    def teacher_guidance_for(self, family: str) -> float:
        return OFFICIAL_TEACHER_GUIDANCE[family] if self.teacher_guidance is None else self.teacher_guidance

    def for_family(self, family):
        return {**super().for_family(family), "teacher_guidance": self.teacher_guidance_for(family)}

    def __post_init__(self):
        super().__post_init__()
        if self.truncated_steps >= self.grid_steps:
            raise OptionError("truncated_steps", f"must be below --grid-steps ({self.grid_steps}), got {self.truncated_steps}")


@register_method
class SelfNPO(DenoisingMethod):
    name = "self-npo"
    summary = "Self-NPO: a negative model for NPO-guided CFG from the model's own anti-guided truncated samples (prompts)"
    config_class = SelfNPOConfig
    data_format = "prompts"
    needs_reference = True
    needs_ddpm_unet = "DDIM self-sampling on a DDPM alphas_cumprod schedule"
    ema_reference = True
    negative_model = True

    def compute_loss(self, model, inputs, generator=None):
        config = self.config
        cond: Conditioning = inputs["cond"]
        batch = cond.prompt_embeds.shape[0]
        null = model.null_conditioning().map(lambda tensor: tensor.expand(batch, *tensor.shape[1:]))
        if model.num_train_timesteps % config.grid_steps:
            raise OptionError("grid_steps", f"must divide the model's {model.num_train_timesteps} training timesteps, "
                                            f"got {config.grid_steps}")
        grid = ddim_grid(config.grid_steps, model.num_train_timesteps)
        stride = model.num_train_timesteps // config.grid_steps
        _check_x0_is_finite(model)

        with torch.no_grad():
            start, latents, forwards = self._start(model, inputs, cond, null, grid, stride, generator)
            target, end, latents, truncated_forwards = self._truncated_target(model, latents, start, cond, null, stride)

        uniforms = torch.rand(batch, generator=generator).to(end.device)
        student_t = end + 1 + (uniforms * (model.num_train_timesteps - 1 - end).float()).long()
        noise = sample_noise(tuple(latents.shape), generator, latents.device, latents.dtype)
        noisy = renoise(latents, end, student_t, noise, model.alphas_cumprod)
        prediction = model.denoised(model.policy(noisy, student_t, cond), noisy, student_t)
        if config.loss_type == "pseudo_huber":
            losses = pseudo_huber_errors(prediction, target, config.huber_delta)
        else:
            losses = denoising_errors(prediction, target)
        metrics = {
            "self_npo/start_t": start.float().mean(),
            "self_npo/target_t": end.float().mean(),
            "self_npo/student_t": student_t.float().mean(),
            "self_npo/x0_mse": denoising_errors(prediction.detach(), target).mean(),
            "self_npo/teacher_forwards": torch.tensor(float(forwards + truncated_forwards)),
        }
        return ObjectiveOutput(loss=losses.mean(), losses=losses, metrics=metrics)

    def after_optimizer_step(self, model) -> None:
        model.update_reference_ema(self.config.ema_decay)

    # ------------------------------------------------------------------------------------ steps
    def _start(self, model, inputs, cond, null, grid, stride, generator):
        """(t_s (B,), y at t_s, teacher image-forwards spent) for the configured seeding."""
        source = self.config.seed_from
        has_images = "image_latents" in inputs
        if source == "auto":
            source = "images" if has_images else "samples"
        if source == "images" and not has_images:
            raise UsageError("self-npo --seed-from images needs an 'image' in every row of --data "
                             "(a prompts jsonl with {prompt, image}); use --seed-from samples or noise for prompts only")
        batch = cond.prompt_embeds.shape[0]
        device = cond.prompt_embeds.device
        if source == "noise":
            start = torch.full((batch,), int(grid[-1]), dtype=torch.long, device=device)
            return start, sample_noise((batch, *model.latent_shape), generator, device), 0
        start = grid[torch.randint(0, len(grid), (batch,), generator=generator)].to(device)
        if source == "images":
            clean = inputs["image_latents"]
            noise = sample_noise(tuple(clean.shape), generator, clean.device, clean.dtype)
            return start, model.add_noise(clean, noise, start), 0
        latents = sample_noise((batch, *model.latent_shape), generator, device)
        current = torch.full_like(start, int(grid[-1]))
        forwards = 0
        guidance = self.config.sample_guidance - 1.0  # the diffusers scale in the LCM convention
        while bool((current > start).any()):  # the teacher's ordinary CFG sampler, rows stopping at their t_s
            x0, eps = teacher_prediction(model, latents, current, cond, null, guidance)
            forwards += batch * branches(guidance)
            moving = current > start
            previous = previous_timesteps(current, stride)
            latents = torch.where(_rows(moving, latents), ddim_step(x0, eps, previous, model.alphas_cumprod), latents)
            current = torch.where(moving, previous, current)
        return start, latents, forwards

    def _truncated_target(self, model, latents, start, cond, null, stride):
        """K guided teacher DDIM steps from ``start`` and the sixth evaluation's x0: (x*, t', y_K, forwards)."""
        guidance = self.config.teacher_guidance_for(model.family)
        current, forwards = start, 0
        for step in range(self.config.truncated_steps + 1):
            x0, eps = teacher_prediction(model, latents, current, cond, null, guidance)
            forwards += latents.shape[0] * branches(guidance)
            if step == self.config.truncated_steps:
                return x0, current, latents, forwards
            moving = current > 0  # a sample at t = 0 has run off the grid and stays there
            previous = previous_timesteps(current, stride)
            latents = torch.where(_rows(moving, latents), ddim_step(x0, eps, previous, model.alphas_cumprod), latents)
            current = torch.where(moving, previous, current)
        raise AssertionError("unreachable")


def branches(guidance: float) -> int:
    """Image forwards per row of ``teacher_prediction`` at LCM-convention guidance w (1 at w = 0 or -1)."""
    return 1 if guidance in (0.0, -1.0) else 2


def teacher_prediction(model, latents, timesteps, cond: Conditioning, null: Conditioning, guidance: float):
    """The EMA teacher's guided (x0, eps) in the LCM convention: x_c + w (x_c - x_null) and the same
    for eps. w = -1 needs only the null forward and w = 0 only the conditional one; otherwise one
    batched forward of [cond; null]."""
    if guidance == -1.0:
        return _x0_and_eps(model, model.reference(latents, timesteps, null), latents, timesteps)
    if guidance == 0.0:
        return _x0_and_eps(model, model.reference(latents, timesteps, cond), latents, timesteps)
    both = model.reference(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), Conditioning.concat([cond, null]))
    conditional, unconditional = both.chunk(2)
    x0_c, eps_c = _x0_and_eps(model, conditional, latents, timesteps)
    x0_u, eps_u = _x0_and_eps(model, unconditional, latents, timesteps)
    return x0_c + guidance * (x0_c - x0_u), eps_c + guidance * (eps_c - eps_u)


def _x0_and_eps(model, prediction, latents, timesteps):
    return (model.denoised(prediction, latents, timesteps).float(),
            model.epsilon(prediction, latents, timesteps).float())


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *[1] * (like.dim() - 1))


def _check_x0_is_finite(model) -> None:
    if model.prediction_type == "epsilon" and float(model.alphas_cumprod[-1]) == 0.0:
        raise UsageError("self-npo regresses x0 = (x - sqrt(1 - abar) eps) / sqrt(abar), which is infinite at the last "
                         "step of this epsilon-prediction model's zero-terminal-SNR schedule; use a v-prediction model")
