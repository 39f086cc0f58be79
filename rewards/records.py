"""Image listings for ``diffalign score`` / ``diffalign pairs``: which image goes with which prompt.

Three layouts:

- a jsonl manifest, one object per line with ``image`` (a path, relative to the jsonl's folder unless
  absolute) and ``prompt`` (or ``--prompt`` for all rows); other keys are ignored;
- a folder of images (``.png .jpg .jpeg .webp .bmp``) with ``--prompts FILE`` (one prompt per
  non-empty line): every image must be named ``{prompt_index}_{j}.{ext}`` (``candidate_image_name``),
  ``prompt_index`` counting the file's non-empty lines from 0 and ``j`` the candidate number. Images are
  matched to prompts by that index, never by their count or position, so a deleted image cannot shift
  the others onto the wrong prompt; a name that does not parse, an index outside the prompts file or
  two files for one (prompt_index, j) is an error. The images of a prompt are ordered by ``j`` (gaps
  are fine); prompts with no image are listed in ``ImageListing.prompts_without_images``.
- a folder of images with ``--prompt TEXT`` for all of them: any names, natural sort order.

``candidate_image_name`` / ``parse_candidate_image_name`` define the ``{prompt_index}_{j}.{ext}``
layout for every writer of candidate folders (``diffalign generate``) and for the reader here. Leading
zeros are accepted (``0007_1.png`` is prompt 7, candidate 1), so zero-padded folders read too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from diffalign.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CANDIDATE_NAME_LAYOUT = "{prompt_index}_{j}.{ext}"
_CANDIDATE_NAME = re.compile(r"(\d+)_(\d+)\.([A-Za-z]+)")


class RecordError(UserError, ValueError):
    """An image listing that cannot be read, naming the file, row and field at fault."""


@dataclass(frozen=True)
class ImageRecord:
    """One image to score: its absolute ``path``, its ``prompt``, ``where`` it was listed (for errors) and,
    for a folder read with ``--prompts FILE``, the ``prompt_index`` of its prompt in that file (two
    identical lines of the file are two prompts; ``None`` where the prompt is given as text)."""

    path: str
    prompt: str
    where: str
    prompt_index: int | None = None


@dataclass
class ImageListing:
    """The records of a listing, plus the prompts (0-based indices into ``--prompts FILE``) with no image."""

    records: list[ImageRecord]
    prompt_count: int | None = None  # prompts in --prompts FILE (None for a jsonl or --prompt)
    prompts_without_images: list[int] = field(default_factory=list)


def candidate_image_name(prompt_index: int, j: int, ext: str = "png") -> str:
    """``{prompt_index}_{j}.{ext}``: the file name of candidate ``j`` of prompt ``prompt_index`` (both from 0)."""
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt_index, j)):
        raise ValueError(f"prompt_index and j must be integers >= 0, got {prompt_index!r} and {j!r}")
    ext = ext.lstrip(".")
    if "." + ext.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"image extension must be one of {' '.join(IMAGE_EXTENSIONS)}, got {ext!r}")
    return f"{prompt_index}_{j}.{ext}"


def parse_candidate_image_name(name: str) -> tuple[int, int] | None:
    """``(prompt_index, j)`` of a ``{prompt_index}_{j}.{ext}`` image file name (a base name, any image
    extension, any case, leading zeros allowed); ``None`` for any other name."""
    match = _CANDIDATE_NAME.fullmatch(name)
    if match is None or "." + match.group(3).lower() not in IMAGE_EXTENSIONS:
        return None
    return int(match.group(1)), int(match.group(2))


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_prompts_file(path: str) -> list[str]:
    """Non-empty lines of a text file, stripped."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError as error:
        raise RecordError(f"cannot read prompts file {path}: {error.strerror or error}") from error


