"""Generation: images for a list of prompts, several per prompt, each from its own seed.

Image ``j`` of prompt ``i`` uses seed ``first_seed + 1000 * i + j`` (``image_seeds``, the rule of
``diffalign generate``, defined in ``diffalign.diffusion.seeds``), so an image
depends only on (model, prompt, seed, sampling): two models asked with the same ``first_seed`` start
from the same noise, and a run's images can be regenerated one by one. ``generate_per_prompt``
samples with the preset's ``SAMPLING`` unless overridden (``candidate_sampling`` builds the overrides
of the demo's candidates); the pipeline may be any diffusers text-to-image pipeline that takes
``preset.generate``'s arguments (an aligned model, or one with its own guidance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from PIL import Image

from diffalign.diffusion.seeds import image_seeds  # the seed rule of `diffalign generate`
from diffalign.toy.preset import SAMPLING, generate


def candidate_sampling(guidance_scale: Optional[float] = None, eta: Optional[float] = None) -> dict[str, float]:
    """Overrides of ``preset.SAMPLING`` for the given settings (``None``: keep the preset's)."""
    sampling = {}
    if guidance_scale is not None:
        sampling["guidance_scale"] = guidance_scale
    if eta is not None:
        sampling["eta"] = eta
    return sampling


@dataclass
class Generated:
    """``per_prompt`` images for each of ``prompts``, prompt-major: image ``index`` is image
    ``index % per_prompt`` of prompt ``index // per_prompt``; ``seeds`` and ``image_prompts`` are per image."""

    prompts: list[str]
    per_prompt: int
    seeds: list[int]
    images: list[Image.Image]
    sampling: dict[str, Any]  # the sampler the images were drawn with (preset.SAMPLING and the overrides)

    @property
    def image_prompts(self) -> list[str]:
        return [p for p in self.prompts for _ in range(self.per_prompt)]

    def save(self, folder: str | Path, name: str = "{prompt:04d}_{j}.png") -> list[Path]:
        """Write every image to ``folder`` under ``name`` (a format string of ``index``, ``prompt``
        (the prompt's number) and ``j``); returns the paths, in image order."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, image in enumerate(self.images):
            path = folder / name.format(index=index, prompt=index // self.per_prompt, j=index % self.per_prompt)
            image.save(path)
            paths.append(path)
        return paths


def generate_per_prompt(
    pipe,
    prompts: Sequence[str],
    per_prompt: int,
    first_seed: int,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "generate",
    **sampling,
) -> Generated:
    """``per_prompt`` images for each of ``prompts`` from ``pipe``, seeds from ``image_seeds``;
    ``sampling`` overrides ``preset.SAMPLING`` (e.g. ``**candidate_sampling(2.5, 1.0)``)."""
    prompts = list(prompts)
    all_prompts = [p for p in prompts for _ in range(per_prompt)]
    seeds = image_seeds(len(prompts), per_prompt, first_seed)
    images = generate(pipe, all_prompts, seeds, batch_size=batch_size, progress=progress, desc=desc, **sampling)
    return Generated(prompts, per_prompt, seeds, images, {**SAMPLING, **sampling})
