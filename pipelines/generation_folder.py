"""The output folder of ``diffalign generate`` (``diffalign.pipelines.generate``): its images and their
listing, and what a rerun into it may do.

The folder holds ``{prompt_index}_{j}.png`` (``rewards.records.candidate_image_name``, so ``diffalign
score --images OUT --prompts PROMPTS.txt`` reads it) and ``generations.jsonl``, one row per image:
``prompt_index``, ``j``, ``prompt``, ``seed``, ``image`` (the file name: the row is also an image
listing row, so ``--images OUT/generations.jsonl`` works for any prompts source) and the settings that
decide the image (``SETTING_KEYS``) plus the device it ran on. Each PNG is written to a temporary name
and renamed, and its row is appended after the rename, so a killed run leaves whole images only (an
image without a row is generated again). A rerun with the same settings skips the listed images; one
with other settings (or another prompt at an index) stops, naming the setting (``check_same_settings``),
unless ``overwrite`` removes the listing and the ``{i}_{j}`` images (nothing else).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from diffalign.data.errors import DataError, disk_space_errors
from diffalign.errors import UsageError
from diffalign.rewards.records import parse_candidate_image_name

RECORDS_FILE = "generations.jsonl"
# settings recorded with every image that decide it; a folder holds images of one setting only
SETTING_KEYS = ("model", "revision", "lora", "negative_model", "negative_base", "merge_weight", "negative_prompt",
                "guidance", "steps", "scheduler", "height", "width", "dtype", "user_adapter", "user_embeddings", "user",
                "interpolate", "alpha", "user_shots", "user_scale")
OPTION_NAMES = {key: "--" + key.replace("_", "-") for key in SETTING_KEYS}
_PARTIAL = ".partial"


@dataclass
class Listing:
    """The listed images of a folder by ``(prompt_index, j)``, and whether ``generations.jsonl`` needs
    rewriting (rows of deleted images, a row cut off by a killed run, repeated rows)."""

    rows: dict[tuple[int, int], dict]
    stale: bool


def read_listing(out: str, overwrite: bool) -> Listing:
    """What ``out`` holds (nothing with ``overwrite`` or no folder). Images without a listing, or a row
    this runner did not write, are errors: what made them is unknown."""
    path = os.path.join(out, RECORDS_FILE)
    if overwrite or not os.path.isdir(out):
        return Listing({}, False)
    if not os.path.isfile(path):
        images = [name for name in os.listdir(out) if parse_candidate_image_name(name) is not None]
        if images:
            raise UsageError(f"--out {out} holds images ({images[0]}, ...) but no {RECORDS_FILE}, so what made them is "
                             "unknown: pass --overwrite to replace them, or give another --out")
        return Listing({}, False)
    rows: dict[tuple[int, int], dict] = {}
    stale = False
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (row["prompt_index"], row["j"])
            if not (all(isinstance(n, int) for n in key) and isinstance(row["image"], str)):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines) and not line.endswith("\n"):
                stale = True  # the last row of a killed run, cut off while written: its image is made again
                continue
            raise DataError(f"{path}:{number} is not a row diffalign generate wrote (prompt_index, j, image, ...): "
                            "pass --overwrite to start over, or give another --out") from None
        stale = stale or key in rows
        rows[key] = row
    for key, row in list(rows.items()):
        if not os.path.isfile(os.path.join(out, row["image"])):
            del rows[key]
            stale = True
    return Listing(rows, stale)


def check_same_settings(out: str, listing: Listing, recorded: dict[str, Any], prompts: list[str],
                        seed_of: Callable[[int, int], int]) -> None:
    """Stop, naming the first differing setting, when ``out`` holds images made otherwise than with
    ``recorded``, ``prompts`` and the seeds ``seed_of(prompt_index, j)``."""
    def shown(key: str, value) -> str:
        return "none" if value is None else repr(value) if isinstance(value, str) else str(value)

    advice = "pass --overwrite to start over there, or give another --out"
    for (prompt_index, j), row in sorted(listing.rows.items()):
        for key in SETTING_KEYS:
            if key not in row or row[key] != recorded[key]:
                was = shown(key, row[key]) if key in row else "(not recorded)"
                raise UsageError(f"--out {out} holds images made with {OPTION_NAMES[key]} {was}, not {shown(key, recorded[key])} "
                                 f"as now: {advice}")
        if prompt_index < len(prompts) and row.get("prompt") != prompts[prompt_index]:
            raise UsageError(f"--out {out} holds images of prompt {prompt_index} {row.get('prompt')!r}, but the prompt at "
                             f"that index is now {prompts[prompt_index]!r}: {advice}")
        seed = seed_of(prompt_index, j)
        if row.get("seed") != seed:
            first_seed = seed_of(0, 0)  # --seed
            was = first_seed + row["seed"] - seed if isinstance(row.get("seed"), int) else "(not recorded)"
            raise UsageError(f"--out {out} holds images made with --seed {was}, not {first_seed} as now: {advice}")


def prepare_folder(out: str, overwrite: bool) -> None:
    """Create ``out`` and remove the partial files of a killed run; with ``overwrite`` also the listing and
    the ``{i}_{j}`` images (anything else stays)."""
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if _is_partial(name) or (overwrite and (name == RECORDS_FILE or parse_candidate_image_name(name) is not None)):
            os.remove(os.path.join(out, name))


def _is_partial(name: str) -> bool:
    """A file written before its rename: ``.{i}_{j}.png.partial``, ``generations.jsonl.partial``."""
    if not name.endswith(_PARTIAL):
        return False
    written = name[: -len(_PARTIAL)]
    return written == RECORDS_FILE or (written.startswith(".") and parse_candidate_image_name(written[1:]) is not None)


def rewrite_listing(out: str, listing: Listing) -> None:
    """Replace ``generations.jsonl`` by the rows of ``listing`` in ``(prompt_index, j)`` order, atomically."""
    path = os.path.join(out, RECORDS_FILE)
    partial = f"{path}{_PARTIAL}"
    with open(partial, "w", encoding="utf-8") as handle:
        for key in sorted(listing.rows):
            handle.write(json.dumps(listing.rows[key]) + "\n")
    os.replace(partial, path)


def save_image(image, out: str, name: str) -> None:
    """Write ``image`` as ``out/name`` (PNG) atomically: a partial file, then a rename."""
    path = os.path.join(out, name)
    partial = os.path.join(out, f".{name}{_PARTIAL}")
    with disk_space_errors(out, what="the images", cleanup=lambda: os.path.exists(partial) and os.remove(partial)):
        image.save(partial, format="PNG")
        os.replace(partial, path)
