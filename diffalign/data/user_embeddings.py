"""User embeddings for PPD: each user's labelled pairs cut into few-shot chunks, one embedding per chunk.

PPD (Dang et al., arXiv 2501.06655; spec ``research/diffusion_methods_B.md`` §3.2) conditions the
denoiser on an embedding of K = 4 of a user's labelled pairs. ``diffalign users embed`` writes them;
training (a pair draws an embedding of its own user built from other pairs) and the personalised
pipeline read them through ``UserEmbeddings``.

Chunking (``chunk_user_pairs``), as the co-author's extraction code (Asap7772/personalized-t2i
``pick_a_pick_user_emb.py``) does it: a user's usable pairs (labelled, not tied, two different
images) are shuffled and cut into disjoint chunks of K shots; the last partial chunk is dropped; a
user with fewer than K usable pairs gets no chunk and is reported. The shuffle of user u is seeded by
(seed, u) alone, so adding or removing other users leaves u's chunks as they were. A pair is named by
its row index in the source (``Example.index``: the id training sees), so a training pair never has
to condition on an embedding built from itself (``UserEmbeddings.chunks_excluding``).

On disk, a folder with two files; chunk i is row i of the tensor:

- ``user_embeddings.safetensors``: tensor ``"embeddings"``, float32, [M, D];
- ``user_embeddings.json``: ``{"schema": 1, "encoder": {"name", "model", ...its options}, "dim": D,
  "shots": K, "data": the --data as given, "split", "seed", "chunks_per_user", "chunks": [{"user",
  "chunk", "rows", "text"}], "skipped_users": {user: reason}, "write_id"}``. ``text`` is the VLM's
  generated profile (null for the other encoders). ``write_id`` is also in the safetensors metadata:
  the two files of one write carry the same one, so a half-finished rewrite is caught on load.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from PIL import Image

from diffalign.data.cache import is_latent_cache
from diffalign.data.errors import DataError, SkipReport, disk_space_errors
from diffalign.data.examples import Example, ImageOptions
from diffalign.data.images import decode_image
from diffalign.data.registry import get_format
from diffalign.data.tables import Table, read_table
from diffalign.errors import UnknownNameError

SCHEMA = 1
EMBEDDINGS_FILE = "user_embeddings.safetensors"
INDEX_FILE = "user_embeddings.json"
TENSOR = "embeddings"
DATA_FORMAT = "user_image_pairs"

IDENTICAL = "identical pairs (the same image twice)"


@dataclass(frozen=True)
class UserChunk:
    """One embedding's few-shot context: ``rows`` are the source rows (``Example.index``) of its shots."""

    user: str
    chunk: int
    rows: tuple[int, ...]
    text: Optional[str] = None


# ------------------------------------------------------------------------------------- user pairs
@dataclass
class UserPairs:
    """The usable pairs of a ``user_image_pairs`` source by user, read the way training reads them.

    ``rows_by_user``: each user's rows (``Example.index``) in source order, users in order of their
    first pair; ``skipped``: rows left out (ties, identical pairs, bad rows with ``skip_bad_rows``)."""

    data: str
    split: str
    table: Table
    examples: dict[int, Example]
    rows_by_user: dict[str, list[int]]
    skipped: SkipReport

    @classmethod
    def read(cls, data: str, split: str = "train", skip_bad_rows: bool = False, progress: bool = True) -> "UserPairs":
        """Read ``data`` through the ``user_image_pairs`` format (every image checked up front, ties
        dropped and counted) and leave out, counted, the pairs that show the same image twice."""
        if is_latent_cache(data):
            raise DataError(f"{data}: a latent cache holds no images, and the user encoders need them; pass the data it was made from")
        table = read_table(data, split)
        # the encoders size the images themselves; resolution 1 keeps training's upscaling warning quiet
        options = ImageOptions(resolution=1, skip_bad_rows=skip_bad_rows, progress=progress)
        dataset, _ = get_format(DATA_FORMAT).build(table, options)
        identical = identical_rows(table, dataset.examples)
        examples, rows_by_user = {}, {}
        for example in dataset.examples:
            if example.index in identical:
                dataset.skipped.add(IDENTICAL, table.where(example.index))
                continue
            examples[example.index] = example
            rows_by_user.setdefault(example.extras["user"], []).append(example.index)
        return cls(data, split, table, examples, rows_by_user, dataset.skipped)

    def shot(self, row: int) -> tuple[str, Image.Image, Image.Image]:
        """(prompt, chosen image, rejected image) of source row ``row``, decoded to RGB."""
        example = self.examples[row]
        record, where = self.table.row(row), self.table.where(row)
        chosen, rejected = (decode_image(record[example.images[role]], f"{where}, field {example.images[role]!r}",
                                         self.table.base_dir) for role in ("chosen", "rejected"))
        return example.prompt, chosen, rejected


