"""Data-set builders for the training registry (``unitok.registry.DATASETS``)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import default_collate


def build_toy_dataset(params: dict[str, Any], split: str = "train"):
    """The embedded procedural shapes (:class:`~unitok.modalities.image.toy.ToyShapes`) and its collate.

    ``params["multicrop"]`` (arguments of :class:`~unitok.modalities.image.augment.MultiCropAugmentation`) turns
    every sample into DINOv2 global/local crops plus the clean ``image`` view.
    """
    from unitok.modalities.image.toy import ToyShapes

    params = dict(params)
    multicrop = params.pop("multicrop", None)
    if multicrop is None or split != "train":
        return ToyShapes(split=split, **params), default_collate
    from unitok.modalities.image.augment import MultiCropAugmentation

    # image_size 0: the clean view comes straight from ToyShapes' cached pixels (no resize at the same size)
    augment = MultiCropAugmentation(**{"global_size": params.get("size", 64), "image_size": 0, **multicrop})
    return ToyShapes(split=split, transform=augment, **params), augment.collate


def _train_views(size: int, multicrop: dict[str, Any] | None, split: str):
    """(transform, collate) of the image data sets: DINOv2 multi-crop for training, else the clean view."""
    from unitok.modalities.image.augment import MultiCropAugmentation, reconstruction_transform
    from unitok.modalities.image.data import collate_image_text

    if multicrop is not None and split == "train":
        augment = MultiCropAugmentation(**{"global_size": size, "image_size": size, **multicrop})
        return augment, augment.collate
    return reconstruction_transform(size), collate_image_text


def _checked(name: str, params: dict[str, Any], allowed: set[str], required: str, what: str) -> dict[str, Any]:
    """``params`` without null values (null = unset, so a recipe's other data source can be switched off)."""
    params = {k: v for k, v in params.items() if v is not None}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown data.params for {name}: {sorted(unknown)} (known: {sorted(allowed)})")
    if required not in params:
        raise ValueError(f"data.params.{required} ({what}) is required for {name}")
    return params


def build_image_folder_dataset(params: dict[str, Any], split: str = "train"):
    """A folder of images with ``.txt`` captions (:class:`~unitok.modalities.image.data.ImageCaptionFolder`).

    ``params``: ``root`` (required), ``size`` (clean view side, default 256), ``multicrop`` (DINOv2 crops, as
    for ``toy_shapes``), ``labels`` (first-level subfolders as classes), ``require_caption``; null values are unset.
    """
    from unitok.modalities.image.data import ImageCaptionFolder

    allowed = {"root", "size", "multicrop", "labels", "require_caption", "extensions"}
    params = _checked("image_folder", params, allowed, "root", "a folder of images with .txt captions")
    transform, collate = _train_views(params.pop("size", 256), params.pop("multicrop", None), split)
    return ImageCaptionFolder(transform=transform, **params), collate


def build_webdataset_dataset(params: dict[str, Any], split: str = "train"):
    """img2dataset / DataComp / LAION webdataset shards (:class:`~unitok.modalities.image.data.WebDatasetShards`).

    A streaming data set: the trainer reads it through :mod:`unitok.engine.stream` (exact resume, disjoint shards
    per rank and worker, per-consumer epochs; the data order follows ``train.seed``).

    ``params``: ``shards`` (required: brace pattern ``/data/{00000..01023}.tar``, glob, directory or list),
    ``size`` (clean view side, default 256), ``multicrop`` (DINOv2 crops, as for ``image_folder``),
    ``shuffle_buffer`` (sample groups mixed within a worker, default 5000 as open_clip), ``shuffle_shards``,
    ``resampled`` (draw shards with replacement, endlessly, instead of epochs; open_clip's ``--dataset-resampled``),
    ``require_caption``; null values are unset.
    """
    from unitok.modalities.image.data import WebDatasetShards

    allowed = {"shards", "size", "multicrop", "shuffle_buffer", "shuffle_shards", "resampled", "require_caption"}
    params = _checked("webdataset", params, allowed, "shards", "tar shards: a brace pattern, glob, directory or list")
    transform, collate = _train_views(params.pop("size", 256), params.pop("multicrop", None), split)
    params.setdefault("shuffle_buffer", 5000)
    return WebDatasetShards(transform=transform, **params), collate


def build_vtp_task(cfg, model, params: dict[str, Any]):
    """VTP pre-training task (:class:`~unitok.modalities.image.vtp_task.VTPTask`) from ``task.params``."""
    from unitok.config import build_config
    from unitok.losses.compose import LossComposer
    from unitok.modalities.image.vtp_task import VTPTask, VTPTaskConfig

    return VTPTask(model, LossComposer(cfg.losses), build_config(VTPTaskConfig, params), cfg.train.steps)


def build_vtp_gan_task(cfg, model, params: dict[str, Any]):
    """Stage-2 GAN fine-tuning task (:class:`~unitok.modalities.image.gan_task.VTPGANTask`) from ``task.params``."""
    from unitok.config import build_config
    from unitok.losses.compose import LossComposer
    from unitok.modalities.image.gan_task import VTPGANTask, VTPGANTaskConfig

    return VTPGANTask(model, LossComposer(cfg.losses), build_config(VTPGANTaskConfig, params))
