"""The latent and text-embedding cache: the VAE and the text encoders run once, training reads the result.

``build_cache`` (``diffalign cache``) validates a data source with a data format, then stores

- per image (each image of each valid row, once): the VAE posterior's mean and std of the centre
  crop at the training resolution, and with ``random_flip`` also of its mirror image, so that training
  draws the same flips as from images (``diffalign.data.examples``) and samples the posterior with the
  same generator draws (``DiffusionModel.encode_batch``);
- per unique prompt (captions and negative prompts, plus the empty prompt that caption dropout swaps
  in): the text conditioning (``prompt_embeds``; for SDXL also the pooled ``text_embeds`` and the
  ``time_ids`` crop/size numbers);
- the valid rows themselves (``rows.jsonl``), their image fields replaced by references into the
  cache, so every data format reads a cache as it reads the source: ``diffalign train --data DIR``.

Tensors are float32 in safetensors shards (``latents-NNNNN.safetensors``, ``text-NNNNN.safetensors``,
``shard_size`` rows each), read lazily through memory maps. ``cache.json`` records the fingerprint:
the encoders' identity (``diffalign.diffusion.fingerprint``), the resolution, crop and flip settings,
the data source and format. Training refuses a cache whose fingerprint does not match the run. The
folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from diffalign.data.errors import DataError, disk_space_errors
from diffalign.data.examples import ImageOptions
from diffalign.data.registry import get_format
from diffalign.data.images import decode_image, training_transform
from diffalign.data.tables import Table, read_table

CACHE_FILE = "cache.json"
ROWS_FILE = "rows.jsonl"
CACHE_VERSION = 1
SOURCE_ROW = "diffalign_source_row"
"""Key of each cached row's origin ("pairs.jsonl: line 7"), which errors about the row name."""
IMAGE_REFERENCE = "diffalign_cache_image"
"""Key of the ``{IMAGE_REFERENCE: n}`` value that replaces an image field in the cached rows."""


def is_latent_cache(path: str) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, CACHE_FILE))


class CacheMismatchError(DataError):
    """The cache was built for another model, resolution or set of augmentations."""


# ------------------------------------------------------------------------------------------ reading
class _Shards:
    """Rows of tensors spread over safetensors files of ``shard_size`` rows, opened lazily per process."""

    def __init__(self, folder: str, files: Sequence[str], shard_size: int):
        self.paths = [os.path.join(folder, name) for name in files]
        self.shard_size = shard_size
        self._handles: dict[int, Any] = {}
        self._pid = None

    def row(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        if self._pid != os.getpid():  # DataLoader workers open their own memory maps
            self._handles, self._pid = {}, os.getpid()
        shard, offset = divmod(index, self.shard_size)
        if shard not in self._handles:
            self._handles[shard] = safe_open(self.paths[shard], framework="pt")
        handle = self._handles[shard]
        return {name: handle.get_slice(name)[offset : offset + 1][0] for name in handle.keys()}


class LatentCache:
    """A cache folder opened for training: ``table()`` is read by the data formats like any source."""

    def __init__(self, folder: str):
        try:
            with open(os.path.join(folder, CACHE_FILE)) as handle:
                self.info = json.load(handle)
            with open(os.path.join(folder, ROWS_FILE)) as handle:
                self.rows = [json.loads(line) for line in handle if line.strip()]
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"{folder}: not a readable diffalign latent cache ({error}); rebuild it with `diffalign cache`") from error
        if self.info.get("version") != CACHE_VERSION:
            raise DataError(f"{folder}: latent cache version {self.info.get('version')!r}, this diffalign reads {CACHE_VERSION}")
        self.folder = folder
        self.prompt_index = {prompt: index for index, prompt in enumerate(self.info["prompts"])}
        self.images = _Shards(folder, self.info["image_shards"], self.info["shard_size"])
        self.texts = _Shards(folder, self.info["text_shards"], self.info["shard_size"])

    def table(self) -> Table:
        """The cached rows; errors name the cache and the source row a cached row came from."""
        rows = [{key: value for key, value in row.items() if key != SOURCE_ROW} for row in self.rows]
        return Table(self.folder, rows, None, encoded=self, locations=[f"from {row[SOURCE_ROW]}" for row in self.rows])

    def latents(self, value: Any, flip: bool, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the image referenced by ``value``, mirrored if ``flip``."""
        if not (isinstance(value, dict) and isinstance(value.get(IMAGE_REFERENCE), int)):
            raise DataError(f"{where}: this field holds no cached image (rebuild the cache with the data format that reads it)")
        row = self.images.row(value[IMAGE_REFERENCE])
        if flip:
            return row["flipped_mean"], row["flipped_std"]
        return row["mean"], row["std"]

    def conditioning(self, prompt: str) -> dict[str, torch.Tensor]:
        """The stored text conditioning of ``prompt`` (tensors without a batch axis)."""
        if prompt not in self.prompt_index:
            raise DataError(f"{self.folder}: prompt {prompt!r:.80} is not in the cache")
        return self.texts.row(self.prompt_index[prompt])

    def conditioning_rows(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The conditioning of several prompts, stacked (zero rows, shaped like the empty prompt's, for none)."""
        rows = [self.conditioning(prompt) for prompt in prompts]
        if rows:
            return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}
        return {name: tensor[:0] for name, tensor in self.empty_conditioning().items()}

    def check_compatible(self, encoders: dict[str, str], resolution: Optional[int], center_crop: bool,
                         random_flip: bool) -> int:
        """Refuse a run this cache cannot serve, naming the mismatch; returns the cached resolution."""
        info, where = self.info, f"the latent cache {self.folder}"
        rebuild = f"rebuild it with `diffalign cache --model ... --data {info['source']['data']} --output DIR`"
        if resolution is not None and resolution != info["resolution"]:
            raise CacheMismatchError(f"{where} holds {info['resolution']} px latents but --resolution is {resolution}; "
                                     f"drop --resolution or {rebuild} --resolution {resolution}")
        if not center_crop:
            raise CacheMismatchError(f"{where} holds centre crops: random crops (--no-center-crop) need images, not a cache")
        if random_flip and not info["random_flip"]:
            raise CacheMismatchError(f"{where} holds no mirrored latents (built with --no-random-flip); "
                                     f"pass --no-random-flip or {rebuild}")
        for component in sorted(set(encoders) | set(info["encoders"])):
            if encoders.get(component) != info["encoders"].get(component):
                raise CacheMismatchError(
                    f"{where} was built with another {component} (model {info['model']!r}): its latents or embeddings "
                    f"do not belong to this model's; {rebuild}"
                )
        return info["resolution"]

    def empty_conditioning(self) -> dict[str, torch.Tensor]:
        """The empty prompt's conditioning, one row."""
        return {name: tensor[None] for name, tensor in self.conditioning("").items()}


