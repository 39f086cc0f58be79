"""Alignment: train a method on the toy preset, with the toy world's training settings.

``TOY_TRAINING`` holds the learning rate, method options and, where it is not ``DEFAULT_TOY_STEPS``,
the number of steps per method on the toy preset (everything else: the method's own defaults and
``TrainConfig``'s). They were chosen with ``diffalign demo
--eval-split validation`` (training-split prompts that built no pair), never on the held-out prompts;
the runs that chose them are listed in the README's toy-world section. ``toy_train_config`` adds
what every toy run shares (32x32, no flips, constant learning rate after a 10 % warm-up, one
checkpoint at the end); ``align`` trains with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from diffalign.errors import UsageError
from diffalign.toy import world

TOY_TRAINING: dict[str, dict[str, Any]] = {
    "diffusion-dpo": {"learning_rate": 2e-5, "method_args": {"beta": 5000.0, "caption_dropout": 0.0}},
    "mapo": {"learning_rate": 1e-5, "method_args": {}},
    "sft": {"learning_rate": 1e-5, "method_args": {}},
    "diffusion-npo": {"learning_rate": 2e-5, "method_args": {"beta": 5000.0}},
    "self-npo": {"learning_rate": 5e-6, "method_args": {}},
    "tdpo": {"learning_rate": 5e-6, "method_args": {}},
    "tkto": {"learning_rate": 3e-6, "method_args": {}},
    # the user branch alone trains (a few thousand parameters, W'_v from zero), on six users' pairs
    "ppd": {"learning_rate": 1e-4, "method_args": {}, "steps": 1200},
}
DEFAULT_TOY_LEARNING_RATE = 1e-5
DEFAULT_TOY_STEPS = 300


def check_method(name: str, formats: Sequence[str], data: str = "image pairs", demo: str = "the demo"):
    """The registered diffusion method ``name`` if its data contract is one of ``formats``; otherwise a
    ``ValueError`` listing the methods that fit (``data`` and ``demo`` name them in the message)."""
    from diffalign.methods.base import registered_methods

    methods = registered_methods()
    fitting = sorted(n for n, m in methods.items() if m.modality == "diffusion" and m.data_format in formats)
    if name not in fitting:
        reason = "is not a registered method" if name not in methods else f"does not train on {data} ({methods[name].data_format})"
        raise UsageError(f"--method {name!r} {reason}; methods that fit {demo}: {', '.join(fitting)}")
    return methods[name]


def training_settings(method: str, learning_rate: Optional[float] = None, method_args: Optional[dict] = None) -> tuple[float, dict]:
    """The learning rate (``learning_rate`` if set, else ``TOY_TRAINING``'s or the default) and the
    method options (``TOY_TRAINING``'s, overridden by ``method_args``)."""
    toy = TOY_TRAINING.get(method, {})
    return (learning_rate or toy.get("learning_rate", DEFAULT_TOY_LEARNING_RATE),
            {**toy.get("method_args", {}), **(method_args or {})})


def toy_train_config(
    method: str,
    model: str,
    data: str | Path,
    output_dir: str | Path,
    steps: Optional[int],
    batch_size: int,
    seed: int,
    learning_rate: Optional[float] = None,
    method_args: Optional[dict] = None,
    progress: bool = True,
):
    """The ``TrainConfig`` of a toy run: ``training_settings`` (``steps`` None: the method's toy steps),
    then the settings every toy run shares."""
    from diffalign.training import TrainConfig

    learning_rate, method_args = training_settings(method, learning_rate, method_args)
    steps = steps if steps is not None else TOY_TRAINING.get(method, {}).get("steps", DEFAULT_TOY_STEPS)
    return TrainConfig(
        method=method,
        model=model,
        data=str(data),
        output_dir=str(output_dir),
        overwrite=True,  # a demo's own folder: a second demo into the same --output-dir replaces its model
        method_args=method_args,
        resolution=world.RESOLUTION,
        random_flip=False,  # a flip turns "on the left" into "on the right"
        center_crop=True,
        learning_rate=learning_rate,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=max(1, steps // 10),
        max_steps=steps,
        train_batch_size=batch_size,
        seed=seed,
        checkpointing_steps=steps,
        checkpoints_total_limit=1,
        progress_bar=progress,
    )


def aligned_pipeline(method, base_pipe, model_dir: str | Path):
    """The pipeline that samples the result of training ``method`` into ``model_dir``: the trained model
    itself, or, for a negative model (``method.negative_model``: Self-NPO, Diffusion-NPO), NPO-guided
    CFG with the base pipeline as the positive branch and the trained UNet as the negative one."""
    from diffalign.toy.preset import load_toy_pipeline

    if not method.negative_model:
        return load_toy_pipeline(model_dir)
    from diffusers import UNet2DConditionModel

    from diffalign.pipelines import StableDiffusionNPOPipeline

    negative = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet")
    pipe = StableDiffusionNPOPipeline(**base_pipe.components, negative_unet=negative, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def align(train_config) -> dict:
    """``diffalign.training.train`` on ``train_config``; its summary, with the ``learning_rate``,
    ``method_args`` and ``batch_size`` it trained with."""
    from diffalign.training import train

    summary = train(train_config)
    summary["learning_rate"] = train_config.learning_rate
    summary["method_args"] = train_config.method_args
    summary["batch_size"] = train_config.train_batch_size
    return summary


def training_record(summary: dict) -> dict:
    """What a demo report quotes of an ``align`` summary."""
    return {key: summary[key] for key in ("steps", "learning_rate", "method_args", "batch_size", "final_metrics", "seconds")}
