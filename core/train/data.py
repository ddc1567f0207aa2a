"""Deterministic, resumable data order shared by every process.

Epoch e visits a permutation of the dataset drawn from a local generator seeded with
``seed + e`` (never the global RNG). Consecutive runs of ``batch_size * world_size`` indices form a
global batch; process ``rank`` takes its slice of each. The last incomplete global batch is
dropped, so every process does the same number of steps. Resuming at (epoch, batch) skips indices
without loading them. One process with batch B*W sees exactly the samples that W processes with
batch B see together.

Not covered: iterable (streaming) datasets, length-grouped or weighted sampling.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from adaptome.core.errors import AdaptomeError


class TooFewExamples(AdaptomeError, ValueError):
    """The data set is smaller than one global batch (batch_size x processes)."""


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        global_batch = batch_size * world_size
        if n < global_batch:
            raise TooFewExamples(f"the training data has {n} examples, fewer than one global batch ({global_batch} = "
                                 f"train.batch_size {batch_size} x {world_size} processes); add data or lower "
                                 "train.batch_size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        gb = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):
            lo = b * gb + self.rank * self.batch_size
            yield order[lo:lo + self.batch_size]
        self.start_batch = 0
