"""The demo's two figures, drawn with Pillow alone (no plotting dependency in the base install).

- ``comparison_grid``: one column per prompt, base image above aligned image (same prompt, same
  seed), each with its judge score, the caption wrapped under the column.
- ``curves``: line charts of training metrics over optimiser steps (loss, implicit accuracy): every
  step in a light tint, a trailing moving average (1/20 of the run) on top.
"""

from __future__ import annotations

import math
import textwrap
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GRAY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
LINE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def _font():
    return ImageFont.load_default()


def comparison_grid(
    prompts: Sequence[str],
    base: Sequence[Image.Image],
    aligned: Sequence[Image.Image],
    base_scores: Sequence[float],
    aligned_scores: Sequence[float],
    cell: int = 128,
    wrap: int = 20,
) -> Image.Image:
    """Base (top row) vs aligned (bottom row) per prompt, scores under each image, caption below."""
    font = _font()
    line = 12
    caption_lines = [textwrap.wrap(p, wrap) for p in prompts]
    caption_height = line * max((len(lines) for lines in caption_lines), default=1) + 6
    label_width = 64
    width = label_width + len(prompts) * (cell + 8) + 8
    height = 8 + 2 * (cell + line + 10) + caption_height
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    for row, (name, images, scores) in enumerate((("base", base, base_scores), ("aligned", aligned, aligned_scores))):
        top = 8 + row * (cell + line + 10)
        draw.text((6, top + cell // 2 - 6), name, fill=BLACK, font=font)
        for column, (image, score) in enumerate(zip(images, scores)):
            left = label_width + column * (cell + 8)
            canvas.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (left, top))
            draw.text((left, top + cell + 2), f"{name} {score:.3f}", fill=BLACK, font=font)
    caption_top = 8 + 2 * (cell + line + 10)
    for column, lines in enumerate(caption_lines):
        left = label_width + column * (cell + 8)
        for k, text in enumerate(lines):
            draw.text((left, caption_top + k * line), text, fill=BLACK, font=font)
    return canvas


def moving_average(points: Sequence[tuple[int, float]], window: int | None = None) -> list[tuple[int, float]]:
    """Trailing mean over ``window`` points (default: 1/20 of the run, at least 1)."""
    window = window or max(1, len(points) // 20)
    out, total = [], 0.0
    for i, (step, value) in enumerate(points):
        total += value
        if i >= window:
            total -= points[i - window][1]
        out.append((step, total / min(i + 1, window)))
    return out


def curves(series: dict[str, Sequence[tuple[int, float]]], title: str = "", panel: tuple[int, int] = (420, 260)) -> Image.Image:
    """One panel per named series of (step, value) points, side by side, with axis ranges labelled."""
    font = _font()
    pw, ph = panel
    canvas = Image.new("RGB", (pw * max(1, len(series)), ph + (20 if title else 0)), WHITE)
    draw = ImageDraw.Draw(canvas)
    offset = 0
    if title:
        draw.text((8, 4), title, fill=BLACK, font=font)
        offset = 20
    for index, (name, points) in enumerate(series.items()):
        left, top = index * pw, offset
        x0, y0, x1, y1 = left + 56, top + 20, left + pw - 12, top + ph - 28
        draw.text((left + 56, top + 4), name, fill=BLACK, font=font)
        draw.rectangle([x0, y0, x1, y1], outline=GRAY)
        values = [v for _, v in points if v is not None and math.isfinite(v)]
        if not values:
            draw.text((x0 + 8, y0 + 8), "no data", fill=GRAY, font=font)
            continue
        steps = [s for s, _ in points]
        lo, hi = min(values), max(values)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        smin, smax = min(steps), max(steps)
        span = max(1, smax - smin)

        def xy(step, value):
            return x0 + (x1 - x0) * (step - smin) / span, y1 - (y1 - y0) * (value - lo) / (hi - lo)

        finite = [(s, v) for s, v in points if v is not None and math.isfinite(v)]
        coordinates = [xy(s, v) for s, v in finite]
        colour = LINE_COLOURS[index % len(LINE_COLOURS)]
        if len(coordinates) > 1:
            light = tuple(c + (255 - c) * 2 // 3 for c in colour)
            draw.line(coordinates, fill=light, width=1)  # every step
            draw.line([xy(s, v) for s, v in moving_average(finite)], fill=colour, width=2)
        else:
            cx, cy = coordinates[0]
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
        draw.text((left + 4, y0 - 4), f"{hi:.3g}", fill=BLACK, font=font)
        draw.text((left + 4, y1 - 8), f"{lo:.3g}", fill=BLACK, font=font)
        draw.text((x0, y1 + 4), f"step {smin}", fill=BLACK, font=font)
        draw.text((x1 - 60, y1 + 4), f"step {smax}", fill=BLACK, font=font)
    return canvas
