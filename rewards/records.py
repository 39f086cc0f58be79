"""Image listings for ``diffalign score`` / ``diffalign pairs``: which image goes with which prompt.

Two layouts:

- a jsonl file, one object per line with ``image`` (a path, relative to the jsonl's folder unless
  absolute) and ``prompt`` (or ``--prompt`` for all rows); other keys are ignored;
- a folder of images (``.png .jpg .jpeg .webp .bmp``, natural sort order) with ``--prompt TEXT`` for
  all of them, or ``--prompts FILE`` (one prompt per line): N prompts and k * N images give image
  ``i`` to prompt ``i // k``, i.e. k consecutive candidates per prompt.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from diffalign.rewards.images import IMAGE_EXTENSIONS


class RecordError(ValueError):
    """An image listing that cannot be read, naming the file, row and field at fault."""


@dataclass(frozen=True)
class ImageRecord:
    """One image to score: its absolute ``path``, its ``prompt`` and ``where`` it was listed (for errors)."""

    path: str
    prompt: str
    where: str


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_prompts_file(path: str) -> list[str]:
    """Non-empty lines of a text file, stripped."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError as error:
        raise RecordError(f"cannot read prompts file {path}: {error.strerror or error}") from error


def _read_jsonl(path: str, prompt: str | None) -> list[ImageRecord]:
    root = os.path.dirname(os.path.abspath(path))
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{where}: invalid JSON ({error.msg})") from error
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise RecordError(f"{where}: missing string field 'image'")
            row_prompt = row.get("prompt", prompt)
            if not isinstance(row_prompt, str):
                raise RecordError(f"{where}: missing string field 'prompt' (or pass --prompt)")
            records.append(ImageRecord(os.path.join(root, row["image"]), row_prompt, where))
    return records


def _read_folder(folder: str, prompts: list[str]) -> list[ImageRecord]:
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)), key=_natural_key)
    if not names:
        raise RecordError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    if len(names) % len(prompts):
        raise RecordError(
            f"{len(names)} images in {folder} cannot be split evenly over {len(prompts)} prompts "
            "(expected k consecutive images per prompt, or a jsonl listing)"
        )
    per_prompt = len(names) // len(prompts)
    return [
        ImageRecord(os.path.join(os.path.abspath(folder), name), prompts[index // per_prompt], os.path.join(folder, name))
        for index, name in enumerate(names)
    ]


def read_image_records(images: str, prompts_file: str | None = None, prompt: str | None = None) -> list[ImageRecord]:
    """The (image, prompt) list of a jsonl listing or a folder (see the module docstring)."""
    if prompts_file is not None and prompt is not None:
        raise RecordError("give --prompts FILE or --prompt TEXT, not both")
    if os.path.isdir(images):
        if prompts_file is None and prompt is None:
            raise RecordError(f"{images} is a folder: give --prompts FILE or --prompt TEXT")
        prompts = read_prompts_file(prompts_file) if prompts_file is not None else [prompt]
        if not prompts:
            raise RecordError(f"prompts file {prompts_file} has no prompts")
        return _read_folder(images, prompts)
    if os.path.isfile(images) and images.endswith(".jsonl"):
        if prompts_file is not None:
            raise RecordError("a jsonl listing carries its prompts: use its 'prompt' field or --prompt, not --prompts")
        return _read_jsonl(images, prompt)
    raise RecordError(f"--images must be a folder of images or a .jsonl listing, got {images!r}")
