"""Streaming (iterable) data for the trainer with an exact, resumable position under DataLoader workers and ranks.

A streaming data set implements :class:`ResumableStream`: ``stream(consumer, num_consumers, seed, state)`` gives
the endless, deterministic sample sequence of one *consumer* (a (rank, worker) pair, ``consumer = rank *
workers + worker``), starting after a saved position; its iterator's ``state_dict()`` is the position after
the last sample it returned. Consumers must read disjoint data (e.g. disjoint shards).

:class:`StreamBatches` runs one consumer per DataLoader worker (or one in the main process). Every worker
collates whole batches and tags each with its consumer's position, so the trainer records exactly what it
consumed. The DataLoader takes batches from workers round-robin (batch ``i`` from worker ``i % workers``;
streams never end, so no worker drops out), hence the consumer of the global batch ``n`` is ``n % workers``;
a resumed loader rotates its workers by ``n % workers`` and each consumer restarts at its saved position, which
reproduces the uninterrupted sequence of batches. Per-sample randomness (augmentations) runs under an RNG
seeded by (seed, consumer, sample index), so it replays too. The position (batches consumed and every
consumer's state, gathered from all ranks) goes into the trainer checkpoint.

Resuming with another ``world_size`` or number of workers: with the same number of consumers (e.g. 2 ranks x 2
workers -> 4 x 1) every consumer goes on exactly where it stopped, only served by another rank or worker; with another
number, a data set that implements ``remap_positions(states, old, new, seed)`` (consumer -> saved stream state of the
``old`` consumers -> states of the ``new`` ones) decides what each new consumer reads, and one without it is refused.

Batch streams: a data set whose stream items are already whole batches (e.g. lhotse's duration-bucketed batches of
speech cuts, whose sizes vary) sets ``yields_batches = True`` and runs with ``batch_size=0``: each item is passed
alone to ``collate_fn`` (under the item's seeded RNG) and counts as one position step.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from unitok.engine.state import seeded_rng

logger = logging.getLogger(__name__)


class StreamIterator(Protocol):
    def __next__(self) -> Any: ...

    def state_dict(self) -> Any:
        """Position after the last returned sample (small, picklable)."""


@runtime_checkable
class ResumableStream(Protocol):
    def stream(self, consumer: int, num_consumers: int, seed: int, state: Any | None = None) -> StreamIterator:
        """Endless samples of ``consumer`` (of ``num_consumers``), from ``state`` (None: the beginning)."""


def _identity(x: Any) -> Any:
    return x


class _ConsumerBatches(IterableDataset):
    """In each worker: the batches of that worker's consumer, each with its pickled position."""

    def __init__(self, dataset: ResumableStream, collate_fn: Callable, batch_size: int, seed: int, rank: int,
                 world_size: int, workers: int, offset: int, states: dict[int, dict[str, Any]]):  # fmt: skip
        super().__init__()
        self.dataset, self.collate_fn, self.batch_size, self.seed = dataset, collate_fn, batch_size, seed
        self.rank, self.world_size, self.workers, self.offset, self.states = rank, world_size, workers, offset, states

    def __iter__(self) -> Iterator[tuple[Any, bytes]]:
        info = get_worker_info()
        consumer = self.rank * self.workers + ((info.id if info else 0) + self.offset) % self.workers
        saved = self.states.get(consumer, {"samples": 0, "stream": None})
        stream = self.dataset.stream(consumer, self.world_size * self.workers, self.seed, saved["stream"])
        n = saved["samples"]  # items taken (samples, or batches for a batch stream)
        while True:
            if self.batch_size == 0:  # the items are whole batches
                with seeded_rng(self._item_seed(consumer, n)):
                    batch = self.collate_fn(_take(stream, consumer))
                n += 1
            else:
                samples = []
                for _ in range(self.batch_size):
                    with seeded_rng(self._item_seed(consumer, n)):
                        samples.append(_take(stream, consumer))
                    n += 1
                batch = self.collate_fn(samples)
            position = {"consumer": consumer, "samples": n, "stream": stream.state_dict()}
            yield batch, pickle.dumps(position)

    def _item_seed(self, consumer: int, n: int) -> int:
        return (self.seed * 1_000_003 + consumer) * 10_000_019 + n


def _take(stream: StreamIterator, consumer: int) -> Any:
    try:
        return next(stream)
    except StopIteration:
        raise RuntimeError(f"the data stream of consumer {consumer} ended; streams must be endless") from None


