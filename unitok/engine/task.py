"""Task: owns the trainable model(s), the adapter, losses and frozen parts; computes the training loss.

The trainer wraps only the submodules named in ``Task.trainable`` (DDP/FSDP) and optimises their parameters;
frozen teachers and perceptual nets stay unwrapped. A wrapped module must be *called* (its ``forward``) for
gradient synchronisation to work, so each trainable module's forward computes everything the losses need.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unitok.adapter import ModalityAdapter
from unitok.losses.compose import LossComposer
from unitok.models.autoencoder import TransformerAutoencoder


class Task(nn.Module):
    """Base class. Subclasses set ``trainable`` and implement :meth:`training_forward`."""

    #: attribute names of the submodules the trainer wraps and optimises
    trainable: tuple[str, ...] = ("student",)

    def __init__(self) -> None:
        super().__init__()
        self._wrapped: dict[str, nn.Module] = {}  # DDP wrappers live outside the module tree (clean state dicts)

    def set_wrapper(self, name: str, wrapper: nn.Module) -> None:
        """Route calls of trainable module ``name`` through ``wrapper`` (e.g. DDP)."""
        self._wrapped[name] = wrapper

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a trainable module through its wrapper when it has one."""
        return self._wrapped.get(name, getattr(self, name))(*args, **kwargs)

    def training_forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch -> (scalar loss to back-propagate, report of named scalars)."""
        raise NotImplementedError

    def before_optimizer_step(self, step: int) -> None:
        """Called after back-propagation and clipping, before the optimiser step (e.g. freeze some gradients)."""

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (EMA teachers, logit-scale clamps, ...)."""

    def export_model(self) -> nn.Module:
        """The model a run exports (``save_pretrained``) and evaluates."""
        return getattr(self, self.trainable[0])


class AutoencoderTask(Task):
    """Reconstruction only (the AE-only tokenizer): adapter -> autoencoder -> adapter, reconstruction loss."""

    trainable = ("student",)

    def __init__(self, adapter: ModalityAdapter, model: TransformerAutoencoder, reconstruction: nn.Module,
                 composer: LossComposer):  # fmt: skip
        super().__init__()
        self.adapter = adapter
        self.student = model
        self.reconstruction = reconstruction
        self.composer = composer

    def training_forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = self.adapter.patchify(batch)
        out = self.call("student", tokens)
        recon = self.adapter.unpatchify(out["recon"])
        terms = self.reconstruction(recon, self.adapter.target(batch))
        return self.composer(terms, step)
