"""Frozen DINOv2 probe features of an image split, extracted once and cached: shared by ``image.linear_probe`` and
``image.knn``.

Every sample's record is the class token of each of the last ``blocks`` blocks and the mean patch token of the
last block (final norm applied, no bottleneck: :meth:`ImageTokenizer.probe_features`), computed under the run's
autocast (bf16 on CUDA) and stored in ``cache_dtype``. The cache key names the record, not the suite that asks for
it, so the two suites read each other's cache whenever the split, transform, block count and dtype coincide.

Shape legend:
    N: samples, n: stored blocks, D: encoder width
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from unitok.eval.context import EvalContext
from unitok.eval.extract import extract
from unitok.eval.image_data import probe_eval_transform, probe_train_transform
from unitok.eval.suites.image_common import cache_key, image_tokenizer, split_dataset
from unitok.modalities.image.tokenizer import ImageTokenizer, pool_probe_input

RECORD = "image.probe_features"
CACHE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class BlockFeatures:
    """The cached record of N samples: (N, n, D) class tokens, (N, D) avgpool, (N,) labels.

    As :class:`~unitok.eval.metrics.linear_probe.ProbeData`, ``inputs`` pools one classifier input per block
    setting (``n<k>``: the last k class tokens concatenated with the avgpool, float32).
    """

    cls: torch.Tensor
    avgpool: torch.Tensor
    labels: torch.Tensor
    n_blocks_list: tuple[int, ...] = ()

    def to(self, device: torch.device | str) -> BlockFeatures:
        return BlockFeatures(self.cls.to(device), self.avgpool.to(device), self.labels.to(device), self.n_blocks_list)

    @property
    def dim(self) -> int:
        return self.avgpool.shape[1]

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        cls, avgpool = self.cls[idx], self.avgpool[idx]
        return {f"n{k}": pool_probe_input(cls, avgpool, k) for k in self.n_blocks_list}


def check_crop(tok: ImageTokenizer, crop: int) -> None:
    """The probe crop must tile into whole patches."""
    if crop < tok.patch_size or crop % tok.patch_size:
        raise ValueError(
            f"crop={crop} is not a multiple of the model's patch size {tok.patch_size} "
            f"(use e.g. crop={max(1, round(crop / tok.patch_size)) * tok.patch_size})"
        )


def check_blocks(tok: ImageTokenizer, blocks: int) -> None:
    depth = len(tok.autoencoder.encoder.blocks)
    if not 1 <= blocks <= depth:
        raise ValueError(f"the probe record asks for the class tokens of the last {blocks} blocks of a {depth}-block "
                         "encoder (lower n_last_blocks_list / cache_blocks)")  # fmt: skip


def check_cache_dtype(cache_dtype: str) -> None:
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype must be one of {', '.join(CACHE_DTYPES)}, got {cache_dtype!r}")


def split_features(
    ctx: EvalContext,
    split: str,
    *,
    resize: int,
    crop: int,
    blocks: int,
    cache_dtype: str = "float16",
    view: int | None = None,
    shard: bool = False,
) -> tuple[BlockFeatures, dict[str, Any]]:
    """The probe record of every sample of ``split`` (cached), and the data description.

    Args:
        split: split under ``--data``.
        resize, crop: the evaluation transform (``Resize(resize)`` bicubic + ``CenterCrop(crop)``).
        blocks: class tokens stored per sample (the last ``blocks`` blocks).
        cache_dtype: 'float16' (half the disk and memory of ImageNet-size caches) or 'float32'.
        view: None for the evaluation transform; v >= 0 for augmented view v (``RandomResizedCrop(crop)`` bicubic
            + flip, sample i's randomness seeded by (v, i)), each view cached separately.
        shard: only the samples of this rank's cache chunks (:func:`~unitok.eval.extract.rank_samples`), for
            data-parallel consumers.
    """
    tok = image_tokenizer(ctx)
    check_crop(tok, crop)
    check_blocks(tok, blocks)
    check_cache_dtype(cache_dtype)
    if view is None:
        transform, settings = probe_eval_transform(resize, crop, tok.mean, tok.std), {"resize": resize}
    else:
        transform, settings = probe_train_transform(crop, tok.mean, tok.std), {"resize": None}
    dataset, folder, data = split_dataset(ctx, split, transform, view_seed=view)
    data["num_classes"] = len(folder.classes)
    dtype = CACHE_DTYPES[cache_dtype]

    def embed(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with ctx.autocast():
            cls, avgpool = tok.probe_features(batch["image"].to(ctx.device, non_blocking=True), blocks)
        return {"cls": cls.float().to(dtype), "avgpool": avgpool.float().to(dtype), "label": batch["label"]}

    key = cache_key(ctx, data, suite=RECORD, crop=crop, view=view, blocks=blocks, cache_dtype=cache_dtype,
                    transform="eval" if view is None else "train", mean=tok.mean, std=tok.std, **settings)  # fmt: skip
    name = f"probe_{split}" + ("" if view is None else f"_view{view}")
    desc = f"probe features {split}" + ("" if view is None else f" (view {view})")
    out = extract(ctx, dataset, embed, name, key, desc=desc, shard=shard)
    return BlockFeatures(out["cls"], out["avgpool"], out["label"].long()), data