class StreamBatches:
    """Endless batches of a :class:`ResumableStream` for one rank, with a checkpointable position.

    Args:
        dataset: the streaming data set.
        collate_fn: list of samples -> batch (runs in the workers); with ``batch_size=0``: item -> batch.
        batch_size: samples per batch; 0: the data set yields whole batches (``yields_batches = True``).
        num_workers: DataLoader workers (0: the main process).
        seed: seed of the data order and per-sample randomness.
        rank, world_size: this process and the number of ranks.
        pin_memory: pin batches (CUDA).
    """

    def __init__(self, dataset: Any, collate_fn: Callable, batch_size: int, num_workers: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False):  # fmt: skip
        if not isinstance(dataset, ResumableStream):
            raise TypeError(
                f"{type(dataset).__name__} is an iterable data set without "
                "stream(consumer, num_consumers, seed, state): the trainer cannot resume it exactly"
            )
        yields_batches = bool(getattr(dataset, "yields_batches", False))
        if yields_batches and batch_size != 0:
            raise ValueError(
                f"{type(dataset).__name__} yields whole batches (their size is set by the data set, e.g. its "
                f"max_duration), so batch_size must be 0 (train.batch_size=0), got {batch_size}"
            )
        if not yields_batches and batch_size <= 0:
            raise ValueError(
                f"batch_size {batch_size}: 0 is for data sets that yield whole batches (yields_batches = True), "
                f"{type(dataset).__name__} yields samples; set a positive train.batch_size"
            )
        self.dataset, self.collate_fn, self.batch_size = dataset, collate_fn, batch_size
        self.num_workers, self.seed, self.pin_memory = num_workers, seed, pin_memory
        self.rank, self.world_size = rank, world_size
        self.workers = max(num_workers, 1)  # consumers per rank
        self.batches_done = 0  # batches consumed since the start of the run (equal on every rank)
        self.consumers: dict[int, dict[str, Any]] = {}  # this rank's consumer positions

    def __iter__(self) -> Iterator[Any]:
        """Batches from the current position on; the position advances as batches are taken."""
        offset = self.batches_done % self.workers
        source = _ConsumerBatches(self.dataset, self.collate_fn, self.batch_size, self.seed, self.rank,
                                  self.world_size, self.workers, offset, dict(self.consumers))  # fmt: skip
        loader = DataLoader(source, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                            pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(self.seed))  # fmt: skip
        for batch, blob in loader:
            position = pickle.loads(blob)
            expected = self.rank * self.workers + self.batches_done % self.workers
            if position["consumer"] != expected:
                raise RuntimeError(
                    f"DataLoader returned a batch of consumer {position['consumer']}, expected {expected}: "
                    "workers are no longer served round-robin, so the data position cannot be resumed"
                )
            self.consumers[position.pop("consumer")] = position
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The position of every rank (collective when a process group is initialised)."""
        import torch.distributed as dist

        consumers = dict(self.consumers)
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, consumers)
            consumers = {c: s for part in gathered for c, s in part.items()}
        return {"world_size": self.world_size, "workers": self.workers, "batches": self.batches_done,
                "consumers": consumers}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from a saved position (None: from the beginning, e.g. an older checkpoint)."""
        if state is None:
            self.batches_done, self.consumers = 0, {}
            return
        consumers = {int(c): s for c, s in state["consumers"].items()}
        self.batches_done = int(state["batches"])
        if (state["world_size"], state["workers"]) != (self.world_size, self.workers):
            consumers, self.batches_done = self._retarget(consumers, state["world_size"], state["workers"]), 0
        mine = range(self.rank * self.workers, (self.rank + 1) * self.workers)
        self.consumers = {c: s for c, s in consumers.items() if c in mine}

    def _retarget(self, consumers: dict[int, Any], world_size: int, workers: int) -> dict[int, Any]:
        """This run's consumer positions from those saved by ``world_size`` x ``workers`` consumers."""
        old, new = world_size * workers, self.world_size * self.workers
        topology = (f"world_size {world_size} x {workers} workers per rank, this run has {self.world_size} x "
                    f"{self.workers}")  # fmt: skip
        if old == new:
            logger.warning("the checkpoint's data position is for %s: each of the %d data consumers goes on exactly "
                           "where it stopped, served by another rank or worker", topology, new)  # fmt: skip
            return consumers
        remap = getattr(self.dataset, "remap_positions", None)
        if remap is None:
            raise ValueError(
                f"the checkpoint's data position is for {topology}: {type(self.dataset).__name__} cannot re-map it "
                "to another number of consumers; resume streaming data with the same ranks and train.num_workers"
            )
        logger.warning("the checkpoint's data position is for %s: re-mapping %d data consumers to %d", topology, old,
                       new)  # fmt: skip
        streams = remap({c: s["stream"] for c, s in consumers.items()}, old, new, self.seed)
        # per-sample seeds go on past every old count, so no new consumer replays an old augmentation seed
        samples = max((int(s["samples"]) for s in consumers.values()), default=0)
        return {c: {"samples": samples, "stream": stream} for c, stream in streams.items()}