def identical_rows(table: Table, examples: Sequence[Example]) -> set[int]:
    """Rows whose two images are the same: Pick-a-Pic's ``are_different`` column false where the source
    has it (the co-author code's filter), or a jsonl row whose chosen and rejected name the same file."""
    if "are_different" in table.columns:
        flags = table.column("are_different")
        return {example.index for example in examples if flags[example.index] is not None and not flags[example.index]}
    if not isinstance(table.records, list):
        return set()
    same = set()
    for example in examples:
        record = table.records[example.index]
        if record[example.images["chosen"]] == record[example.images["rejected"]]:
            same.add(example.index)
    return same


def chunk_user_pairs(rows_by_user: dict[str, Sequence[int]], shots: int, seed: int = 0,
                     chunks_per_user: Optional[int] = None) -> tuple[list[UserChunk], dict[str, str]]:
    """Disjoint chunks of ``shots`` rows per user (module docstring), at most ``chunks_per_user`` each,
    and ``{user: reason}`` for the users with fewer than ``shots`` rows."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    chunks, skipped = [], {}
    for user, rows in rows_by_user.items():
        if len(rows) < shots:
            skipped[user] = f"{len(rows)} usable pair{'s' if len(rows) != 1 else ''}, fewer than {shots} shots"
            continue
        order = list(rows)
        random.Random(f"{seed}/{user}").shuffle(order)
        count = len(order) // shots if chunks_per_user is None else min(len(order) // shots, chunks_per_user)
        chunks += [UserChunk(user, number, tuple(order[number * shots:(number + 1) * shots])) for number in range(count)]
    return chunks, skipped


# ------------------------------------------------------------------------------------ embeddings
class UserEmbeddings:
    """Embeddings of users' few-shot chunks (module docstring); ``embeddings[i]`` belongs to ``chunks[i]``.

    Args:
        embeddings: float [M, D] (stored as float32 on the CPU).
        chunks: the M chunks, in row order.
        encoder: what made them (``UserEncoder.describe()``: name, model, options).
        shots: K, the pairs per chunk.
        data, split, seed, chunks_per_user: the source and the chunking settings.
        skipped_users: ``{user: reason}`` for the users that got no chunk.
    """

    def __init__(self, embeddings: torch.Tensor, chunks: Sequence[UserChunk], encoder: dict, shots: int,
                 data: Optional[str] = None, split: str = "train", seed: int = 0, chunks_per_user: Optional[int] = None,
                 skipped_users: Optional[dict[str, str]] = None, source: Optional[str] = None):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(chunks):
            raise ValueError(f"embeddings must be [len(chunks) = {len(chunks)}, D], got {list(embeddings.shape)}")
        self.embeddings = embeddings.detach().to("cpu", torch.float32)
        self.chunks = list(chunks)
        self.encoder = dict(encoder)
        self.shots = shots
        self.data, self.split, self.seed, self.chunks_per_user = data, split, seed, chunks_per_user
        self.skipped_users = dict(skipped_users or {})
        self.source = source  # the folder it was loaded from, for messages
        self._by_user: dict[str, list[int]] = {}
        for index, chunk in enumerate(self.chunks):
            self._by_user.setdefault(chunk.user, []).append(index)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def __len__(self) -> int:
        return len(self.chunks)

    def __contains__(self, user: str) -> bool:
        return user in self._by_user

    def users(self) -> list[str]:
        """The users with at least one chunk, in order of their first chunk."""
        return list(self._by_user)

    def chunk_ids(self, user: str) -> list[int]:
        """The rows of ``embeddings`` (indices into ``chunks``) of ``user``'s chunks; [] for a user without any."""
        return list(self._by_user.get(user, ()))

    def chunks_excluding(self, user: str, row: int) -> list[int]:
        """``user``'s chunks whose shots do not include source row ``row``: what a training pair of that
        row may condition on, so it never sees itself among its shots ([] when there is none)."""
        return [index for index in self._by_user.get(user, ()) if row not in self.chunks[index].rows]

    def user_mean(self, user: str) -> torch.Tensor:
        """[D]: the mean of ``user``'s chunk embeddings (an ``UnknownNameError`` for a user without any)."""
        if user not in self._by_user:
            where = f" in {self.source}" if self.source else ""
            reason = f" (skipped: {self.skipped_users[user]})" if user in self.skipped_users else ""
            shown = ", ".join(self.users()[:10]) + (", ..." if len(self._by_user) > 10 else "")
            raise UnknownNameError(f"user {user!r} has no embedding{where}{reason}; users with embeddings: {shown}")
        return self.embeddings[self._by_user[user]].mean(0)

    def settings(self) -> dict[str, Any]:
        """``embedding_settings`` of these embeddings."""
        return embedding_settings(self.encoder, self.shots, self.data, self.split, self.seed, self.chunks_per_user)

    # ------------------------------------------------------------------------------- files
    def save(self, folder: str) -> None:
        """Write the two files into ``folder`` (created), each atomically (a temporary file renamed), the
        index last; both carry a fresh ``write_id``."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        write_id = uuid.uuid4().hex
        index = {"schema": SCHEMA, **self.settings(), "dim": self.dim,
                 "chunks": [{"user": c.user, "chunk": c.chunk, "rows": list(c.rows), "text": c.text} for c in self.chunks],
                 "skipped_users": self.skipped_users, "write_id": write_id}
        tensor_path, index_path = os.path.join(folder, EMBEDDINGS_FILE), os.path.join(folder, INDEX_FILE)
        partials = [tensor_path + ".partial", index_path + ".partial"]

        def remove_partials():
            for path in partials:
                if os.path.exists(path):
                    os.remove(path)

        with disk_space_errors(folder, self.embeddings.numel() * 4, what="the user embeddings", cleanup=remove_partials):
            save_file({TENSOR: self.embeddings.contiguous()}, partials[0], metadata={"write_id": write_id})
            os.replace(partials[0], tensor_path)
            with open(partials[1], "w", encoding="utf-8") as handle:
                json.dump(index, handle, indent=1)
            os.replace(partials[1], index_path)

    @classmethod
    def load(cls, folder: str) -> "UserEmbeddings":
        """The embeddings written to ``folder``; a ``DataError`` naming the file and what is wrong with it
        (missing, unreadable, wrong schema or fields, a shape or count mismatch, non-finite values)."""
        index_path, tensor_path = os.path.join(folder, INDEX_FILE), os.path.join(folder, EMBEDDINGS_FILE)
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: no such folder of user embeddings (write one with `diffalign users embed --out`)")
        for path in (index_path, tensor_path):
            if not os.path.isfile(path):
                raise DataError(f"{path}: missing; {folder} is not a complete `diffalign users embed` output folder")
        index = _read_index(index_path)
        chunks = [_chunk(entry, f"{index_path}: chunks[{number}]", index["shots"]) for number, entry in enumerate(index["chunks"])]
        _check_disjoint(chunks, index_path)
        embeddings = _read_tensor(tensor_path, index, chunks)
        return cls(embeddings, chunks, index["encoder"], index["shots"], data=index.get("data"), split=index.get("split", "train"),
                   seed=index.get("seed", 0), chunks_per_user=index.get("chunks_per_user"),
                   skipped_users=index.get("skipped_users", {}), source=folder)


def embedding_settings(encoder: dict, shots: int, data: Optional[str], split: str, seed: int,
                       chunks_per_user: Optional[int]) -> dict[str, Any]:
    """What decides the embeddings: the encoder's description, K, the source and the chunking (equal
    settings give equal embeddings, as long as the source is unchanged)."""
    return {"encoder": encoder, "shots": shots, "data": data, "split": split, "seed": seed, "chunks_per_user": chunks_per_user}


def read_settings(folder: str) -> Optional[dict[str, Any]]:
    """The ``settings()`` recorded in ``folder``'s index, or None when it holds no readable one."""
    try:
        with open(os.path.join(folder, INDEX_FILE), encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("schema") != SCHEMA:
        return None
    return embedding_settings(index.get("encoder"), index.get("shots"), index.get("data"), index.get("split"),
                              index.get("seed"), index.get("chunks_per_user"))


def _is_count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _read_index(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except ValueError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(index, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(index).__name__}")
    if index.get("schema") != SCHEMA:
        raise DataError(f"{path}: schema {index.get('schema')!r}; this diffalign reads user embeddings of schema {SCHEMA}")
    expected = {"encoder": (lambda v: isinstance(v, dict) and isinstance(v.get("name"), str), "an object with a 'name'"),
                "dim": (lambda v: _is_count(v, 1), "an integer >= 1"), "shots": (lambda v: _is_count(v, 1), "an integer >= 1"),
                "chunks": (lambda v: isinstance(v, list), "a list"),
                "skipped_users": (lambda v: isinstance(v, dict), "an object"),
                "write_id": (lambda v: isinstance(v, str), "a string")}
    for name, (valid, what) in expected.items():
        if not valid(index.get(name)):
            raise DataError(f"{path}: field {name!r} must be {what}, got {index.get(name)!r:.80}")
    return index


def _chunk(entry: Any, where: str, shots: int) -> UserChunk:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {entry!r:.80}")
    user, number, rows, text = entry.get("user"), entry.get("chunk"), entry.get("rows"), entry.get("text")
    if not isinstance(user, str) or not user:
        raise DataError(f"{where}, field 'user': expected a non-empty string, got {user!r}")
    if not _is_count(number, 0):
        raise DataError(f"{where}, field 'chunk': expected an integer >= 0, got {number!r}")
    if not (isinstance(rows, list) and len(rows) == shots and all(_is_count(row, 0) for row in rows) and len(set(rows)) == shots):
        raise DataError(f"{where}, field 'rows': expected {shots} distinct row indices (shots = {shots}), got {rows!r:.80}")
    if text is not None and not isinstance(text, str):
        raise DataError(f"{where}, field 'text': expected a string or null, got {type(text).__name__}")
    return UserChunk(user, number, tuple(rows), text)


def _check_disjoint(chunks: Sequence[UserChunk], path: str) -> None:
    """A user's chunks are numbered once each and share no row."""
    seen_chunks, seen_rows = set(), {}
    for chunk in chunks:
        if (chunk.user, chunk.chunk) in seen_chunks:
            raise DataError(f"{path}: user {chunk.user!r} has chunk {chunk.chunk} twice")
        seen_chunks.add((chunk.user, chunk.chunk))
        for row in chunk.rows:
            other = seen_rows.setdefault((chunk.user, row), chunk.chunk)
            if other != chunk.chunk:
                raise DataError(f"{path}: row {row} is a shot of chunks {other} and {chunk.chunk} of user {chunk.user!r}; "
                                "a user's chunks must be disjoint")


def _read_tensor(path: str, index: dict, chunks: Sequence[UserChunk]) -> torch.Tensor:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            names, metadata = list(handle.keys()), handle.metadata() or {}
            if TENSOR not in names:
                raise DataError(f"{path}: no tensor {TENSOR!r} (found: {', '.join(names) or 'none'})")
            embeddings = handle.get_tensor(TENSOR)
    except DataError:
        raise
    except Exception as error:  # a truncated or foreign file
        raise DataError(f"{path}: cannot read it as safetensors ({error})") from error
    if metadata.get("write_id") != index["write_id"]:
        raise DataError(f"{path}: does not belong to {INDEX_FILE} beside it (a different write_id: an interrupted "
                        "rewrite?); run `diffalign users embed` again")
    if embeddings.ndim != 2 or not embeddings.is_floating_point():
        raise DataError(f"{path}: {TENSOR!r} must be a 2-D float tensor [chunks, dim], got {embeddings.dtype} {list(embeddings.shape)}")
    if embeddings.shape[0] != len(chunks):
        raise DataError(f"{path}: {TENSOR!r} has {embeddings.shape[0]} rows but {INDEX_FILE} lists {len(chunks)} chunks")
    if embeddings.shape[1] != index["dim"]:
        raise DataError(f"{path}: {TENSOR!r} has {embeddings.shape[1]} columns but {INDEX_FILE} says dim {index['dim']}")
    finite = torch.isfinite(embeddings).all(dim=1)
    if not finite.all():
        first = chunks[int((~finite).nonzero()[0])]
        raise DataError(f"{path}: {int((~finite).sum())} of {len(chunks)} embeddings have non-finite values (first: user "
                        f"{first.user!r} chunk {first.chunk})")
    return embeddings.float()
