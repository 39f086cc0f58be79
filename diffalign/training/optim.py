"""Optimiser and learning-rate schedule from a ``TrainConfig``.

- ``adamw`` (default): torch AdamW (0.9, 0.999, weight decay 1e-2, eps 1e-8: the official defaults);
- ``adafactor``: transformers' Adafactor as the official SDXL Diffusion-DPO runs use it
  (relative_step False, scale_parameter False, clip_threshold 1.0);
- ``adamw8bit``: bitsandbytes' 8-bit AdamW (CUDA; ``pip install bitsandbytes``).
Schedules are diffusers' ``get_scheduler`` names (constant, constant_with_warmup, linear, cosine, ...).
"""

from __future__ import annotations

import torch

from diffalign.errors import UsageError
from diffalign.training.config import TrainConfig

OPTIMIZERS = ("adamw", "adafactor", "adamw8bit")


def effective_learning_rate(config: TrainConfig, world_size: int) -> float:
    """``--scale-lr`` multiplies by the effective batch (official: 1e-8 x 2048 = 2.048e-5)."""
    if not config.scale_lr:
        return config.learning_rate
    return config.learning_rate * config.train_batch_size * config.gradient_accumulation_steps * world_size


def build_optimizer(config: TrainConfig, parameters, learning_rate: float) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in parameters if parameter.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                 weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=learning_rate, weight_decay=config.adam_weight_decay, clip_threshold=1.0,
                         scale_parameter=False, relative_step=False)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError as error:
            raise UsageError("--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes; CUDA only)") from error
        return bitsandbytes.optim.AdamW8bit(parameters, lr=learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                            weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_lr_scheduler(config: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    try:
        return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                             num_training_steps=config.max_steps)
    except ValueError as error:
        raise UsageError(f"--lr-scheduler {config.lr_scheduler!r}: {error}") from error