# ------------------------------------------------------------------------------------------ writing
def guess_format(table: Table) -> str:
    """The diffusion data format a source's fields suggest: pairs, captioned images, single images or prompts."""
    columns = set(table.columns)
    if {"jpg_0", "jpg_1"} <= columns or {"chosen", "rejected"} <= columns:
        return "image_pairs"
    if {"image", "negative_prompts"} <= columns:
        return "captioned_images"
    if "image" in columns:
        return "chosen_images"
    return "prompts"


class _ShardWriter:
    def __init__(self, folder: str, prefix: str, shard_size: int, expected_rows: Optional[int] = None):
        self.folder, self.prefix, self.shard_size = folder, prefix, shard_size
        self.pending: list[dict[str, torch.Tensor]] = []
        self.files: list[str] = []
        self.expected_rows, self.written_rows = expected_rows, 0

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        """Rows given as tensors with a leading row axis."""
        count = len(next(iter(rows.values())))
        for index in range(count):
            self.pending.append({name: tensor[index].float().cpu().contiguous() for name, tensor in rows.items()})
            if len(self.pending) == self.shard_size:
                self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f"{self.prefix}-{len(self.files):05d}.safetensors"
        tensors = {key: torch.stack([row[key] for row in self.pending]) for key in self.pending[0]}
        with _disk_errors(self.folder, lambda: self._needed_bytes(tensors)):
            save_file(tensors, os.path.join(self.folder, name))
        self.files.append(name)
        self.written_rows += len(self.pending)
        self.pending = []

    def _needed_bytes(self, tensors: dict[str, torch.Tensor]) -> int:
        """The folder so far plus this writer's rows from this shard on (at least this shard)."""
        shard = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        rows = max(len(self.pending), (self.expected_rows or 0) - self.written_rows)
        return _folder_bytes(self.folder) + shard * rows // max(1, len(self.pending))


def _disk_errors(temporary: str, needed):
    """A full disk while writing the cache: one sentence naming the output folder, the free and needed
    bytes, and the partial (temporary) folder removed, as it cannot be resumed."""
    return disk_space_errors(temporary.rsplit(".tmp-", 1)[0], needed, "the latent cache",
                             cleanup=lambda: shutil.rmtree(temporary, ignore_errors=True),
                             hint="free some space or choose another --output")


def _folder_bytes(folder: str) -> int:
    """The disk space the folder's files take (allocated blocks, not just their lengths)."""
    return sum(max(entry.stat().st_size, entry.stat().st_blocks * 512) for entry in os.scandir(folder) if entry.is_file())


