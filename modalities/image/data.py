"""Image-text data: webdataset tar shards (img2dataset layout), caption folders, decoding and collation.

Samples are dicts ``{"image": PIL RGB or whatever ``transform`` returns, "text": caption, ...}``; a transform that
returns a dict (multi-crop) is merged into the sample. Corrupt or incomplete samples are skipped and counted in
``stats`` (never raised), as DESIGN.md section 5 asks for large data sets; a missing or empty shard list, or a
folder without images, is a configuration error and raises.

Batch legend (:func:`collate_image_text`):
    image: (B, 3, H, W) float, text: list of B str, label: (B,) long when present, other keys: lists of B.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# Errors a damaged, truncated or unreadable tar shard raises while being streamed.
SHARD_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)

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
# Shard lists


_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``a-{000..002}.tar`` -> three names (zero padding kept), ``{x,y}`` -> two.

    Several groups expand as a product, left to right; a group that is neither a range nor a comma list is kept.
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = _RANGE.match(body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (a, b))
        width = max(len(a), len(b)) if padded else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + rest for rest in expand_braces(tail)]
    return [head + opt + rest for opt in options for rest in expand_braces(tail)]


def resolve_shards(shards: str | os.PathLike | Sequence[str | os.PathLike], check_exists: bool = True) -> list[str]:
    """Shard paths from a list, a glob, brace notation, or several of them joined by ``::``.

    Raises:
        ValueError: when nothing matches.
        FileNotFoundError: for named shards that do not exist (with ``check_exists``).
    """
    items = [shards] if isinstance(shards, str | os.PathLike) else list(shards)
    paths: list[str] = []
    for item in items:
        for part in str(os.fspath(item)).split("::"):
            for name in expand_braces(part):
                if glob.has_magic(name):
                    matched = sorted(glob.glob(name))
                    if not matched:
                        raise ValueError(f"shard pattern {name!r} matches no file")
                    paths.extend(matched)
                else:
                    paths.append(name)
    if not paths:
        raise ValueError(f"no shards given ({shards!r})")
    if check_exists:
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(paths)} shards do not exist, e.g. {missing[:3]}")
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Webdataset tar shards


def _split_member_name(name: str) -> tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``): the key ends at the first dot of the base name."""
    folder, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext.lower()


class _BrokenMember(Exception):
    """A member whose data could not be read; carries the key so its sample is counted as truncated."""

    def __init__(self, key: str, cause: BaseException):
        super().__init__(str(cause))
        self.key = key


