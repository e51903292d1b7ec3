"""Helpers shared by the image suites: the tokenizer view, split datasets with a fixed subset, cache keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from unitok.eval.context import EvalContext
from unitok.eval.image_data import IndexedImages, resolve_split
from unitok.modalities.image.tokenizer import ImageTokenizer


def image_tokenizer(ctx: EvalContext) -> ImageTokenizer:
    """The checkpoint's model as an :class:`ImageTokenizer` (a clear error when it is not an image model)."""
    return ImageTokenizer(ctx.ckpt.model, ctx.ckpt.adapter_params)


def fixed_subset(dataset: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """The whole data set, or ``max_samples`` of it drawn once with ``seed`` (kept in index order)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(len(dataset), generator=g)[:max_samples].tolist()))


def split_dataset(
    ctx: EvalContext, split: str, transform: Callable, view_seed: int | None = None
) -> tuple[Dataset, IndexedImages, dict[str, Any]]:
    """(dataset to evaluate, the full ImageFolder, data description for the result and cache keys)."""
    folder = IndexedImages(resolve_split(ctx.data, split), transform, view_seed=view_seed)
    dataset = fixed_subset(folder, ctx.options.max_samples)
    info = {"path": str(folder.root), "split": split, "num_samples": len(dataset), "num_classes": len(folder.classes),
            "files_sha1": folder.file_list_digest()}  # fmt: skip
    return dataset, folder, info


def cache_key(ctx: EvalContext, data: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """Everything cached outputs depend on: checkpoint identity, data, precision and the suite's settings."""
    return {"checkpoint": ctx.ckpt.identity, "data": data, "bf16": ctx.bf16, **settings}