def build_cache(model, data: str, output: str, *, data_format: str, encoders: dict[str, str], model_name: str,
                split: str = "train", resolution: int = 512, random_flip: bool = True, batch_size: int = 8,
                shard_size: int = 1024, max_rows: Optional[int] = None, skip_bad_rows: bool = False,
                overwrite: bool = False, progress: bool = True) -> dict:
    """Encode the valid rows of ``data`` (read as ``data_format``) with ``model`` (a ``DiffusionModel``
    with its encoders loaded) into the cache folder ``output``; returns the cache's ``cache.json``."""
    if os.path.exists(output) and os.listdir(output) and not overwrite:
        raise DataError(f"--output {output} exists and is not empty; choose a new folder or pass --overwrite")
    fmt = get_format(data_format)
    if fmt.modality != "diffusion":
        raise DataError(f"the {data_format} format holds text for LMs; a latent cache is for diffusion formats")
    table = read_table(data, split)
    options = ImageOptions(resolution=resolution, random_flip=False, skip_bad_rows=skip_bad_rows, max_rows=max_rows,
                           progress=progress)
    dataset, _ = fmt.build(table, options)
    examples = dataset.examples

    temporary = f"{output.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    references: dict[tuple[int, str], int] = {}
    for example in examples:
        for column in example.images.values():
            references.setdefault((example.index, column), len(references))
    prompts = [""] + sorted({p for e in examples for p in [e.prompt, *e.extras.get("negative_prompts", [])]} - {""})

    image_writer = _ShardWriter(temporary, "latents", shard_size, expected_rows=len(references))
    keys = list(references)
    for start in tqdm(range(0, len(keys), batch_size), desc="encoding images", unit="batch", disable=not progress):
        batch = keys[start : start + batch_size]
        pixels = torch.stack([
            training_transform(decode_image(table.row(row)[column], f"{table.where(row)}, field {column!r}", table.base_dir),
                               resolution, None, center_crop=True, random_flip=False)
            for row, column in batch
        ])
        mean, std = model.posterior(pixels)
        rows = {"mean": mean, "std": std}
        if random_flip:
            rows["flipped_mean"], rows["flipped_std"] = model.posterior(pixels.flip(-1))
        image_writer.add(rows)
    image_writer.flush()

    text_writer = _ShardWriter(temporary, "text", shard_size, expected_rows=len(prompts))
    with torch.no_grad():
        for start in tqdm(range(0, len(prompts), batch_size), desc="encoding prompts", unit="batch", disable=not progress):
            text_writer.add(model.encode_prompts(prompts[start : start + batch_size]).tensors())
    text_writer.flush()

    with _disk_errors(temporary, lambda: _folder_bytes(temporary)), open(os.path.join(temporary, ROWS_FILE), "w") as handle:
        for example in examples:
            record = {key: _plain(value) for key, value in table.row(example.index).items()}
            for column in example.images.values():
                record[column] = {IMAGE_REFERENCE: references[(example.index, column)]}
            record[SOURCE_ROW] = table.where(example.index)
            handle.write(json.dumps({key: value for key, value in record.items() if value is not _DROP}) + "\n")
    info = {
        "version": CACHE_VERSION,
        "data_format": data_format,
        "source": {"data": data, "split": split, "rows": len(table), "cached_rows": len(examples),
                   "skipped": dataset.skipped.counts},
        "model": model_name,
        "encoders": encoders,
        "resolution": resolution,
        "center_crop": True,
        "random_flip": random_flip,
        "latent_shape": _latent_shape(temporary, image_writer.files),
        "dtype": "float32",
        "shard_size": shard_size,
        "images": len(references),
        "image_shards": image_writer.files,
        "prompts": prompts,
        "text_shards": text_writer.files,
    }
    with _disk_errors(temporary, lambda: _folder_bytes(temporary)), open(os.path.join(temporary, CACHE_FILE), "w") as handle:
        json.dump(info, handle, indent=1)
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(temporary, output)
    return info


def _latent_shape(folder: str, files: list[str]) -> Optional[list[int]]:
    from safetensors import safe_open

    if not files:
        return None
    with safe_open(os.path.join(folder, files[0]), framework="pt") as handle:
        return list(handle.get_slice("mean").get_shape()[1:])


_DROP = object()


def _plain(value: Any) -> Any:
    """A JSON value for the cached rows: bytes (other images, binary columns) are dropped, dates become text."""
    if isinstance(value, (bytes, bytearray)):
        return _DROP
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [item for item in map(_plain, value) if item is not _DROP]
    if isinstance(value, dict):
        return {key: item for key, item in ((k, _plain(v)) for k, v in value.items()) if item is not _DROP}
    return str(value)
