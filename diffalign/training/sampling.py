"""Deterministic, resumable data order and per-step randomness.

The data order of epoch e is a permutation drawn from (seed, e); each process takes its slice of
each global batch (as ``DistributedSampler`` does). Batch k of the whole run is therefore a pure
function of (seed, k, rank), and a run resumed at optimiser step n starts at micro-batch n x GA with
no data skipped or repeated. The random numbers a method draws at (step, micro-step, rank) come from
a generator seeded by those numbers, so a resumed run draws what the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch.utils.data import Dataset

from diffalign.data.errors import DataError


class ShardedEpochBatches:
    """An endless iterable of per-process index batches, starting at global micro-batch ``start``."""

    def __init__(self, dataset_size: int, batch_size: int, rank: int, world_size: int, seed: int, start: int = 0):
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = dataset_size // self.global_batch
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the dataset has {dataset_size} usable rows, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.rank = rank
        self.seed = seed
        self.start = start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start, self.batches_per_epoch)
        while True:
            order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            for batch in range(offset, self.batches_per_epoch):
                first = batch * self.global_batch + self.rank * self.batch_size
                yield [(epoch, index) for index in order[first : first + self.batch_size]]
            epoch, offset = epoch + 1, 0


class EpochIndexed(Dataset):
    """Wraps a dataset so items are fetched by (epoch, index): augmentations can depend on the epoch
    even inside DataLoader worker processes (``set_epoch`` runs where the item is built)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def step_generator(seed: int, step: int, micro_step: int, rank: int) -> torch.Generator:
    """A CPU generator seeded by (seed, optimiser step, micro-step, rank)."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro_step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
