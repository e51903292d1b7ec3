"""Train state that makes resumption exact: the step counters and a resumable, deterministic data order.

Data order is a function of (seed, epoch) only; per-sample randomness (augmentations) is a function of
(seed, epoch, index) through :class:`EpochSeeded`; the DataLoader gets its own generator so creating an iterator
never consumes the global RNG. A run resumed at any checkpoint therefore sees exactly the samples, augmentations
and model-side random draws of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


@dataclass
class TrainState:
    """Counters saved in every checkpoint.

    Attributes:
        step: optimiser steps done.
        epoch: current data epoch.
        batch_in_epoch: batches of ``epoch`` already consumed.
        skipped_steps: steps skipped for a non-finite loss (total).
        rollbacks: times the run rolled back to its last checkpoint.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_steps: int = 0
    rollbacks: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for k, v in state.items():
            setattr(self, k, int(v))


class ResumableSampler(Sampler[int]):
    """Shuffled (or sequential) indices for one rank, a permutation per (seed, epoch), starting at any offset.

    Every rank draws the same permutation and takes a strided share (padded to equal length, like
    ``DistributedSampler``); ``start`` skips already-consumed samples of this rank.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError("the data set is empty")
        self.size, self.seed, self.shuffle, self.rank, self.world_size = size, seed, shuffle, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = -(-self.size // self.world_size)
        order = (order * (-(-per_rank * self.world_size // self.size)))[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return -(-self.size // self.world_size) - self.start


class EpochSeeded(Dataset):
    """Wraps a map-style data set so each item's randomness depends only on (seed, epoch, index).

    The wrapped data set's ``__getitem__`` runs under a forked torch RNG seeded from (seed, epoch, index), so
    torchvision transforms draw the same values whatever worker or resume point produces the item, and the
    caller's RNG is left untouched. Call :meth:`set_epoch` before creating each epoch's iterator.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with seeded_rng((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index)):
            return self.dataset[index]


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block under torch's CPU RNG and Python's ``random`` seeded from ``seed``; restore both afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed % (2**63))  # CPU only: the CUDA generators stay untouched
        state = random.getstate()
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


@contextlib.contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """Run a block on one torch intra-op thread when ``enabled`` (the thread count is restored afterwards).

    For tiny tensor ops (a 9x9 blur on one crop, a short clip's resampling): with several threads, thread start-up
    dominates such microsecond kernels and they are many times slower.
    """
    before = torch.get_num_threads()
    if not enabled or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
