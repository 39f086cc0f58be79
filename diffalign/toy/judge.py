"""The toy judge: a deterministic programmatic reward for toy-world images (DESIGN.md §6).

It is a ``diffalign.rewards.Scorer`` registered as ``"toy"``, used exactly where HPSv2 or
UnifiedReward would be (``get_scorer("toy").score(images, prompts)``). Higher is better, in [0, 1].

How an image is judged against its caption (``diffalign.toy.world`` grammar), at 32x32 (larger images
are box-downsampled first):

- **foreground**: pixels farther than ``FOREGROUND_DISTANCE`` (RGB Euclidean) from the *named*
  background colour. Fewer than ``MIN_FOREGROUND_PIXELS`` such pixels means "no object": the
  object terms below are then 0.
- **colour** (weight 0.25): mean over foreground pixels of ``exp(-d^2 / 2 sigma^2)``, d = distance to
  the named shape colour, sigma = 45.
- **shape** (0.20): the fill ratio (soft foreground area / area of its soft bounding box) against the named
  shape's ideal (circle pi/4, square 1, triangle 0.57 as measured on renders), Gaussian with
  sigma = 0.08; the three ideals are >= 2.7 sigma apart.
- **position** (0.20): distance of the centre of the soft bounding box (not the centroid, which
  sits low in a triangle) to the named position's centre, Gaussian
  with sigma = 4 px (neighbouring positions are 8 px apart).
- **size** (0.10): log ratio of the foreground area to the named size's ideal area for that shape,
  Gaussian with sigma = 0.35 (small and large differ by ~1.1 in log area).
- **background** (0.10): mean over the image border (2 px) of ``exp(-d^2 / 2 * 45^2)`` to the named
  background colour.
- **aesthetic** (0.15): prompt-free "clean rendering": mean over all pixels of
  ``exp(-d_min^2 / 2 * 30^2)``, d_min = distance to the nearest colour of the world's palette, so
  muddy, noisy or washed-out pixels cost reward even when the object is right.

The terms are continuous, so two different images almost never tie. Renders of the caption score
~0.95 (``world.render``); a render of a caption that differs in one attribute loses that attribute's
weight. The judge has no trainable part and no randomness: it is fixed before any training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from diffalign.errors import UsageError
from diffalign.rewards.base import Scorer, register_scorer
from diffalign.toy import world

FOREGROUND_DISTANCE = 60.0
MIN_FOREGROUND_PIXELS = 4
CORE_FRACTION = 0.75
WEIGHTS = {"colour": 0.25, "shape": 0.20, "position": 0.20, "size": 0.10, "background": 0.10, "aesthetic": 0.15}
# measured on renders: a triangle's soft box is a little smaller than its true box (the apex column
# and row are only partly covered), so its fill reads ~0.57 rather than the geometric 1/2
IDEAL_FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.57}
IDEAL_AREA_FACTOR = {"circle": math.pi, "square": 4.0, "triangle": 2.0}  # area = factor * half^2
_PALETTE = np.array(list(world.COLOURS.values()) + list(world.BACKGROUNDS.values()), dtype=np.float32)


def _gauss(x: np.ndarray | float, sigma: float) -> np.ndarray | float:
    return np.exp(-0.5 * (np.asarray(x, dtype=np.float64) / sigma) ** 2)


def _as_array(image: Image.Image) -> np.ndarray:
    image = image.convert("RGB")
    if image.size != (world.RESOLUTION, world.RESOLUTION):
        image = image.resize((world.RESOLUTION, world.RESOLUTION), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


@dataclass
class JudgeTerms:
    """The per-term scores in [0, 1] and their weighted sum ``total``."""

    colour: float
    shape: float
    position: float
    size: float
    background: float
    aesthetic: float

    @property
    def total(self) -> float:
        return float(sum(WEIGHTS[name] * getattr(self, name) for name in WEIGHTS))


@dataclass
class ObjectGeometry:
    """Where the judge found the object: its soft area in pixels and the centre of its soft bounding box
    (x, y in pixels from the top-left corner, at ``world.RESOLUTION``)."""

    area: float
    centre_x: float
    centre_y: float


def judge_terms(image: Image.Image, caption: str) -> JudgeTerms:
    """Score one image against its caption term by term (see the module docstring)."""
    return measure(image, caption)[0]


def measure(image: Image.Image, caption: str) -> tuple[JudgeTerms, Optional[ObjectGeometry]]:
    """``judge_terms`` and the object's geometry (None when the judge finds no object)."""
    scene = world.parse_caption(caption)
    pixels = _as_array(image)
    side = pixels.shape[0]
    background = np.array(world.BACKGROUNDS[scene.background], dtype=np.float32)
    target = np.array(world.COLOURS[scene.colour], dtype=np.float32)

    border = np.ones((side, side), dtype=bool)
    border[2:-2, 2:-2] = False
    background_score = float(_gauss(np.linalg.norm(pixels[border] - background, axis=-1), 45.0).mean())
    palette_distance = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1).min(axis=-1)
    aesthetic = float(_gauss(palette_distance, 30.0).mean())

    from_background = np.linalg.norm(pixels - background, axis=-1)
    foreground = from_background > FOREGROUND_DISTANCE
    if int(foreground.sum()) < MIN_FOREGROUND_PIXELS:
        return JudgeTerms(0.0, 0.0, 0.0, 0.0, background_score, aesthetic), None

    # the object's own colour: its most saturated pixels (anti-aliased edges are mixtures with the background)
    core = from_background >= CORE_FRACTION * from_background[foreground].max()
    colour = float(_gauss(np.linalg.norm(pixels[core] - target, axis=-1), 45.0).mean())
    # soft coverage: how far each pixel has moved from the background towards the object's colour
    object_colour = pixels[core].mean(axis=0)
    coverage = np.clip(from_background / max(float(np.linalg.norm(object_colour - background)), 1.0), 0.0, 1.0)
    coverage = np.where(foreground, coverage, 0.0)
    area = float(coverage.sum())
    # soft bounding box: partially covered edge columns / rows count by their coverage
    columns, rows = coverage.max(axis=0), coverage.max(axis=1)
    bbox_area = float(columns.sum() * rows.sum())
    shape = float(_gauss(area / bbox_area - IDEAL_FILL[scene.shape], 0.08))
    centres = np.arange(side) + 0.5
    cx, cy = float((columns * centres).sum() / columns.sum()), float((rows * centres).sum() / rows.sum())
    tx, ty = world.target_centre(scene.position, side)
    position = float(_gauss(math.hypot(cx - tx, cy - ty), 4.0))
    ideal_area = IDEAL_AREA_FACTOR[scene.shape] * world.SIZES[scene.size] ** 2
    size = float(_gauss(math.log(area / ideal_area), 0.35))
    return JudgeTerms(colour, shape, position, size, background_score, aesthetic), ObjectGeometry(area, cx, cy)


@register_scorer("toy")
class ToyJudge(Scorer):
    """The toy world's programmatic reward (prompt adherence + a clean-rendering term), in [0, 1]."""

    name = "toy"

    def __init__(self, **options):
        if options:
            raise UsageError(f"the toy judge takes no options, got {sorted(options)}")

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        return torch.tensor([judge_terms(image, prompt).total for image, prompt in zip(images, prompts)], dtype=torch.float32)
