"""Speech training data for unitok-train: lhotse's DynamicBucketingSampler batches with an exact, resumable position.

:class:`SpeechCuts` is a streaming data set (:class:`~unitok.engine.stream.ResumableStream`) whose items are whole
batches (``yields_batches``; the trainer runs it with ``train.batch_size: 0``): batch sizes come from the sampler's
``max_duration`` (seconds of audio per batch), not from a fixed count. :class:`SpeechCollate` turns an item into the
speech batch convention.

Exact resume. The trainer runs one *consumer* per (rank, DataLoader worker) (:mod:`unitok.engine.stream`); each
consumer owns a DynamicBucketingSampler and its position is ``{"epoch", "sampler": sampler.state_dict()}``, which
goes into every trainer checkpoint. Resuming rebuilds the sampler of that epoch and ``load_state_dict`` fast-forwards
it (lhotse replays the manifest up to the saved batch, reading no audio for manifests). How consumers split data:

- manifests (``.jsonl.gz``): every consumer iterates the whole manifest with lhotse's distributed batching
  (``world_size`` = consumers, ``rank`` = consumer: each round draws one batch per consumer and keeps its own), so
  consumers read disjoint cuts and end epochs together. The replicas must draw identical rounds: lhotse seeds its
  bucket choice (``sync_buckets``) with ``1234 + DataLoader worker id``, and the trainer's worker of a consumer
  changes on resume, so :class:`_Sampler` makes that seed 1234 in every process, lhotse's main-process value. Every
  round then uses one bucket for all consumers, so ranks stay in step with similar durations. (lhotse 1.33's other
  bucket choice, ``sync_buckets=False``, can end an epoch early when no bucket holds a full batch.)
- Shar directories: consumer ``c`` of ``n`` reads shards ``c, c + n, ...`` of the epoch's shard order (a shuffle by
  (seed, epoch)), lhotse's shard split for iterable data; epochs are per consumer. Needs at least ranks x workers
  shards. The sampler's buffer (``buffer_size`` cuts) then holds encoded audio in memory.

Per-cut randomness (crop offset, augmentations, lhotse effects that draw from torch's generator) is a function of
(seed, epoch, cut id) (:mod:`unitok.modalities.speech.augment`), so it replays whatever the worker or batch.

Shape legend:
    B: cuts in the batch, T: samples (the crop length, or the longest clip of the batch)
"""

from __future__ import annotations

import copy
import logging
import os
import random
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler
from lhotse.dataset.sampling.base import TimeConstraint
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import IterableDataset

from unitok.engine.state import seeded_rng, single_threaded
from unitok.modalities.speech.augment import CutAugmenter, cut_rng, random_crop
from unitok.modalities.speech.data import load_cuts, load_mono, shar_shards

logger = logging.getLogger(__name__)


class CutBatch(NamedTuple):
    """One stream item: the sampler's cuts and what their per-cut randomness is keyed by."""

    cuts: Any  # lhotse CutSet
    seed: int
    epoch: int


class _Sampler(DynamicBucketingSampler):
    """lhotse's sampler whose bucket-choice RNG is seeded alike in every process (see module doc)."""

    def __iter__(self):
        from torch.utils.data._utils import worker

        saved, worker._worker_info = worker._worker_info, None  # what get_worker_info() returns
        try:
            return super().__iter__()
        finally:
            worker._worker_info = saved


class _SamplerStream:
    """One consumer's endless batches: a DynamicBucketingSampler per epoch, its position in ``state_dict``."""

    def __init__(self, data: SpeechCuts, consumer: int, num_consumers: int, seed: int, state: dict | None):
        self.data, self.consumer, self.num_consumers, self.seed = data, consumer, num_consumers, seed
        self._start(int(state["epoch"]) if state else 0)
        if state:
            self.sampler.load_state_dict(copy.deepcopy(state["sampler"]))  # lhotse consumes the dict
            self.in_epoch = self.sampler.diagnostics.current_epoch_stats.total_batches
            self.batches = iter(self.sampler)  # continues after the restored batch

    def _start(self, epoch: int) -> None:
        self.epoch, self.in_epoch = epoch, 0  # in_epoch: batches of this epoch (none in a whole epoch: no data)
        self.sampler = self.data.sampler(self.consumer, self.num_consumers, self.seed, epoch)
        self.batches = iter(self.sampler)

    def __iter__(self) -> _SamplerStream:
        return self

    def __next__(self) -> CutBatch:
        while True:
            try:
                cuts = next(self.batches)
            except StopIteration:
                if self.in_epoch == 0:
                    raise RuntimeError(
                        f"consumer {self.consumer} of {self.num_consumers} got no batch in a whole epoch of "
                        f"{self.data.source}: too few cuts (after filtering) for the ranks x workers, or drop_last "
                        "with a too large max_duration"
                    ) from None
                self._start(self.epoch + 1)
                continue
            self.in_epoch += 1
            return CutBatch(cuts, self.seed, self.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "sampler": self.sampler.state_dict()}


