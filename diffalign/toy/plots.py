"""The demo's figures: the comparison grid drawn with Pillow (it is images), the charts with
matplotlib (Agg canvas, no display or GUI backend needed).

- ``comparison_grid``: one column per prompt, base image above aligned image (same prompt, same
  seed), each with its judge score, the caption wrapped under the column.
- ``curves``: training metrics over optimiser steps (loss, implicit accuracy), one panel per metric
  that has data: every step as a light line, a trailing moving average (1/20 of the run) on top.
- ``reward_distributions``: the judge rewards of the base and aligned evaluation images as step
  histograms over the same bins, each mean marked by a dashed line.
- ``win_rate_matrix``: PPD's cross-user win rates as a heatmap (conditioned-on user x judging user).
- ``interpolation_curves``: two users' mean rewards along an interpolation of their embeddings.

The charts come back as Pillow images (``.save(path)``), rendered at ``DPI`` to about 900 px wide,
legible in a README.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GRAY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
LINE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
BASE_COLOUR, ALIGNED_COLOUR = "#7f7f7f", "#1f77b4"
DPI = 100
WIDTH_INCHES = 9.0  # 900 px at DPI


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


def _figure(width_inches: float, height_inches: float):
    """A matplotlib ``Figure`` on an Agg canvas (no pyplot, so no global state and no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_inches, height_inches), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def _to_image(figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image.convert("RGB")


def _finite(points: Sequence[tuple[int, float | None]]) -> list[tuple[int, float]]:
    return [(s, float(v)) for s, v in points if v is not None and math.isfinite(v)]


def curves(series: dict[str, Sequence[tuple[int, float | None]]], title: str = "", height_inches: float = 4.0) -> Image.Image:
    """One panel per named series of (step, value) points that has a finite value (a metric the
    method does not log is left out), side by side: each step light, the moving average on top."""
    present = {name: _finite(points) for name, points in series.items()}
    present = {name: points for name, points in present.items() if points}
    figure = _figure(WIDTH_INCHES, height_inches)
    if title:
        figure.suptitle(title, fontsize=14)
    if not present:
        figure.text(0.5, 0.5, "no training metrics logged", ha="center", va="center", fontsize=12, color="0.4")
        return _to_image(figure)
    axes = figure.subplots(1, len(present), squeeze=False)[0]
    window = 1
    for index, (ax, (name, points)) in enumerate(zip(axes, present.items())):
        colour = LINE_COLOURS[index % len(LINE_COLOURS)]
        steps, values = zip(*points)
        if len(points) > 1:
            window = max(window, len(points) // 20)
            ax.plot(steps, values, color=colour, alpha=0.3, linewidth=1)
            smooth_steps, smooth = zip(*moving_average(points))
            ax.plot(smooth_steps, smooth, color=colour, linewidth=2)
        else:
            ax.plot(steps, values, "o", color=colour)
        ax.set_title(name, fontsize=12)
        ax.set_xlabel("optimiser step", fontsize=11)
        ax.set_ylabel(name.split(" (")[0], fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(True, color="0.9", linewidth=0.8)
        ax.margins(x=0.02)
    # one legend for all panels, under them, so that it hides no data
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.3", alpha=0.35, linewidth=1), Line2D([], [], color="0.3", linewidth=2)]
    figure.legend(handles, ["every step", f"trailing moving average ({window} steps)"], loc="lower center", ncol=2,
                  fontsize=10, frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return _to_image(figure)


def reward_distributions(before: Sequence[float], after: Sequence[float], title: str = "", bins: int = 20,
                         height_inches: float = 4.0) -> Image.Image:
    """Step histograms of the base (``before``) and aligned (``after``) judge rewards over the same
    bins, each mean a dashed vertical line quoted in the legend."""
    import numpy as np

    before = np.asarray([v for v in before if math.isfinite(v)], dtype=float)
    after = np.asarray([v for v in after if math.isfinite(v)], dtype=float)
    figure = _figure(WIDTH_INCHES, height_inches)
    ax = figure.subplots()
    both = np.concatenate([before, after])
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        for name, values, colour in (("base", before, BASE_COLOUR), ("aligned", after, ALIGNED_COLOUR)):
            if not values.size:
                continue
            ax.hist(values, bins=edges, histtype="stepfilled", color=colour, alpha=0.2)
            ax.hist(values, bins=edges, histtype="step", color=colour, linewidth=2,
                    label=f"{name} (n={values.size}, mean {values.mean():.3f})")
            ax.axvline(values.mean(), color=colour, linestyle="--", linewidth=1.5)
        ax.legend(fontsize=10, framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no rewards", ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.4")
    ax.set_title(title or "judge rewards of the evaluation images", fontsize=12)
    ax.set_xlabel("judge reward", fontsize=11)
    ax.set_ylabel("images", fontsize=11)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=10)
    ax.grid(True, axis="y", color="0.9", linewidth=0.8)
    figure.tight_layout()
    return _to_image(figure)


def win_rate_matrix(users: Sequence[str], rates: Sequence[Sequence[float]], title: str = "") -> Image.Image:
    """A heatmap of ``rates[a][b]``: the win rate over the base of the model conditioned on user a
    (rows), judged by user b (columns), 0.5 white; each cell quoted, the diagonal framed."""
    import numpy as np
    from matplotlib.patches import Rectangle

    values = np.asarray(rates, dtype=float)
    side = max(4.0, 0.8 * len(users) + 2.5)
    figure = _figure(side + 1.5, side)
    ax = figure.subplots()
    image = ax.imshow(values, cmap="RdBu", vmin=0.0, vmax=1.0)
    for a in range(len(users)):
        for b in range(len(users)):
            ax.text(b, a, f"{values[a, b]:.2f}", ha="center", va="center", fontsize=10,
                    color="white" if abs(values[a, b] - 0.5) > 0.3 else "black", fontweight="bold" if a == b else "normal")
        ax.add_patch(Rectangle((a - 0.5, a - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(range(len(users)), users, rotation=45, ha="right", fontsize=10)
    ax.set_yticks(range(len(users)), users, fontsize=10)
    ax.set_xlabel("judged by", fontsize=11)
    ax.set_ylabel("conditioned on", fontsize=11)
    ax.set_title(title or "win rate over the base model", fontsize=12)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return _to_image(figure)


def interpolation_curves(alphas: Sequence[float], rewards: dict[str, Sequence[float]], baselines: dict[str, float],
                         first: str, second: str) -> Image.Image:
    """Each user's mean reward (``rewards[user]``) on the images generated for
    u = (1 - alpha) u_first + alpha u_second, against alpha, as the gain over the base model's mean
    reward by the same judge (``baselines[user]``): the judges' scales differ, their trade-off shows."""
    figure = _figure(WIDTH_INCHES * 0.7, 4.0)
    ax = figure.subplots()
    for index, (user, values) in enumerate(rewards.items()):
        ax.plot(alphas, [value - baselines[user] for value in values], "o-", color=LINE_COLOURS[index % len(LINE_COLOURS)],
                linewidth=2, label=f"{user}'s judge")
    ax.axhline(0.0, color="0.5", linewidth=1, linestyle="--")
    ax.set_xlabel(f"alpha (0: {first}, 1: {second})", fontsize=11)
    ax.set_ylabel("mean reward - the base's", fontsize=11)
    ax.set_title(f"interpolating between users {first} and {second}", fontsize=12)
    ax.legend(fontsize=10)
    ax.grid(True, color="0.9", linewidth=0.8)
    figure.tight_layout()
    return _to_image(figure)
