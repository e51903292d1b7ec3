"""Resumable, data-parallel extraction of per-sample outputs (features, metrics), cached on disk in chunks.

The samples are cut into chunks of ``chunk_size`` consecutive indices; chunk ``k`` belongs to rank
``k % world_size``. Each rank runs its chunks that are not on disk yet and writes each one atomically as soon as
it is complete, so a killed evaluation restarts where it stopped, and a second evaluation with the same key (same
checkpoint, data and settings) reads everything back without running the model. After a barrier every rank reads
all chunks in index order, so reductions are over all samples exactly (never a mean of per-rank means), and the
result does not depend on the number of ranks or the batch size. A consumer that is data-parallel itself (the
linear probe's training, kNN's search of the training set) asks for ``shard=True`` instead: each rank then reads
only its own chunks, the samples :func:`rank_samples` lists, and holds about 1/world_size of the outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from unitok.engine.checkpoint import atomic_torch_save
from unitok.eval.context import EvalContext
from unitok.eval.metrics.linear_probe import Shard

Batch = dict[str, Any]


def cache_key_dir(ctx: EvalContext, name: str, key: dict[str, Any]) -> Path:
    """``cache_root/<name>-<hash of key>``, with the key written beside the chunks for people to read."""
    text = json.dumps(key, sort_keys=True, default=str)
    folder = ctx.cache_root / f"{name}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"
    if ctx.dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "key.json"
        if not meta.exists():
            meta.write_text(json.dumps(key, indent=2, sort_keys=True, default=str) + "\n")
    ctx.barrier()
    return folder


def _chunk_path(folder: Path, k: int) -> Path:
    return folder / f"chunk_{k:06d}.pt"


def chunk_ranges(n: int, chunk_size: int) -> list[range]:
    """The sample ranges of the chunks of ``n`` samples: ``chunk_size`` consecutive indices each (the last shorter)."""
    return [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def rank_chunks(ctx: EvalContext, n: int) -> list[int]:
    """The chunks of ``n`` samples that this rank extracts (and, with ``shard=True``, reads): k % world_size == rank."""
    count = len(chunk_ranges(n, ctx.options.chunk_size))
    return list(range(ctx.dist.rank, count, ctx.dist.world_size))


def rank_samples(ctx: EvalContext, n: int) -> torch.Tensor:
    """(n_rank,) int64 indices of the samples in this rank's chunks, ascending: the rows of ``extract(shard=True)``."""
    chunks = chunk_ranges(n, ctx.options.chunk_size)
    return torch.tensor([i for k in rank_chunks(ctx, n) for i in chunks[k]], dtype=torch.long)


def rank_shard(ctx: EvalContext, n: int) -> Shard | None:
    """This rank's :class:`Shard` of ``n`` samples extracted with ``shard=True``; None when not distributed."""
    return Shard(rank_samples(ctx, n), n) if ctx.dist.enabled else None


def per_rank(ctx: EvalContext, count: int) -> list[int]:
    """Every rank's ``count`` (e.g. the samples it holds), in rank order."""
    if not ctx.dist.enabled:
        return [count]
    counts: list[Any] = [None] * ctx.dist.world_size
    torch.distributed.all_gather_object(counts, count)
    return counts


def _batches_of(ranges: Sequence[range], batch_size: int) -> list[list[int]]:
    out = []
    for r in ranges:
        out += [list(r[i : i + batch_size]) for i in range(0, len(r), batch_size)]
    return out


def extract(
    ctx: EvalContext,
    dataset: Dataset,
    fn: Callable[[Batch], dict[str, torch.Tensor]],
    name: str,
    key: dict[str, Any],
    collate_fn: Callable | None = None,
    desc: str | None = None,
    shard: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``fn`` over ``dataset`` in batches (all ranks), cache per chunk, return every sample's outputs in order.

    Args:
        dataset: map-style; sample ``i`` of every rank is the same.
        fn: a collated batch -> dict of tensors whose first dim is the batch (moved to CPU and cached).
        name: cache folder prefix (e.g. the suite name and split).
        key: everything the outputs depend on (checkpoint identity, data digest, settings): a new key, a new cache.
        shard: return only the outputs of this rank's chunks (the samples :func:`rank_samples` lists, in that order)
            instead of every sample's.
    """
    folder = cache_key_dir(ctx, name, key)
    chunks = chunk_ranges(len(dataset), ctx.options.chunk_size)
    mine = rank_chunks(ctx, len(dataset))
    todo = [k for k in mine if not _chunk_path(folder, k).is_file()]
    if todo:
        _run_chunks(ctx, dataset, fn, folder, [(k, chunks[k]) for k in todo], collate_fn, desc or name)
    elif ctx.dist.is_main:
        print(f"{desc or name}: all {len(chunks)} chunks cached in {folder}", flush=True)
    ctx.barrier()
    parts = [_load_chunk(folder, k, len(chunks[k])) for k in (mine if shard else range(len(chunks)))]
    if shard and not parts and chunks:  # a rank without chunks: no samples, but every field in its shape and dtype
        parts = [{f: v[:0] for f, v in _load_chunk(folder, 0, len(chunks[0])).items()}]
    if not parts:
        return {}
    return {field: torch.cat([p[field] for p in parts]) for field in parts[0]}


def _load_chunk(folder: Path, k: int, size: int) -> dict[str, torch.Tensor]:
    part = torch.load(_chunk_path(folder, k), map_location="cpu", weights_only=True)
    found = len(next(iter(part.values())))
    if found != size:
        raise ValueError(f"{_chunk_path(folder, k)} holds {found} samples where chunk {k} has {size}: the cache was "
                         "written with another --chunk-size (use that one, or delete the folder)")  # fmt: skip
    return part


def _run_chunks(ctx, dataset, fn, folder: Path, todo: list[tuple[int, range]], collate_fn, desc: str) -> None:
    from tqdm.auto import tqdm

    opts = ctx.options
    batches = _batches_of([r for _, r in todo], opts.batch_size)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=opts.num_workers,
        collate_fn=collate_fn,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
    )
    bar = tqdm(
        total=sum(len(r) for _, r in todo), desc=desc, unit="sample", disable=not (opts.progress and ctx.dist.is_main)
    )
    pending: dict[str, list[torch.Tensor]] = {}
    chunk_iter = iter(todo)
    k, r = next(chunk_iter)
    filled = 0
    with torch.inference_mode():
        for batch in loader:
            out = fn(batch)
            size = len(next(iter(out.values())))
            for field, value in out.items():
                pending.setdefault(field, []).append(value.detach().to("cpu"))
            filled += size
            bar.update(size)
            if filled == len(r):  # batches never cross chunk boundaries
                atomic_torch_save({f: torch.cat(v) for f, v in pending.items()}, _chunk_path(folder, k))
                pending, filled = {}, 0
                k, r = next(chunk_iter, (None, range(0)))
    bar.close()
