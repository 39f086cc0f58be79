"""Validation images during training (``--validation-prompts``; diffusion methods only).

Before training (step 0, a new run only: a resumed run keeps the first run's step 0), every
``--validation-steps`` optimiser steps and after the last step, the main process generates
``--validation-images`` K images per prompt through the model's own diffusers pipeline
(``DiffusionModel.build_pipeline`` over the trained UNet, the inference scheduler,
``--validation-inference-steps`` steps, ``--validation-guidance``) while the other processes wait.
Image ``j`` of prompt ``i`` starts from seed ``--seed + 1000 i + j`` (``diffalign.diffusion.seeds``,
the rule of ``diffalign generate``) on its own CPU generator, so every step's images start from the
same noise as step 0's and as ``diffalign generate --seed`` would. The UNet runs in eval mode without
gradients under the run's autocast, and is put back in train mode after; the global RNG state is
restored, so validation does not change the training run.

For methods that train a negative model (``method.negative_model``: Diffusion-NPO, Self-NPO) the images
show that negative model itself, not the guided generation it is meant for.

Written to ``<output_dir>/validation/step-N/{i}_{j}.png`` plus ``grid.png``: the images side by side, the
base (step 0) in the top row and step N below it. With ``--validation-scorer NAME`` the images are
scored (``diffalign.rewards.get_scorer``) and the mean is logged as ``validation/reward`` in that
step's ``metrics.jsonl`` record (step 0: a record of its own) and to the trackers. Trackers that take
images (tensorboard, wandb, swanlab) get the grid and the images.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image, ImageDraw

from diffalign.diffusion.seeds import image_seed
from diffalign.options import OptionError

VALIDATION_DIR = "validation"
PROMPT_FILE_EXTENSIONS = (".txt",)
IMAGE_TRACKERS = ("tensorboard", "wandb", "swanlab")


def read_validation_prompts(value: str) -> list[str]:
    """``--validation-prompts``: the non-empty lines of a .txt file, or the value itself as one prompt."""
    if os.path.isfile(value):
        from diffalign.rewards.records import RecordError, read_prompts_file

        try:
            prompts = read_prompts_file(value)
        except RecordError as error:
            raise OptionError("validation_prompts", f"cannot be read: {error}") from error
        if not prompts:
            raise OptionError("validation_prompts", f"file {value} has no prompts")
        return prompts
    if value.lower().endswith(PROMPT_FILE_EXTENSIONS):
        raise OptionError("validation_prompts", f"file {value} does not exist (a literal prompt may not end in .txt)")
    return [value]


def check_scorer(name: str) -> None:
    """An unknown or pairwise ``--validation-scorer`` is an ``OptionError`` (nothing is built)."""
    from diffalign.rewards.base import PairwiseScorer, registered_scorers

    scorers = registered_scorers()
    if name not in scorers:
        raise OptionError("validation_scorer", f"must be a registered scorer ({', '.join(scorers) or 'none'}), got {name!r}")
    factory = scorers[name]
    if isinstance(factory, type) and issubclass(factory, PairwiseScorer):
        raise OptionError("validation_scorer", f"must score single images; {name!r} is a pairwise judge")


def image_grid(rows: Sequence[Sequence[Image.Image]], labels: Sequence[str], min_cell: int = 96, pad: int = 4,
               label_width: int = 96) -> Image.Image:
    """Rows of images (one row per model state, images side by side), each row's label at its left.
    Images smaller than ``min_cell`` are enlarged with nearest-neighbour sampling (never shrunk), so a
    32-pixel toy image stays readable."""
    width = max(image.width for row in rows for image in row)
    height = max(image.height for row in rows for image in row)
    scale = max(1, -(-min_cell // max(width, height)))  # ceil
    cell_w, cell_h = width * scale, height * scale
    columns = max(len(row) for row in rows)
    grid = Image.new("RGB", (label_width + columns * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = pad + r * (cell_h + pad)
        draw.text((pad, y + cell_h // 2 - 6), label, fill="black")
        for c, image in enumerate(row):
            tile = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
            grid.paste(tile, (label_width + c * (cell_w + pad), y))
    return grid


class Validator:
    """Built on every process before any work (the options checked); ``attach`` the model, then call
    ``run`` on every process at the steps where ``due`` is true."""

    def __init__(self, config, negative_model: bool = False):
        self.config = config
        self.prompts = read_validation_prompts(config.validation_prompts)
        if config.validation_scorer is not None:
            check_scorer(config.validation_scorer)
        self.negative_model = negative_model
        self.folder = os.path.join(config.output_dir, VALIDATION_DIR)
        self.model = None
        self._scorer = None

    def attach(self, model) -> None:
        if not getattr(model, "has_encoders", True):
            raise OptionError("validation_prompts", "needs the VAE and text encoders; a run from a latent cache has none")
        self.model = model

    def due(self, step: int) -> bool:
        every = self.config.validation_steps
        return step == self.config.max_steps or (every is not None and step % every == 0)

    def run(self, step: int, accelerator, unet: torch.nn.Module, autocast: Callable[[], Any]) -> dict[str, float]:
        """Validation at ``step`` (every process calls it; the main process works, the others wait).
        Returns the step's validation metrics on the main process, ``{}`` elsewhere."""
        metrics: dict[str, float] = {}
        if accelerator.is_main_process:
            images = self.generate(unet, autocast)
            self.save(step, images)
            if self.config.validation_scorer is not None:
                metrics["validation/reward"] = self.score(images)
            log_images(accelerator, step, images, self._grid(step, images))
        accelerator.wait_for_everyone()
        return metrics

    # -------------------------------------------------------------------------------- the pieces
    def generate(self, unet: torch.nn.Module, autocast: Callable[[], Any] = contextlib.nullcontext) -> list[Image.Image]:
        """K images per prompt, prompt-major (index ``i * K + j``)."""
        model, config = self.model, self.config
        per_prompt = config.validation_images
        guidance = (config.validation_guidance if config.validation_guidance is not None
                    else model.family_adapter.default_guidance)
        pipeline = model.build_pipeline(unet=unet)
        pipeline.set_progress_bar_config(disable=True)
        was_training = unet.training
        unet.eval()
        devices = [model.device] if model.device.type == "cuda" else []
        images: list[Image.Image] = []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast():
                for i, prompt in enumerate(self.prompts):
                    generators = [torch.Generator("cpu").manual_seed(image_seed(config.seed, i, j)) for j in range(per_prompt)]
                    output = pipeline(prompt, num_images_per_prompt=per_prompt, generator=generators,
                                      num_inference_steps=config.validation_inference_steps, guidance_scale=guidance,
                                      height=model.resolution, width=model.resolution, output_type="pil")
                    images.extend(output.images)
        finally:
            unet.train(was_training)
        return images

    def step_folder(self, step: int) -> str:
        return os.path.join(self.folder, f"step-{step}")

    def save(self, step: int, images: Sequence[Image.Image]) -> None:
        folder = self.step_folder(step)
        if os.path.isdir(folder):  # a resumed run rewrites the steps after its checkpoint
            shutil.rmtree(folder)
        os.makedirs(folder)
        for index, image in enumerate(images):
            i, j = divmod(index, self.config.validation_images)
            image.save(os.path.join(folder, f"{i}_{j}.png"))
        self._grid(step, images).save(os.path.join(folder, "grid.png"))

    def _grid(self, step: int, images: Sequence[Image.Image]) -> Image.Image:
        base = self._base_images(len(images)) if step != 0 else None
        if base is None:
            return image_grid([images], [f"step {step}"])
        return image_grid([base, images], ["base (step 0)", f"step {step}"])

    def _base_images(self, count: int) -> Optional[list[Image.Image]]:
        """Step 0's images from disk (None if they are missing or from other settings)."""
        folder = self.step_folder(0)
        paths = [os.path.join(folder, f"{i}_{j}.png") for i in range(len(self.prompts))
                 for j in range(self.config.validation_images)]
        if len(paths) != count or not all(os.path.isfile(path) for path in paths):
            return None
        return [Image.open(path).convert("RGB") for path in paths]

    def score(self, images: Sequence[Image.Image]) -> float:
        if self._scorer is None:
            from diffalign.rewards.base import get_scorer

            self._scorer = get_scorer(self.config.validation_scorer)
        prompts = [prompt for prompt in self.prompts for _ in range(self.config.validation_images)]
        return float(torch.as_tensor(self._scorer.score(list(images), prompts)).float().mean())


def log_images(accelerator, step: int, images: Sequence[Image.Image], grid: Image.Image) -> None:
    """The grid and the images to every tracker that takes images (others get only the metrics)."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation/grid": np.asarray(grid)[None]}, step=step, dataformats="NHWC")
            tracker.log_images({"validation/images": np.stack([np.asarray(image.convert("RGB")) for image in images])},
                               step=step, dataformats="NHWC")
            tracker.writer.flush()
        elif tracker.name in IMAGE_TRACKERS:
            tracker.log_images({"validation/grid": [grid], "validation/images": list(images)}, step=step)


def log_text(accelerator, tag: str, text: str) -> None:
    """``text`` (the model card) to a tensorboard tracker, if there is one."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_text(tag, text)
            tracker.writer.flush()


__all__ = ["VALIDATION_DIR", "Validator", "check_scorer", "image_grid", "log_images", "log_text", "read_validation_prompts"]