def _read_members(path: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, ext, data) of every regular member, streamed. Raises ``_BrokenMember`` or a ``SHARD_ERRORS``."""
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_member_name(member.name)
            try:
                data = tar.extractfile(member).read()
            except SHARD_ERRORS as e:
                raise _BrokenMember(key, e) from e
            yield key, ext, data


class WebDatasetShards(IterableDataset):
    """Image-text samples from webdataset tar shards (``<key>.jpg|png|webp`` + ``<key>.txt`` + ``<key>.json``).

    Reads with the standard ``tarfile`` module in streaming mode. Shards are split by shard between consumers:
    the (rank, DataLoader worker) pair ``c = rank * num_workers + worker_id`` of ``world_size * num_workers`` reads
    shards ``c, c + n, c + 2n, ...`` of the epoch's shard order, so consumers read disjoint shards and together
    read all of them once per epoch. The order is a shuffle seeded by ``(seed, epoch)``, identical on all ranks.
    Fewer shards than consumers leaves some consumers without data (a warning says so), and ranks may receive
    different numbers of samples: for DDP prefer step-based training with ``repeat=True``.

    Skipped samples (undecodable image, missing image or caption, cut off by a truncated shard) and unreadable
    shards are counted in ``stats``; every shard logs one line with its counts. The counters live in the process
    that iterates (a DataLoader worker has its own copy); the log lines are the cross-process record.

    Each sample: ``{"image", "text", "json" (dict or None), "key", "url"}``.

    Args:
        shards: list of paths, a glob, brace notation (``/data/shard-{00000..00012}.tar``), or ``::``-joined.
        transform: applied to the PIL RGB image; a dict result is merged into the sample.
        seed: seed of the shard-order and sample shuffles.
        shuffle_shards: shuffle the shard order every epoch (else the given order).
        shuffle_buffer: size of a buffer shuffle over samples within a consumer (0: stream order).
        repeat: iterate epochs forever (epoch, epoch + 1, ...) instead of one epoch per ``iter``.
        require_caption: skip samples without ``.txt``; else their caption is "".
        rank, world_size: override torch.distributed (default: the initialised process group, else 0 / 1).
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

    def shard_order(self, epoch: int) -> list[str]:
        """All shards in the order of ``epoch`` (the same on every rank and worker)."""
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"unitok-shards/{self.seed}/{epoch}").shuffle(order)
        return order

    def shards_for(self, epoch: int, rank: int, world_size: int, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """The shards that one (rank, worker) consumer reads in ``epoch``."""
        if not (0 <= rank < world_size and 0 <= worker_id < num_workers):
            raise ValueError(f"bad consumer rank {rank}/{world_size}, worker {worker_id}/{num_workers}")
        consumers = world_size * num_workers
        return self.shard_order(epoch)[rank * num_workers + worker_id :: consumers]

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
        epoch = self.epoch
        while True:
            shards = self.shards_for(epoch, rank, world_size, worker_id, num_workers)
            if not shards:
                logger.warning(
                    "rank %d worker %d gets no shard: %d shards for %d consumers",
                    rank, worker_id, len(self.shards), world_size * num_workers,
                )  # fmt: skip
                return
            samples = (s for url in shards for s in self.iter_shard(url))
            if self.shuffle_buffer > 1:
                rng = random.Random(f"unitok-samples/{self.seed}/{epoch}/{rank}/{worker_id}")
                samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
            yield from samples
            if not self.repeat:
                return
            epoch += 1

    def iter_shard(self, url: str) -> Iterator[dict[str, Any]]:
        """The valid samples of one shard; skips and shard errors are counted and logged, never raised."""
        counts = dict.fromkeys(self.stats, 0)
        key, group, error, broken = None, {}, None, None
        members = _read_members(url)
        while True:  # only the tar reading is guarded: errors of a transform propagate
            try:
                member_key, ext, data = next(members)
            except StopIteration:
                break
            except _BrokenMember as e:  # the member being read was cut off: its sample is lost
                error, broken = e, e.key
                break
            except SHARD_ERRORS as e:  # unreadable shard, or truncation between two members
                error = e
                break
            if member_key != key:
                yield from self._finish(key, group, url, counts)
                key, group = member_key, {}
            group[ext] = data
        if broken is not None:
            if broken != key:
                yield from self._finish(key, group, url, counts)
                key, group = broken, {}
            counts["skipped"] += 1
            counts["skipped_truncated"] += 1
        else:
            yield from self._finish(key, group, url, counts, truncated=error is not None)
        counts["shards"] = 1
        counts["shard_errors"] = int(error is not None)
        for k, v in counts.items():
            self.stats[k] += v
        reasons = ", ".join(f"{k[8:]} {v}" for k, v in counts.items() if k.startswith("skipped_") and v)
        msg = f"shard {url}: {counts['samples']} samples, {counts['skipped']} skipped"
        msg += f" ({reasons})" if reasons else ""
        if error is not None:
            logger.warning("%s; shard unreadable or truncated: %s", msg, error)
        else:
            logger.log(logging.WARNING if counts["skipped"] else logging.INFO, msg)

    def _finish(
        self, key: str | None, group: dict[str, bytes], url: str, counts: dict[str, int], truncated: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Turn one complete member group into a sample (zero or one yielded), counting a skip otherwise."""
        if key is None or not group:
            return
        reason = None
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in group), None)
        caption = group.get("txt")
        if image_ext is None:
            reason = "no_image"
        elif caption is None and self.require_caption:
            reason = "no_caption"
        if reason is not None:  # the last group of a truncated shard may just have lost its other members
            reason = "truncated" if truncated else reason
        else:
            try:
                image = decode_image(group[image_ext])
            except ImageDecodeError:
                reason = "decode"
        if reason is not None:
            counts["skipped"] += 1
            counts[f"skipped_{reason}"] += 1
            return
        meta = None
        if "json" in group:
            try:
                meta = json.loads(group["json"])
            except ValueError:  # metadata is optional: keep the sample
                meta = None
        text = (caption or b"").decode("utf-8", errors="replace").strip()
        counts["samples"] += 1
        yield _apply_transform({"text": text, "json": meta, "key": key, "url": url}, image, self.transform)


def _buffer_shuffle(samples: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle with a buffer of ``size`` items (deterministic for a given ``rng``)."""
    buffer: list[Any] = []
    for s in samples:
        if len(buffer) < size:
            buffer.append(s)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = s
    rng.shuffle(buffer)
    yield from buffer


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
