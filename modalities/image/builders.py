"""Data-set builders for the training registry (``unitok.registry.DATASETS``)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import default_collate


def build_toy_dataset(params: dict[str, Any], split: str = "train"):
    """The embedded procedural shapes (:class:`~unitok.modalities.image.toy.ToyShapes`) and its collate."""
    from unitok.modalities.image.toy import ToyShapes

    return ToyShapes(split=split, **params), default_collate
