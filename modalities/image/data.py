"""Image-text data: webdataset tar shards (img2dataset layout), caption folders, decoding and collation.

Samples are dicts ``{"image": PIL RGB or whatever ``transform`` returns, "text": caption, ...}``; a transform that
returns a dict (multi-crop) is merged into the sample. Corrupt or incomplete samples are skipped and counted in
``stats`` (never raised), as DESIGN.md section 5 asks for large data sets; a missing or empty shard list, or a
folder without images, is a configuration error and raises.

Batch legend (:func:`collate_image_text`):
    image: (B, 3, H, W) float, text: list of B str, label: (B,) long when present, other keys: lists of B.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from unitok.modalities.image.shard_stream import ShardStream, ShardTally, remap_positions
from unitok.modalities.image.shards import (  # noqa: F401  (shard lists are part of this module's API)
    SHARD_ERRORS,
    Group,
    ShuffleBuffer,
    expand_braces,
    read_groups,
    resolve_shards,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

Transform = Callable[[Image.Image], Any]


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image (unknown format, truncated, corrupt)."""


def decode_image(data: bytes) -> Image.Image:
    """Fully decode image bytes into a PIL RGB image.

    Raises:
        ImageDecodeError: for anything PIL cannot decode completely (the whole image is loaded here, so a
            truncated file fails now rather than later in a transform).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {e}") from e


def _apply_transform(sample: dict[str, Any], image: Image.Image, transform: Transform | None) -> dict[str, Any]:
    result = image if transform is None else transform(image)
    if isinstance(result, dict):
        sample.update(result)
    else:
        sample["image"] = result
    return sample


# ---------------------------------------------------------------------------------------------------------------
# Webdataset tar shards


class WebDatasetShards(IterableDataset):
    """Image-text samples from webdataset tar shards (``<key>.jpg|png|webp`` + ``<key>.txt`` + ``<key>.json``).

    Reads with the standard ``tarfile`` module in streaming mode. Shards are split between *consumers*: consumer
    ``c = rank * num_workers + worker_id`` of ``n = world_size * num_workers`` reads shards ``c, c + n, ...`` of the
    epoch's shard order (a shuffle seeded by ``(seed, epoch)``, the same on all ranks), so consumers read disjoint
    shards and together read all of them once per epoch. An optional buffer shuffle, seeded by ``(seed, epoch,
    consumer)``, mixes a consumer's raw sample groups (bytes) before they are decoded.

    ``resampled`` (open_clip's ``--dataset-resampled``, webdataset's ``ResampledShards``) replaces epochs: every
    consumer draws shards with replacement from the whole list, forever, each draw a function of ``(seed, consumer,
    draw number)``; the buffer never drains. Consumers then overlap and may outnumber the shards; there are no epochs
    (training is step-based, so none is needed).

    Two ways to read:

    - ``iter(ds)`` / :meth:`iterate`: one epoch (endless epochs with ``repeat``, endless draws when resampled).
      Fewer shards than consumers leaves some consumers without data (a warning says so).
    - :meth:`stream`, what the trainer uses (:mod:`unitok.engine.stream`): one consumer's endless samples with a
      position that resumes exactly. Epochs are per consumer: after its shards of epoch ``e`` a consumer goes on
      with its shards of epoch ``e + 1`` (training is step-based; consumers never run dry, each needs a shard).
      The position is (epoch or draw count, groups read, sizes of the shards still in the buffer, shuffle-buffer
      content, RNG state): resuming opens no shard wholly before it and decodes nothing that was consumed.
      :meth:`remap_positions` carries the positions over to another number of consumers (see there).

    Skipped samples (undecodable image, missing image or caption, cut off by a truncated shard) and unreadable
    shards are counted in ``stats``; every shard logs one line with its counts once all its samples are handled.
    The counters live in the process that iterates (a DataLoader worker has its own copy); the log lines are the
    cross-process record.

    Each sample: ``{"image", "text", "json" (dict or None), "key", "url"}``.

    Args:
        shards: list of paths, a glob, brace notation (``/data/shard-{00000..00012}.tar``), a directory (its
            ``*.tar``), or ``::``-joined.
        transform: applied to the PIL RGB image; a dict result is merged into the sample.
        seed: seed of the shard-order and sample shuffles (:meth:`stream` takes its own).
        shuffle_shards: shuffle the shard order every epoch (else the given order).
        shuffle_buffer: size of a buffer shuffle over sample groups within a consumer (0: stream order).
        repeat: ``iter`` goes through epochs forever (epoch, epoch + 1, ...) instead of one.
        resampled: draw shards with replacement, endlessly, instead of epochs (``iter`` is endless too).
        require_caption: skip samples without ``.txt``; else their caption is "".
        rank, world_size: override torch.distributed for ``iter`` (default: the process group, else 0 / 1).
        check_exists: fail at construction when a named shard does not exist.
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike],
        transform: Transform | None = None,
        seed: int = 0,
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        repeat: bool = False,
        resampled: bool = False,
        require_caption: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        check_exists: bool = True,
    ):
        super().__init__()
        self.shards = resolve_shards(shards, check_exists=check_exists)
        self.transform = transform
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.repeat = repeat
        self.resampled = resampled
        self.require_caption = require_caption
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.stats: dict[str, int] = dict.fromkeys(
            ("samples", "skipped", "shards", "shard_errors", "skipped_decode", "skipped_no_image",
             "skipped_no_caption", "skipped_truncated"), 0,
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order of ``epoch`` (call before each epoch, as with ``DistributedSampler``)."""
        self.epoch = epoch

    def shard_indices(self, epoch: int, seed: int | None = None) -> list[int]:
        """The order of ``epoch`` as indices into ``shards`` (the same on every rank and worker)."""
        order = list(range(len(self.shards)))
        if self.shuffle_shards:
            random.Random(f"unitok-shards/{self.seed if seed is None else seed}/{epoch}").shuffle(order)
        return order

    def shard_order(self, epoch: int, seed: int | None = None) -> list[str]:
        """All shards in the order of ``epoch`` (the same on every rank and worker)."""
        return [self.shards[i] for i in self.shard_indices(epoch, seed)]

    def consumer_shards(self, epoch: int, consumer: int, num_consumers: int, seed: int | None = None) -> list[str]:
        """The shards that consumer ``consumer`` of ``num_consumers`` reads in ``epoch``."""
        if not 0 <= consumer < num_consumers:
            raise ValueError(f"bad consumer {consumer} of {num_consumers}")
        return self.shard_order(epoch, seed)[consumer::num_consumers]

    def shards_for(self, epoch: int, rank: int, world_size: int, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """The shards that one (rank, worker) consumer reads in ``epoch``."""
        if not (0 <= rank < world_size and 0 <= worker_id < num_workers):
            raise ValueError(f"bad consumer rank {rank}/{world_size}, worker {worker_id}/{num_workers}")
        return self.consumer_shards(epoch, rank * num_workers + worker_id, world_size * num_workers)

    def _consumer(self) -> tuple[int, int, int, int]:
        rank, world_size = self.rank, self.world_size
        if rank is None or world_size is None:
            import torch.distributed as dist

            ready = dist.is_available() and dist.is_initialized()
            rank = rank if rank is not None else (dist.get_rank() if ready else 0)
            world_size = world_size if world_size is not None else (dist.get_world_size() if ready else 1)
        info = get_worker_info()
        return rank, world_size, (info.id if info else 0), (info.num_workers if info else 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world_size, worker_id, num_workers = self._consumer()
        return self.iterate(rank, world_size, worker_id, num_workers)

    def iterate(
        self, rank: int = 0, world_size: int = 1, worker_id: int = 0, num_workers: int = 1
    ) -> Iterator[dict[str, Any]]:
        """The samples of one consumer from ``self.epoch`` on; ``iter(self)`` calls this with the real values."""
        consumer, num_consumers = rank * num_workers + worker_id, world_size * num_workers
        if self.resampled:
            yield from ShardStream(self, consumer, num_consumers, self.seed, None)
            return  # never reached: resampled streams are endless
        epoch = self.epoch
        while True:
            if not self.shards_for(epoch, rank, world_size, worker_id, num_workers):
                logger.warning(
                    "rank %d worker %d gets no shard: %d shards for %d consumers",
                    rank, worker_id, len(self.shards), num_consumers,
                )  # fmt: skip
                return
            yield from ShardStream(self, consumer, num_consumers, self.seed, None).epoch(epoch)
            if not self.repeat:
                return
            epoch += 1

    def stream(self, consumer: int, num_consumers: int, seed: int, state: dict[str, Any] | None = None) -> ShardStream:
        """Endless samples of one consumer from a saved position (:class:`ShardStream`; the trainer's protocol)."""
        if len(self.shards) < num_consumers and not self.resampled:
            raise ValueError(
                f"{len(self.shards)} shards for {num_consumers} data consumers (ranks x DataLoader workers): every "
                "consumer needs at least one shard; use more shards, fewer train.num_workers or resampled shards"
            )
        self.check_position(state)
        return ShardStream(self, consumer, num_consumers, seed, state)

    def check_position(self, state: dict[str, Any] | None) -> None:
        """Raise ValueError for a saved position of another shard list or of the other mode (resampled or epochs)."""
        if state is None:
            return
        if state.get("num_shards", len(self.shards)) != len(self.shards):
            raise ValueError(
                f"the saved data position is for {state['num_shards']} shards, this data set has {len(self.shards)}: "
                "resume with the same shard list"
            )
        if ("resampled" in state) != self.resampled:
            saved, now = ("resampled", "epochs") if "resampled" in state else ("epochs", "resampled")
            raise ValueError(f"the saved data position is for {saved} shards, this data set reads {now}: resume with "
                             f"the same data.params.resampled")  # fmt: skip

    def remap_positions(self, states: dict[int, Any], old: int, new: int, seed: int) -> dict[int, dict[str, Any]]:
        """Positions of ``new`` consumers continuing those of ``old`` (another world size or number of workers).

        With epochs nothing of the epochs under way is lost or read twice (shuffle order and augmentation randomness
        start afresh); resampled consumers draw afresh (:func:`~unitok.modalities.image.shard_stream.remap_positions`).
        """
        return remap_positions(self, states, old, new, seed)

    def decode_group(self, item: tuple[int, str, Group], tally: ShardTally) -> dict[str, Any] | None:
        """One (piece index, url, group) as read, decoded into a sample; or None, the reason counted in ``tally``."""
        k, url, (key, group, damage) = item
        reason = None
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in group), None)
        caption = group.get("txt")
        if damage == "lost":
            reason = "truncated"
        elif image_ext is None:
            reason = "no_image"
        elif caption is None and self.require_caption:
            reason = "no_caption"
        if reason is not None and damage == "truncated":  # the last group may just have lost its other members
            reason = "truncated"
        elif reason is None:
            try:
                image = decode_image(group[image_ext])
            except ImageDecodeError:
                reason = "decode"
        tally.handled(k, reason)
        if reason is not None:
            return None
        meta = None
        if "json" in group:
            try:
                meta = json.loads(group["json"])
            except ValueError:  # metadata is optional: keep the sample
                meta = None
        text = (caption or b"").decode("utf-8", errors="replace").strip()
        return _apply_transform({"text": text, "json": meta, "key": key, "url": url}, image, self.transform)


