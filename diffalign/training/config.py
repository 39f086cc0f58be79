"""``TrainConfig``: everything a training run needs besides the method's own hyperparameters.

Fields map one-to-one onto ``diffalign train`` flags (``train_batch_size`` -> ``--train-batch-size``)
and onto the keys of a ``--config run.yaml`` file; flags override the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TrainConfig:
    # what to train
    method: str = "diffusion-dpo"
    model: str = ""  # hub id or local path (a diffusers pipeline folder, or a causal LM folder)
    data: str = ""  # hub id, local path (jsonl, parquet, a save_to_disk folder)
    output_dir: str = "runs/diffalign"
    method_args: dict[str, Any] = field(default_factory=dict)  # the method config's fields

    # data
    data_split: str = "train"
    resolution: Optional[int] = None  # None: the model's own (UNet sample size x VAE factor), or the cache's
    max_train_samples: Optional[int] = None
    skip_bad_rows: bool = False  # scan every row up front; skip (and count) bad ones instead of failing
    random_flip: bool = True  # horizontal flip with p = 0.5, per image (official Diffusion-DPO)
    center_crop: bool = True  # else a random crop
    dataloader_num_workers: int = 0

    # model
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: Optional[float] = None  # defaults to lora_rank (the official LoRA ports)
    lora_target_modules: Optional[list[str]] = None
    reference: str = "auto"  # auto | copy | adapters (auto: adapters with LoRA, else a frozen copy)
    attention: str = "sdpa"  # sdpa | xformers | native
    gradient_checkpointing: bool = False
    revision: Optional[str] = None

    # optimisation
    learning_rate: float = 1e-5
    scale_lr: bool = False  # multiply by the effective batch (official Diffusion-DPO launchers)
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    max_steps: int = 100
    train_batch_size: int = 1  # examples (pairs) per process per micro-step
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    optimizer: str = "adamw"  # adamw | adafactor | adamw8bit
    mixed_precision: str = "no"  # no | fp16 | bf16
    seed: int = 0
    num_threads: Optional[int] = None  # torch CPU threads per process (None: see diffalign.training.threads)

    # bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = None
    resume_from: Optional[str] = None  # latest | PATH
    overwrite: bool = False  # clear a non-empty output folder that holds no run to resume
    report_to: Optional[str] = None  # tensorboard
    progress_bar: bool = True
