"""The toy world: a procedural caption grammar and a deterministic renderer (DESIGN.md §6).

Every caption names one coloured shape of some size at some position on a plain background::

    "a small red circle on the left on a white background"

    a {size} {colour} {shape} {position} on a {background} background

with 2 sizes x 6 colours x 3 shapes x 5 positions x 3 backgrounds = 540 captions. ``render(caption,
seed)`` draws the scene at ``RESOLUTION`` (32x32) with 4x supersampled anti-aliasing; the seed
jitters the exact position (+-2 px) and size (+-10 %), so one caption describes a small distribution
of images, and the same (caption, seed) always gives the same pixels.

Prompt splits are by caption (``split_prompts``): the held-out captions are unseen *combinations* of
attributes that all occur in training, so an evaluation on them measures compositional
generalisation, never memorisation of a training caption. The split is a fixed function of the
caption text (a stable hash), independent of any seed or method.

The palette is chosen so that every shape colour is at least ~119 RGB units from every background and
from every other shape colour; the toy judge (``diffalign.toy.judge``) relies on that margin.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from diffalign.errors import UsageError

RESOLUTION = 32
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (200, 50, 200),
    "cyan": (40, 200, 210),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 4.0, "large": 7.0}  # half-extent in pixels at RESOLUTION 32
POSITIONS: dict[str, tuple[float, float]] = {  # phrase -> centre (x, y) as a fraction of the side
    "on the left": (0.25, 0.5),
    "on the right": (0.75, 0.5),
    "at the top": (0.5, 0.25),
    "at the bottom": (0.5, 0.75),
    "in the center": (0.5, 0.5),
}
POSITION_JITTER = 2.0  # pixels, uniform in [-j, j] per axis
SIZE_JITTER = 0.10  # relative, uniform in [-j, j]
HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class Scene:
    """The attributes a caption names."""

    size: str
    colour: str
    shape: str
    position: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {self.position} on a {self.background} background"


def all_scenes() -> list[Scene]:
    """Every scene of the grammar, in a fixed order."""
    return [
        Scene(size, colour, shape, position, background)
        for size, colour, shape, position, background in itertools.product(SIZES, COLOURS, SHAPES, POSITIONS, BACKGROUNDS)
    ]


def all_captions() -> list[str]:
    return [scene.caption for scene in all_scenes()]


def parse_caption(caption: str) -> Scene:
    """Inverse of ``Scene.caption``; raises ``UsageError`` (a ``ValueError``) naming the caption if it is not in the grammar."""
    text = " ".join(caption.strip().lower().split())
    for position in POSITIONS:
        marker = f" {position} on a "
        if marker in text and text.startswith("a ") and text.endswith(" background"):
            head, background = text[2:].split(marker, 1)
            background = background[: -len(" background")]
            words = head.split(" ")
            if len(words) == 3 and words[0] in SIZES and words[1] in COLOURS and words[2] in SHAPES and background in BACKGROUNDS:
                return Scene(words[0], words[1], words[2], position, background)
    raise UsageError(f"caption {caption!r} is not in the toy grammar: 'a {{size}} {{colour}} {{shape}} {{position}} on a {{background}} background'")


def is_held_out(caption: str) -> bool:
    """Whether ``caption`` belongs to the held-out split (a stable hash of its text; ~20 % of captions)."""
    digest = hashlib.sha256(caption.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELD_OUT_FRACTION


def split_prompts() -> tuple[list[str], list[str]]:
    """(train captions, held-out captions), each in the grammar's fixed order."""
    captions = all_captions()
    return [c for c in captions if not is_held_out(c)], [c for c in captions if is_held_out(c)]


def sample_prompts(prompts: list[str], n: int, seed: int) -> list[str]:
    """``n`` distinct prompts drawn from ``prompts`` by ``seed`` (all of them, shuffled, if n >= len)."""
    chosen = list(prompts)
    random.Random(seed).shuffle(chosen)
    return chosen[: min(n, len(chosen))]


def shape_polygon(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` (None for a circle) centred at (cx, cy) with half-extent ``half``."""
    if shape == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "triangle":  # upright, bounding box 2*half x 2*half
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")


def target_centre(position: str, resolution: int = RESOLUTION) -> tuple[float, float]:
    """Pixel coordinates of the centre a position phrase names (pixel centres at i + 0.5)."""
    fx, fy = POSITIONS[position]
    return fx * resolution, fy * resolution


def render(caption: str | Scene, seed: int = 0, resolution: int = RESOLUTION) -> Image.Image:
    """The RGB image of ``caption`` for ``seed`` (deterministic; jitter of position and size from the seed)."""
    scene = caption if isinstance(caption, Scene) else parse_caption(caption)
    rng = random.Random(f"{scene.caption}|{seed}")
    scale = resolution / RESOLUTION
    cx, cy = target_centre(scene.position, resolution)
    cx += rng.uniform(-POSITION_JITTER, POSITION_JITTER) * scale
    cy += rng.uniform(-POSITION_JITTER, POSITION_JITTER) * scale
    half = SIZES[scene.size] * scale * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))

    big = resolution * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    colour = COLOURS[scene.colour]
    s = SUPERSAMPLE
    polygon = shape_polygon(scene.shape, cx * s, cy * s, half * s)
    if polygon is None:
        draw.ellipse([cx * s - half * s, cy * s - half * s, cx * s + half * s, cy * s + half * s], fill=colour)
    else:
        draw.polygon(polygon, fill=colour)
    return image.resize((resolution, resolution), Image.Resampling.BOX)
