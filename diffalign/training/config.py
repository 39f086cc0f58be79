"""``TrainConfig``: everything a training run needs besides the method's own hyperparameters.

Fields map one-to-one onto ``diffalign train`` flags (``train_batch_size`` -> ``--train-batch-size``)
and onto the keys of a ``--config run.yaml`` file; flags override the file. Each field declares its
help line and valid values (``diffalign.options``); ``__post_init__`` checks them, so an invalid
value is an ``OptionError`` (a ``ValueError``) when the config is built, before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from diffalign.options import OptionError, option, validate_fields

REFERENCE_MODES = ("auto", "copy", "adapters")
ATTENTION_BACKENDS = ("sdpa", "xformers", "native")  # diffalign.diffusion.attention.ATTENTION_BACKENDS
TIMESTEP_DENSITIES = ("logit_normal", "mode", "uniform")  # diffalign.diffusion.families.flow.TIMESTEP_DENSITIES
OPTIMIZERS = ("adamw", "adafactor", "adamw8bit")  # diffalign.training.optim.build_optimizer
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
"""diffusers ``get_scheduler`` names that need no more than warm-up and total steps
(``piecewise_constant`` needs step rules that ``--lr-scheduler`` cannot give)."""
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("all", "aim", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "swanlab")
"""accelerate's ``LoggerType`` values (``Accelerator(log_with=...)``); ``--report-to`` also takes ``none``."""
REPORT_TO_NONE = "none"  # no tracker: metrics.jsonl only (the default, None, means the same)
MAX_VALIDATION_IMAGES = 1000  # diffalign.diffusion.seeds.SEED_STRIDE: seeds of one prompt stay apart from the next's
POLYNOMIAL_LR_END = 1e-7  # diffusers' polynomial schedule decays to this and needs a larger initial lr


