"""Reading a data source into a ``Table``: the rows a data format validates and turns into examples.

Sources: a jsonl file (one JSON object per line, blank lines skipped), a ``.txt`` file (one prompt
per line, read as ``{"prompt": line}`` rows), a parquet file, a ``datasets.save_to_disk`` folder (a
``DatasetDict`` picks ``split``), another local dataset folder, or a hub dataset id (owner/name).
Relative image paths in a jsonl resolve against the file's folder.

Errors name a row the way its source counts: ``line N`` of a jsonl or txt file (the line number an
editor shows, blank lines included), ``row N`` of a dataset or list (its index, from 0, as
``dataset[N]``). A latent cache names the source row each cached row came from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from diffalign.data.errors import DataError

SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class Table:
    """Rows of a data source: a ``datasets.Dataset`` or a list of dicts (jsonl, txt, a latent cache).

    ``encoded`` is the ``LatentCache`` whose rows these are (image fields hold cache references and
    prompts have stored embeddings), None for ordinary sources."""

    name: str
    records: Any
    base_dir: Optional[str] = None
    encoded: Any = None
    locations: Optional[list[str]] = None  # how errors name each row ("line 7"), when not "row <index>"

    def __len__(self) -> int:
        return len(self.records)

    def row(self, index: int) -> dict:
        return dict(self.records[index])

    @property
    def columns(self) -> Sequence[str]:
        if isinstance(self.records, list):
            return sorted({key for record in self.records for key in record})
        return self.records.column_names

    def column(self, name: str) -> list:
        if isinstance(self.records, list):
            return [record.get(name) for record in self.records]
        return self.records[name]

    def where(self, index: int) -> str:
        """How errors name a row: "<source>: line N" for files read by line, else "<source>: row <index>"."""
        return f"{self.name}: {self.locations[index] if self.locations is not None else f'row {index}'}"


def read_table(data: str, split: str = "train") -> Table:
    """The rows of ``data``; an empty source is an error (it has nothing to train on)."""
    if not data:
        raise DataError("no data given: pass --data PATH_OR_HUB_ID")
    if os.path.isfile(data) and data.endswith((".jsonl", ".json", ".txt")):
        read = read_prompt_lines if data.endswith(".txt") else read_jsonl
        records, lines = read(data)
        table = Table(data, records, os.path.dirname(os.path.abspath(data)), locations=[f"line {n}" for n in lines])
    else:
        table = Table(data, load_hf_dataset(data, split), data if os.path.isdir(data) else None)
    if not len(table):
        raise DataError(f"{data}: the data has no rows (an empty file or split)")
    return table


def read_jsonl(path: str) -> tuple[list[dict], list[int]]:
    """The JSON objects of the non-blank lines, and their line numbers."""
    table, lines = [], []
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
            lines.append(number)
    return table, lines


def read_prompt_lines(path: str) -> tuple[list[dict], list[int]]:
    """``{"prompt": line}`` for every non-blank line (surrounding white space removed), and the line numbers."""
    with open(path, encoding="utf-8") as handle:
        numbered = [(number, line.strip()) for number, line in enumerate(handle, start=1) if line.strip()]
    return [{"prompt": prompt} for _, prompt in numbered], [number for number, _ in numbered]


def load_hf_dataset(data: str, split: str):
    import datasets

    try:
        if os.path.isdir(data) and any(os.path.isfile(os.path.join(data, marker)) for marker in SAVE_TO_DISK_MARKERS):
            loaded = datasets.load_from_disk(data)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{data}: no split {split!r} (splits: {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded
        if os.path.isfile(data) and data.endswith(".parquet"):
            if parquet_rows(data) == 0:
                raise DataError(f"{data}: the data has no rows (an empty parquet file)")
            return datasets.load_dataset("parquet", data_files=data, split="train")
        if os.path.exists(data):
            return datasets.load_dataset(data, split=split)
        if data.count("/") != 1 or data.startswith((".", "/")):
            raise DataError(f"data {data!r} is neither a local file or folder nor a hub dataset id (owner/name)")
        return datasets.load_dataset(data, split=split)
    except DataError:
        raise
    except Exception as error:
        if any("BatchSize must be greater than 0" in str(link) for link in (error, error.__cause__, error.__context__)):
            raise DataError(f"{data}: the data has no rows (empty parquet files or split {split!r})") from error
        raise DataError(f"could not load data {data!r}: {type(error).__name__}: {error}") from error


def parquet_rows(path: str) -> int:
    """The row count in a parquet file's footer (nothing else is read)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as error:
        raise DataError(f"{path}: not a readable parquet file ({type(error).__name__}: {error})") from error
