"""Reading preference data into resolved rows: which image won, with which prompt (and scores).

Two schemas are read:

- **Pick-a-Pic v2** (``yuvalkirstain/pickapic_v2``): ``caption``, ``jpg_0``, ``jpg_1`` (image bytes),
  ``label_0`` in {0, 0.5, 1}. ``label_0 == 1`` means jpg_0 won, ``label_0 == 0`` means jpg_1 won; ties
  (0.5) are dropped and counted, never turned into a winner (spec §1.5, Q6). Optional reward scores
  ``ps_score_0``/``ps_score_1`` (floats or 1-element lists, as SmPO's preprocessing stores them).
  Read through ``datasets``: a hub id, a ``save_to_disk`` folder, a parquet file or a data folder.
- **diffalign jsonl**: one object per line, ``{"prompt", "chosen", "rejected"}`` with image paths
  relative to the file's folder, optionally ``chosen_score``/``rejected_score`` (what ``diffalign
  pairs`` writes); or ``{"prompt", "image"}`` rows for single-image data (SFT).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from tqdm.auto import tqdm

from diffalign.data.errors import DataError, SkipReport
from diffalign.data.images import decode_image

PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")


@dataclass
class ImageRow:
    """One training example: a prompt and one or two images (fields of ``table[row]``)."""

    row: int
    prompt: str
    chosen_field: str
    rejected_field: Optional[str] = None
    chosen_score: Optional[float] = None
    rejected_score: Optional[float] = None


@dataclass
class ImageSource:
    """A table (a ``datasets.Dataset`` or a list of dicts) and the rows resolved from it."""

    name: str
    table: Any
    rows: list[ImageRow]
    base_dir: Optional[str]
    skipped: SkipReport

    def image(self, row: int, field: str):
        return decode_image(self.table[row][field], f"{self.name}: {row_name(self.table, row)}, field {field!r}", self.base_dir)


def row_name(table, row: int) -> str:
    """How errors name a row: jsonl records count from 1 (blank lines skipped), dataset rows from 0."""
    return f"record {row + 1}" if isinstance(table, list) else f"row {row}"


def load_image_source(data: str, split: str = "train", need_scores: bool = False, single_images: bool = False,
                      skip_bad_rows: bool = False, max_rows: Optional[int] = None) -> ImageSource:
    """Resolve ``data`` into rows; ``single_images`` keeps only the preferred image of pairs."""
    if not data:
        raise DataError("no data given: pass --data PATH_OR_HUB_ID")
    if data.endswith((".jsonl", ".json")) and os.path.isfile(data):
        table = read_jsonl(data)
        base_dir = os.path.dirname(os.path.abspath(data))
    else:
        table = load_hf_dataset(data, split)
        base_dir = data if os.path.isdir(data) else None
    skipped = SkipReport()
    rows = _resolve_rows(data, table, need_scores, single_images, skip_bad_rows, skipped)
    source = ImageSource(data, table, rows, base_dir, skipped)
    if skip_bad_rows:
        _drop_undecodable(source)
    if max_rows is not None:
        source.rows = source.rows[:max_rows]
    if not source.rows:
        raise DataError(f"{data}: no usable rows ({skipped.summary()})")
    return source


def read_jsonl(path: str) -> list[dict]:
    table = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {number} is not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {number} is not a JSON object")
            table.append(record)
    return table


def load_hf_dataset(data: str, split: str):
    import datasets

    try:
        if os.path.isdir(data) and any(
            os.path.isfile(os.path.join(data, marker)) for marker in ("dataset_info.json", "state.json", "dataset_dict.json")
        ):
            loaded = datasets.load_from_disk(data)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{data}: no split {split!r} (splits: {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded
        if os.path.isfile(data) and data.endswith(".parquet"):
            return datasets.load_dataset("parquet", data_files=data, split="train")
        if os.path.exists(data):
            return datasets.load_dataset(data, split=split)
        if data.count("/") != 1 or data.startswith((".", "/")):
            raise DataError(f"data {data!r} is neither a local file or folder nor a hub dataset id (owner/name)")
        return datasets.load_dataset(data, split=split)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"could not load data {data!r}: {type(error).__name__}: {error}") from error


def _columns(table) -> Sequence[str]:
    if isinstance(table, list):
        return sorted({key for record in table for key in record})
    return table.column_names


def _resolve_rows(name, table, need_scores, single_images, skip_bad_rows, skipped) -> list[ImageRow]:
    columns = _columns(table)
    if isinstance(table, list) and table and "jpg_0" not in columns:
        return _resolve_jsonl_rows(name, table, need_scores, single_images, skip_bad_rows, skipped)
    missing = [column for column in PICKAPIC_COLUMNS if column not in columns]
    if missing:
        raise DataError(
            f"{name}: missing column(s) {', '.join(repr(m) for m in missing)}; expected the Pick-a-Pic v2 schema "
            f"{PICKAPIC_COLUMNS} or a diffalign jsonl; found columns: {', '.join(columns)}"
        )
    if need_scores and not {"ps_score_0", "ps_score_1"} <= set(columns):
        raise DataError(f"{name}: this method needs reward scores: columns 'ps_score_0' and 'ps_score_1' are missing")
    captions = _column(table, "caption")
    labels = _column(table, "label_0")
    scores = (_column(table, "ps_score_0"), _column(table, "ps_score_1")) if need_scores else None

    def resolve(index: int) -> Optional[ImageRow]:
        prompt = _prompt(captions[index], name, index, "caption")
        winner = _pickapic_winner(labels[index], name, index)
        if winner is None:
            skipped.add("ties (label_0 = 0.5)", f"row {index}")
            return None
        loser = 1 - winner
        row = ImageRow(index, prompt, f"jpg_{winner}", None if single_images else f"jpg_{loser}")
        if scores is not None:
            row.chosen_score = _score(scores[winner][index], name, index, f"ps_score_{winner}")
            row.rejected_score = _score(scores[loser][index], name, index, f"ps_score_{loser}")
        return row

    return _resolve_all(resolve, len(labels), skip_bad_rows, skipped)


def _resolve_jsonl_rows(name, table, need_scores, single_images, skip_bad_rows, skipped) -> list[ImageRow]:
    def resolve(index: int) -> ImageRow:
        record = table[index]
        where = f"{name}: {row_name(table, index)}"
        prompt = _prompt(record.get("prompt"), name, index, "prompt", where)
        if "image" in record and "chosen" not in record:
            if not single_images:
                raise DataError(f"{where}: has a single 'image'; this method needs 'chosen' and 'rejected' images")
            return ImageRow(index, prompt, "image")
        for field in ("chosen", "rejected"):
            if not record.get(field):
                raise DataError(f"{where}: missing field {field!r}")
        row = ImageRow(index, prompt, "chosen", None if single_images else "rejected")
        if need_scores:
            for field in ("chosen_score", "rejected_score"):
                if field not in record:
                    raise DataError(f"{where}: missing field {field!r} (this method needs reward scores)")
            row.chosen_score = _score(record["chosen_score"], name, index, "chosen_score", where)
            row.rejected_score = _score(record["rejected_score"], name, index, "rejected_score", where)
        return row

    return _resolve_all(resolve, len(table), skip_bad_rows, skipped)


def _resolve_all(resolve, count: int, skip_bad_rows: bool, skipped: SkipReport) -> list[ImageRow]:
    """``resolve(index)`` for every row; a ``DataError`` fails the load, or with ``skip_bad_rows`` is
    counted as a skipped row. ``resolve`` returns None for rows it skipped (and counted) itself."""
    rows = []
    for index in range(count):
        try:
            row = resolve(index)
        except DataError as error:
            if not skip_bad_rows:
                raise
            skipped.add("bad rows", str(error))
            continue
        if row is not None:
            rows.append(row)
    return rows


def _column(table, column: str) -> list:
    return [record.get(column) for record in table] if isinstance(table, list) else table[column]


def _prompt(value, name, index, field, where=None) -> str:
    if not isinstance(value, str):
        where = where or f"{name}: row {index}"
        raise DataError(f"{where}, field {field!r}: expected a string, got {type(value).__name__}")
    return value


def _pickapic_winner(label, name, index) -> Optional[int]:
    """0 or 1 (the winning image's suffix), or None for a tie."""
    if isinstance(label, (int, float)) and not isinstance(label, bool) and not math.isnan(label):
        if label == 1:
            return 0
        if label == 0:
            return 1
        if label == 0.5:
            return None
    raise DataError(f"{name}: row {index}, field 'label_0': expected 0, 0.5 or 1, got {label!r}")


def _score(value, name, index, field, where=None) -> float:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    where = where or f"{name}: row {index}"
    raise DataError(f"{where}, field {field!r}: expected a finite number, got {value!r}")


def _drop_undecodable(source: ImageSource) -> None:
    """Decode every image once (``--skip-bad-rows``) and drop the rows with an unreadable one."""
    kept = []
    for row in tqdm(source.rows, desc="checking images", leave=False):
        try:
            for field in (row.chosen_field, row.rejected_field):
                if field is not None:
                    source.image(row.row, field)
        except DataError as error:
            source.skipped.add("undecodable images", str(error))
            continue
        kept.append(row)
    source.rows = kept