@dataclass
class TrainConfig:
    # what to train
    method: str = option("the preference method (`diffalign methods` lists them)", default="diffusion-dpo", nonempty=True,
                         metavar="NAME")
    model: str = option("diffusers pipeline folder or hub id (SD1.x/2.x, SDXL, SD3.x, FLUX.1); for text methods a "
                        "causal LM folder or hub id (required)", default="", metavar="PATH_OR_ID")
    data: str = option("hub dataset id, save_to_disk folder, parquet, jsonl or .txt file, or a `diffalign cache` "
                       "folder (required)", default="", metavar="PATH_OR_ID")
    output_dir: str = option("folder for checkpoints, metrics and the exported model", default="runs/diffalign",
                             nonempty=True, metavar="DIR")
    method_args: dict[str, Any] = option("the method config's options (flat flags or a method_args: mapping in "
                                         "--config)", default_factory=dict, cli=False)

    # data
    data_split: str = option("split of a dataset that has several", default="train", nonempty=True)
    resolution: Optional[int] = option("training resolution in pixels (default: the model's own, UNet sample size x "
                                       "VAE factor; from a cache, the cache's)", default=None, ge=8, multiple_of=8)
    max_train_samples: Optional[int] = option("use only the first N valid rows (default: all)", default=None, ge=1)
    skip_bad_rows: bool = option("scan every row up front; skip and count bad ones instead of failing", default=False)
    random_flip: bool = option("flip each image horizontally with p = 0.5 (official Diffusion-DPO)", default=True)
    center_crop: bool = option("crop images at the centre (--no-center-crop: a random crop)", default=True)
    dataloader_num_workers: int = option("data loader worker processes (0: load in the main process)", default=0, ge=0)

    # model
    lora_rank: int = option("LoRA rank (0: full fine-tuning)", default=0, ge=0)
    lora_alpha: Optional[float] = option("LoRA alpha, needs --lora-rank >= 1 (default: the rank)", default=None, gt=0)
    lora_target_modules: Optional[list[str]] = option("module names LoRA adapts, needs --lora-rank >= 1 (default: the "
                                                      "family's, as diffusers' LoRA scripts: the UNet's attention "
                                                      "projections, SD3's joint-attention projections; all linear layers "
                                                      "for text models)",
                                                      default=None, nonempty=True)
    reference: str = option("frozen reference for methods that need one: auto (LoRA: the base with adapters "
                            "disabled; full fine-tuning: a frozen copy), copy, adapters (needs LoRA)",
                            default="auto", choices=REFERENCE_MODES)
    attention: str = option("attention backend (xformers: CUDA and the xformers extra; text models: sdpa or native)",
                            default="sdpa", choices=ATTENTION_BACKENDS)
    timestep_density: Optional[str] = option("training timestep density of the flow-matching families (default: the "
                                             "family's, as diffusers' DreamBooth scripts: logit_normal SD3.x, uniform "
                                             "FLUX.1)", default=None, choices=TIMESTEP_DENSITIES)
    gradient_checkpointing: bool = option("recompute activations in the backward pass to save memory", default=False)
    revision: Optional[str] = option("model revision on the hub (default: the main branch)", default=None, nonempty=True)

    # optimisation
    learning_rate: float = option("learning rate (per effective batch with --scale-lr)", default=1e-5, gt=0)
    scale_lr: bool = option("multiply the learning rate by the effective batch (train batch x accumulation x "
                            "processes), as the official Diffusion-DPO launchers do", default=False)
    lr_scheduler: str = option("learning-rate schedule (diffusers get_scheduler)", default="constant_with_warmup",
                               choices=LR_SCHEDULERS)
    lr_warmup_steps: int = option("optimiser steps of linear warm-up", default=0, ge=0)
    max_steps: int = option("optimiser steps to train", default=100, ge=1)
    train_batch_size: int = option("examples (pairs) per process per micro-step", default=1, ge=1)
    gradient_accumulation_steps: int = option("micro-steps per optimiser step", default=1, ge=1)
    max_grad_norm: float = option("clip the gradient norm to this value (inf: no clipping)", default=1.0, gt=0,
                                  allow_inf=True)
    adam_beta1: float = option("AdamW beta1 (adamw, adamw8bit)", default=0.9, ge=0, lt=1)
    adam_beta2: float = option("AdamW beta2 (adamw, adamw8bit)", default=0.999, ge=0, lt=1)
    adam_weight_decay: float = option("decoupled weight decay (adamw, adamw8bit, adafactor)", default=1e-2, ge=0)
    adam_epsilon: float = option("AdamW epsilon (adamw, adamw8bit)", default=1e-8, gt=0)
    optimizer: str = option("optimizer (adafactor: as the official SDXL runs; adamw8bit: bitsandbytes, CUDA)",
                            default="adamw", choices=OPTIMIZERS)
    mixed_precision: str = option("autocast precision (fp16 needs CUDA)", default="no", choices=MIXED_PRECISION)
    seed: int = option("seed of data order, augmentations, noise and timesteps", default=0, ge=0, le=2**32 - 1)
    num_threads: Optional[int] = option("torch CPU threads per process (default: torch's; several processes on one "
                                        "machine share the cores)", default=None, ge=1)

    # bookkeeping
    checkpointing_steps: int = option("save a checkpoint every N optimiser steps (and at the last)", default=500, ge=1)
    checkpoints_total_limit: Optional[int] = option("keep at most N checkpoints (default: all)", default=None, ge=1)
    resume_from: Optional[str] = option("resume from `latest` (in --output-dir; a new run if there is none) or a "
                                        "checkpoint folder", default=None, nonempty=True,
                                        metavar="latest|DIR")
    overwrite: bool = option("remove the diffalign run in --output-dir (its run, checkpoint and export files; other files "
                             "are kept) and start a new run", default=False)
    report_to: Optional[str] = option("also log metrics (and validation images) to this tracker (default, none: only "
                                      "metrics.jsonl)", default=None, choices=REPORT_TO + (REPORT_TO_NONE,))
    progress_bar: bool = option("show progress bars", default=True)

    # validation images (diffusion methods; negative-model methods show the negative model itself)
    validation_prompts: Optional[str] = option(
        "generate validation images for these prompts before training, every --validation-steps and at the end, into "
        "<output-dir>/validation/step-N/ (a .txt file, one prompt a line, or one literal prompt; default: no "
        "validation; NPO-style methods show the negative model itself)", default=None, nonempty=True,
        metavar="FILE_OR_TEXT")
    validation_steps: Optional[int] = option("validate every N optimiser steps (default: only before training and at "
                                             "the end)", default=None, ge=1)
    validation_images: int = option("validation images per prompt (image j of prompt i: seed --seed + 1000 i + j)",
                                    default=1, ge=1, le=MAX_VALIDATION_IMAGES)
    validation_inference_steps: int = option("sampling steps of the validation images (the model's inference scheduler)",
                                             default=25, ge=1)
    validation_guidance: Optional[float] = option("classifier-free guidance of the validation images (default: 7.5 "
                                                  "SD1.x/2.x, 5 SDXL)", default=None, ge=0)
    validation_scorer: Optional[str] = option("score the validation images with this scorer (`diffalign score`'s names, "
                                              "e.g. toy) and log their mean as validation/reward", default=None,
                                              nonempty=True, metavar="NAME")

    def __post_init__(self):
        validate_fields(self)
        if self.lora_rank == 0:
            if self.reference == "adapters":
                raise OptionError("reference", "adapters needs LoRA (--lora-rank >= 1); full fine-tuning uses copy (or auto)")
            for name in ("lora_alpha", "lora_target_modules"):
                if getattr(self, name) is not None:
                    raise OptionError(name, "needs LoRA (--lora-rank >= 1); with --lora-rank 0 it would be ignored")
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise OptionError("lr_warmup_steps", "needs a schedule with warm-up (--lr-scheduler constant has none; "
                                                 "constant_with_warmup is the same after the warm-up)")
        if self.optimizer == "adafactor":
            for name in ("adam_beta1", "adam_beta2", "adam_epsilon"):
                if getattr(self, name) != _DEFAULTS[name]:
                    raise OptionError(name, "is not used by --optimizer adafactor (only by adamw and adamw8bit)")
        if self.validation_prompts is None:
            for name in VALIDATION_OPTIONS:
                if getattr(self, name) != _DEFAULTS[name]:
                    raise OptionError(name, "needs --validation-prompts (without it there is no validation)")
        if self.lr_scheduler == "polynomial" and not self.scale_lr and self.learning_rate <= POLYNOMIAL_LR_END:
            raise OptionError("learning_rate", f"must be > {POLYNOMIAL_LR_END:g} with --lr-scheduler polynomial (it decays "
                                               f"to {POLYNOMIAL_LR_END:g}), got {self.learning_rate!r}")


_DEFAULTS = {field.name: field.default for field in fields(TrainConfig)}
VALIDATION_OPTIONS = ("validation_steps", "validation_images", "validation_inference_steps", "validation_guidance",
                      "validation_scorer")
"""The options that only mean something with ``--validation-prompts``."""