class SpeechCuts(IterableDataset):
    """Batches of cuts from lhotse manifests or a Shar directory, bucketed by duration (see module doc).

    Args:
        cuts: ``.jsonl(.gz)`` manifest path(s), or a Shar directory (``cuts.*.jsonl.gz`` + ``recording.*.tar``).
        max_duration: seconds of audio per batch (lhotse's ``max_duration``).
        max_cuts: cuts per batch at most. With ``crop_seconds`` and no ``max_cuts``, batches hold
            ``floor(max_duration / crop_seconds)`` cuts (each becomes a crop of at most that length).
        crop_seconds: the crop length that batches are sized for (the crops themselves: :class:`SpeechCollate`).
        num_buckets: duration buckets (bins estimated once from the first ``num_cuts_for_bins_estimate`` cuts).
        shuffle: lhotse's buffered shuffle, a different order every epoch.
        drop_last: drop incomplete batches.
        buffer_size: cuts held across the buckets.
        num_cuts_for_bins_estimate: cuts read to estimate the bucket bins.
        min_seconds, max_seconds: keep only cuts of such durations.
    """

    yields_batches = True

    def __init__(self, cuts: str | os.PathLike | Sequence[str | os.PathLike], max_duration: float = 60.0,
                 max_cuts: int | None = None, crop_seconds: float | None = None, num_buckets: int = 10,
                 shuffle: bool = True, drop_last: bool = False, buffer_size: int = 20000,
                 num_cuts_for_bins_estimate: int = 10000, min_seconds: float | None = None,
                 max_seconds: float | None = None):  # fmt: skip
        super().__init__()
        single = isinstance(cuts, str | os.PathLike)
        self.source = str(cuts) if single else [str(c) for c in cuts]
        self.shar = shar_shards(cuts) if single and Path(cuts).is_dir() else None
        if max_duration is not None and max_duration <= 0:
            raise ValueError(f"max_duration must be positive (seconds of audio per batch), got {max_duration}")
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
        if crop_seconds and max_cuts is None:
            if max_duration is None or max_duration < crop_seconds:
                raise ValueError(f"max_duration ({max_duration}) must hold at least one crop of {crop_seconds} s")
            max_cuts, max_duration = int(max_duration // crop_seconds), None
        if max_duration is None and max_cuts is None:
            raise ValueError("set max_duration (seconds of audio per batch) or max_cuts")
        self.max_duration, self.max_cuts, self.shuffle, self.drop_last = max_duration, max_cuts, shuffle, drop_last
        self.buffer_size, self.min_seconds, self.max_seconds = buffer_size, min_seconds, max_seconds
        self.duration_bins = self._estimate_bins(num_buckets, num_cuts_for_bins_estimate)

    def _keep(self, cut) -> bool:
        return (self.min_seconds is None or cut.duration >= self.min_seconds) and (
            self.max_seconds is None or cut.duration <= self.max_seconds
        )

    def _estimate_bins(self, num_buckets: int, num_cuts: int) -> list[float]:
        """Bucket bins shared by every consumer (replicas of a distributed sampler must agree on them)."""
        meta = CutSet.from_shar(fields={"cuts": self.shar["cuts"]}) if self.shar else load_cuts(self.source)
        sample = list(islice(filter(self._keep, meta), num_cuts))
        if not sample:
            raise ValueError(f"{self.source} holds no cut (between min_seconds and max_seconds)")
        num_buckets = min(num_buckets, len(sample))
        if num_buckets < 2:
            return []
        constraint = TimeConstraint(max_duration=self.max_duration, max_cuts=self.max_cuts)
        return [float(b) for b in estimate_duration_buckets(sample, num_buckets=num_buckets, constraint=constraint)]

    def consumer_cuts(self, consumer: int, num_consumers: int, seed: int, epoch: int):
        """(lazy CutSet, sampler world_size, sampler rank) of one consumer in ``epoch``."""

        if self.shar is None:
            return load_cuts(self.source), num_consumers, consumer
        n = len(self.shar["cuts"])
        if n < num_consumers:
            raise ValueError(
                f"the Shar directory {self.source} has {n} shards for {num_consumers} consumers (ranks x DataLoader "
                "workers): write smaller shards (shar --shard-size) or use fewer train.num_workers"
            )
        order = list(range(n))
        if self.shuffle:
            random.Random(f"unitok-speech-shards/{seed}/{epoch}").shuffle(order)
        mine = order[consumer::num_consumers]
        return CutSet.from_shar(fields={f: [paths[i] for i in mine] for f, paths in self.shar.items()}), 1, 0

    def sampler(self, consumer: int, num_consumers: int, seed: int, epoch: int):
        """The DynamicBucketingSampler of one consumer in ``epoch`` (at the epoch's start)."""
        cuts, world_size, rank = self.consumer_cuts(consumer, num_consumers, seed, epoch)
        sampler = _Sampler(
            cuts, max_duration=self.max_duration, max_cuts=self.max_cuts, duration_bins=self.duration_bins,
            shuffle=self.shuffle, drop_last=self.drop_last, buffer_size=self.buffer_size, world_size=world_size,
            rank=rank, seed=seed, sync_buckets=True,
        )  # fmt: skip
        if self.min_seconds is not None or self.max_seconds is not None:
            sampler.filter(self._keep)
        sampler.set_epoch(epoch)
        return sampler

    def stream(self, consumer: int, num_consumers: int, seed: int, state: dict | None = None) -> _SamplerStream:
        """Endless :class:`CutBatch` items of ``consumer``, from ``state`` (None: the beginning)."""
        return _SamplerStream(self, consumer, num_consumers, seed, state)

    def __iter__(self):
        return self.stream(0, 1, seed=0)


class SpeechCollate:
    """:class:`CutBatch` -> ``{"audio": (B, T) float in [-1, 1], "audio_lens": (B,) long, "text", "speaker",
    "cut_id"}`` (lists of str), loading audio through lhotse.

    Per cut, in order: resample to ``sample_rate`` (lhotse ``cut.resample``, torchaudio), augmentations, a random crop
    of ``crop_seconds`` (shorter cuts stay whole and are zero-padded; ``audio_lens`` holds the real lengths), load
    (multi-channel audio is averaged to mono). ``text`` is the whole cut's transcript even when cropped. A cut whose
    audio cannot be read is skipped, counted in ``skipped`` and logged.

    Args:
        sample_rate: output sample rate.
        crop_seconds: crop length (None: whole cuts, padded to the longest of the batch).
        augment: augmentation specs (:mod:`unitok.modalities.speech.augment`).
    """

    def __init__(self, sample_rate: int = 16000, crop_seconds: float | None = None,
                 augment: Sequence[dict[str, Any]] | None = None):  # fmt: skip
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate, self.crop_seconds = sample_rate, crop_seconds
        self.crop_samples = round(crop_seconds * sample_rate) if crop_seconds else None
        self.augment = CutAugmenter(augment)
        self.skipped = 0

    def load(self, cut, seed: int, epoch: int) -> torch.Tensor:
        """(T,) float32 waveform of one cut after resampling, augmentation and cropping."""
        cut_id = cut.id
        if cut.sampling_rate != self.sample_rate:
            cut = cut.resample(self.sample_rate)
        if self.augment:
            cut = self.augment(cut, seed, epoch)
        if self.crop_seconds:
            cut = random_crop(cut, self.crop_seconds, seed, epoch, cut_id)
        with (
            seeded_rng(cut_rng(seed, epoch, cut_id, "load").getrandbits(63)),
            single_threaded(self.augment.single_threaded),
        ):
            audio = load_mono(cut)  # already at sample_rate
        return audio[: self.crop_samples] if self.crop_samples else audio

    def __call__(self, item: CutBatch) -> dict[str, Any]:
        waves, texts, speakers, ids = [], [], [], []
        for cut in item.cuts:
            try:
                wave = self.load(cut, item.seed, item.epoch)
            except Exception as e:  # a corrupt file in a large corpus: skip and count
                self.skipped += 1
                logger.warning("skipping cut %s (%d skipped so far): %s", cut.id, self.skipped, e)
                continue
            if wave.numel() == 0:
                self.skipped += 1
                logger.warning("skipping empty cut %s", cut.id)
                continue
            waves.append(wave)
            texts.append(" ".join(s.text for s in cut.supervisions if s.text))
            speakers.append(next((s.speaker for s in cut.supervisions if s.speaker), "") or "")
            ids.append(cut.id)
        if not waves:
            raise RuntimeError(f"no cut of a batch could be loaded ({len(item.cuts)} cuts, first {item.cuts[0].id})")
        lens = torch.tensor([w.numel() for w in waves], dtype=torch.long)
        audio = pad_sequence(waves, batch_first=True)  # (B, T), zero past each clip's length
        if self.crop_samples:
            audio = F.pad(audio, (0, self.crop_samples - audio.shape[1]))
        return {"audio": audio, "audio_lens": lens, "text": texts, "speaker": speakers, "cut_id": ids}
