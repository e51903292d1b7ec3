"""Builders that turn a :class:`~unitok.train.RunConfig` into a task and a data set (via the registries)."""

from __future__ import annotations

from functools import partial
from typing import Any

from unitok.losses.compose import LossComposer
from unitok.losses.reconstruction import ReconstructionLoss


def build_autoencoder_task(cfg, model, params: dict[str, Any]):
    """AE-only task. ``params``: ``modality`` ('image' | 'audio'), adapter arguments, ``vgg_weights`` for LPIPS."""
    from unitok.engine.task import AutoencoderTask
    from unitok.registry import ADAPTERS

    params = dict(params)
    modality = params.pop("modality", "image")
    vgg_weights = params.pop("vgg_weights", None)
    adapter = ADAPTERS.get(modality)(**params)
    composer = LossComposer(cfg.losses)
    perceptual = None
    if composer.active("rec_lpips"):
        from unitok.losses.perceptual import LPIPS

        perceptual = LPIPS(vgg_weights=vgg_weights)  # stops here, saying where to put the VGG file, if missing
    denorm = partial(adapter.denormalize, clamp=False) if hasattr(adapter, "denormalize") else None
    return AutoencoderTask(adapter, model, ReconstructionLoss(denorm, perceptual), composer)