# ---------------------------------------------------------------------------------------------------------------
# Folder of images with captions


class ImageCaptionFolder(Dataset):
    """Images with side-by-side captions (``a/img.jpg`` + ``a/img.txt``), found recursively in sorted order.

    With ``labels=True`` the class is the first-level subfolder (ImageFolder style: sorted names -> 0..K-1) and
    files directly under ``root`` are ignored. An unreadable image is skipped: the next valid index is returned
    instead. ``stats["skipped"]`` counts such substituted requests, ``stats["skipped_decode"]`` the distinct
    unreadable files found (they are remembered and not read again).

    Each sample: ``{"image", "text", "path"}`` plus ``"label"`` with ``labels=True``.

    Args:
        root: folder to scan.
        transform: applied to the PIL RGB image; a dict result is merged into the sample.
        labels: derive class labels from first-level subfolder names.
        require_caption: leave out images without a ``.txt`` (counted in ``stats["no_caption"]``); else caption "".
        extensions: image file suffixes (lower case, without dot).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Transform | None = None,
        labels: bool = False,
        require_caption: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"image folder {self.root!r} does not exist")
        self.transform = transform
        self.stats = {"samples": 0, "skipped": 0, "skipped_decode": 0, "no_caption": 0, "unlabelled": 0}
        self.classes: list[str] = []
        if labels:
            self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.with_labels = labels
        self.items = self._scan(tuple(e.lower() for e in extensions), require_caption)
        if not self.items:
            raise ValueError(f"no captioned images ({', '.join(extensions)}) found under {self.root!r}")
        self._bad: set[int] = set()

    def _scan(self, extensions: tuple[str, ...], require_caption: bool) -> list[tuple[str, str | None, int]]:
        items = []
        for folder, subfolders, files in os.walk(self.root, followlinks=True):
            subfolders.sort()
            rel = os.path.relpath(folder, self.root)
            label = -1
            if self.with_labels:
                if rel == ".":
                    self.stats["unlabelled"] += sum(f.rsplit(".", 1)[-1].lower() in extensions for f in files)
                    continue
                label = self.class_to_idx[rel.split(os.sep)[0]]
            for name in sorted(files):
                stem, dot, ext = name.rpartition(".")
                if not dot or ext.lower() not in extensions:
                    continue
                caption = os.path.join(folder, stem + ".txt")
                if not os.path.isfile(caption):
                    if require_caption:
                        self.stats["no_caption"] += 1
                        continue
                    caption = None
                items.append((os.path.join(folder, name), caption, label))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> dict[str, Any]:
        path, caption_path, label = self.items[index]
        with open(path, "rb") as f:
            image = decode_image(f.read())
        text = ""
        if caption_path is not None:
            with open(caption_path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace").strip()
        sample: dict[str, Any] = {"text": text, "path": path}
        if self.with_labels:
            sample["label"] = label
        return _apply_transform(sample, image, self.transform)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                sample = self._load(i)
            except (ImageDecodeError, OSError) as e:
                self._bad.add(i)
                self.stats["skipped_decode"] += 1
                logger.warning("skipping unreadable image %s: %s", self.items[i][0], e)
                continue
            self.stats["samples"] += 1
            self.stats["skipped"] += step > 0
            return sample
        raise RuntimeError(f"none of the {n} images under {self.root!r} could be read")


# ---------------------------------------------------------------------------------------------------------------
# Collation


def collate_image_text(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: stack ``image`` (and other same-shape tensors), ``label`` -> (B,) long, the rest as lists.

    Raises:
        ValueError: for an empty list, images of different shapes, or a sample missing ``image`` / ``text``.
        TypeError: when images are still PIL images (give the data set a transform that returns tensors).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = list(dict.fromkeys(k for s in samples for k in s))
    batch: dict[str, Any] = {}
    for key in keys:
        if key in ("image", "text", "label") and any(key not in s for s in samples):
            raise ValueError(f"some samples have no {key!r}")
        values = [s.get(key) for s in samples]
        if key == "label":
            batch[key] = torch.as_tensor(values, dtype=torch.long)
        elif key == "text":
            batch[key] = [str(v) for v in values]
        elif all(torch.is_tensor(v) for v in values):
            if len({tuple(v.shape) for v in values}) > 1:
                if key == "image":
                    raise ValueError(f"images of different shapes {sorted({tuple(v.shape) for v in values})}")
                batch[key] = values
            else:
                batch[key] = torch.stack(values)
        elif key == "image":
            kind = type(next(v for v in values if not torch.is_tensor(v))).__name__
            raise TypeError(f"cannot stack images of type {kind}: use a transform that returns (3, H, W) tensors")
        else:
            batch[key] = values
    return batch
