"""The seed rule of generation: image ``j`` of prompt ``i`` uses seed ``first_seed + 1000 * i + j``.

Shared by ``diffalign generate`` (``diffalign.pipelines.generate``), the toy world's generation and
the training loop's validation images, so an image depends only on (model, prompt, seed, sampling):
two models asked with the same first seed start from the same noise.
"""

from __future__ import annotations

from diffalign.errors import UsageError

SEED_STRIDE = 1000  # seeds of consecutive prompts are this far apart: at most this many images per prompt


def image_seed(first_seed: int, prompt_index: int, j: int) -> int:
    """Seed of image ``j`` of prompt ``prompt_index``: ``first_seed + 1000 * prompt_index + j``."""
    return first_seed + SEED_STRIDE * prompt_index + j


def image_seeds(n_prompts: int, per_prompt: int, first_seed: int) -> list[int]:
    """Seed of image ``j`` of prompt ``i`` at index ``i * per_prompt + j``: ``first_seed + 1000 * i + j``."""
    if per_prompt > SEED_STRIDE:
        raise UsageError(f"at most {SEED_STRIDE} images per prompt, got {per_prompt}")
    return [image_seed(first_seed, i, j) for i in range(n_prompts) for j in range(per_prompt)]


__all__ = ["SEED_STRIDE", "image_seed", "image_seeds"]
