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


def build_vtp_task(cfg, model, params: dict[str, Any]):
    """VTP pre-training task (:class:`~unitok.modalities.image.vtp_task.VTPTask`) from ``task.params``."""
    from unitok.config import build_config
    from unitok.losses.compose import LossComposer
    from unitok.modalities.image.vtp_task import VTPTask, VTPTaskConfig

    return VTPTask(model, LossComposer(cfg.losses), build_config(VTPTaskConfig, params), cfg.train.steps)