def read_jsonl_rows(path: str) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` for each non-empty line of a jsonl file: ``where`` is ``path:line`` (for error
    messages), ``row`` the parsed JSON value. A line that is not JSON is a ``RecordError`` naming it."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{where}: invalid JSON ({error.msg})") from error
            yield where, row


def _read_jsonl(path: str, prompt: str | None) -> list[ImageRecord]:
    root = os.path.dirname(os.path.abspath(path))
    records = []
    for where, row in read_jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise RecordError(f"{where}: missing string field 'image'")
        row_prompt = row.get("prompt", prompt)
        if not isinstance(row_prompt, str):
            raise RecordError(f"{where}: missing string field 'prompt' (or pass --prompt)")
        records.append(ImageRecord(os.path.join(root, row["image"]), row_prompt, where))
    return records


def _image_names(folder: str) -> list[str]:
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)), key=_natural_key)
    if not names:
        raise RecordError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    return names


def _read_folder_one_prompt(folder: str, prompt: str) -> list[ImageRecord]:
    root = os.path.abspath(folder)
    return [ImageRecord(os.path.join(root, name), prompt, os.path.join(folder, name)) for name in _image_names(folder)]


def _read_folder_by_index(folder: str, prompts: list[str], prompts_file: str) -> ImageListing:
    """Images named ``{prompt_index}_{j}.{ext}`` matched to ``prompts`` by index (see the module docstring)."""
    valid = f"0..{len(prompts) - 1}" if len(prompts) > 1 else "0"
    by_key: dict[tuple[int, int], str] = {}
    unparsed, out_of_range = [], []
    for name in _image_names(folder):
        key = parse_candidate_image_name(name)
        if key is None:
            unparsed.append(name)
        elif key[0] >= len(prompts):
            out_of_range.append((name, key[0]))
        elif key in by_key:
            raise RecordError(
                f"{os.path.join(folder, name)} and {os.path.join(folder, by_key[key])} are both candidate {key[1]} of prompt {key[0]}: "
                "keep one image per (prompt_index, j)"
            )
        else:
            by_key[key] = name
    if unparsed:
        others = f" (and {len(unparsed) - 1} other image file(s))" if len(unparsed) > 1 else ""
        raise RecordError(
            f"{os.path.join(folder, unparsed[0])}{others} is not named {CANDIDATE_NAME_LAYOUT}, which --prompts needs "
            f"to match images to prompts (prompt_index: {valid}, the non-empty lines of {prompts_file} counted from 0; "
            f"j: the candidate number); rename the images so, or list them in a .jsonl manifest of "
            f'{{"image": ..., "prompt": ...}} rows'
        )
    if out_of_range:
        name, index = out_of_range[0]
        others = f" (and {len(out_of_range) - 1} other image file(s))" if len(out_of_range) > 1 else ""
        raise RecordError(
            f"{os.path.join(folder, name)}{others} names prompt index {index}, but {prompts_file} has "
            f"{len(prompts)} prompt(s) (indices {valid}, its non-empty lines counted from 0)"
        )
    root = os.path.abspath(folder)
    records = [
        ImageRecord(os.path.join(root, by_key[key]), prompts[key[0]], os.path.join(folder, by_key[key]), key[0])
        for key in sorted(by_key)
    ]
    used = {key[0] for key in by_key}
    return ImageListing(records, len(prompts), [index for index in range(len(prompts)) if index not in used])


def read_image_listing(images: str, prompts_file: str | None = None, prompt: str | None = None) -> ImageListing:
    """The (image, prompt) records of a jsonl manifest or a folder (see the module docstring), and, for a
    folder with ``--prompts FILE``, the prompts that have no image."""
    if prompts_file is not None and prompt is not None:
        raise RecordError("give --prompts FILE or --prompt TEXT, not both")
    if os.path.isdir(images):
        if prompt is not None:
            return ImageListing(_read_folder_one_prompt(images, prompt))
        if prompts_file is None:
            raise RecordError(f"{images} is a folder: give --prompts FILE or --prompt TEXT")
        prompts = read_prompts_file(prompts_file)
        if not prompts:
            raise RecordError(f"prompts file {prompts_file} has no prompts")
        return _read_folder_by_index(images, prompts, prompts_file)
    if os.path.isfile(images) and images.endswith(".jsonl"):
        if prompts_file is not None:
            raise RecordError("a jsonl listing carries its prompts: use its 'prompt' field or --prompt, not --prompts")
        return ImageListing(_read_jsonl(images, prompt))
    raise RecordError(f"--images must be a folder of images or a .jsonl listing, got {images!r}")


def read_image_records(images: str, prompts_file: str | None = None, prompt: str | None = None) -> list[ImageRecord]:
    """The records of ``read_image_listing`` alone (without the prompts that have no image)."""
    return read_image_listing(images, prompts_file, prompt).records
