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
    from unitok.modalities.image.augment import MultiCropAugmentation, collate_multicrop

    size = params.get("size", 64)
    augment = MultiCropAugmentation(**{"global_size": size, "image_size": size, **multicrop})
    return ToyShapes(split=split, transform=augment, **params), collate_multicrop


def build_image_folder_dataset(params: dict[str, Any], split: str = "train"):
    """A folder of images with ``.txt`` captions (:class:`~unitok.modalities.image.data.ImageCaptionFolder`).

    ``params``: ``root`` (required), ``size`` (clean view side, default 256), ``multicrop`` (DINOv2 crops, as
    for ``toy_shapes``), ``labels`` (first-level subfolders as classes), ``require_caption``.
    """
    from unitok.modalities.image.augment import MultiCropAugmentation, collate_multicrop, reconstruction_transform
    from unitok.modalities.image.data import ImageCaptionFolder, collate_image_text

    params = dict(params)
    unknown = set(params) - {"root", "size", "multicrop", "labels", "require_caption", "extensions"}
    if unknown:
        raise ValueError(f"unknown data.params for image_folder: {sorted(unknown)}")
    if "root" not in params:
        raise ValueError("data.params.root (a folder of images with .txt captions) is required for image_folder")
    size = params.pop("size", 256)
    multicrop = params.pop("multicrop", None)
    if multicrop is not None and split == "train":
        augment = MultiCropAugmentation(**{"global_size": size, "image_size": size, **multicrop})
        return ImageCaptionFolder(transform=augment, **params), collate_multicrop
    return ImageCaptionFolder(transform=reconstruction_transform(size), **params), collate_image_text


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
