"""Task: owns the trainable model(s), the adapter, losses and frozen parts; computes the training loss.

The trainer wraps only the submodules named in ``Task.trainable`` (DDP/FSDP) and optimises their parameters;
frozen perceptual nets stay unwrapped, and EMA teachers (``Task.teachers``) are sharded like the trainable
modules under FSDP. A wrapped module must be *called* (its ``forward``) for gradient synchronisation (FSDP:
parameter gathering) to work, so each trainable module's forward computes everything the losses need.

Two optimiser phases (e.g. a GAN: generator, then discriminator): ``aux_trainable`` names the trainable modules
that a second optimiser (``aux_optim``) steps after the main step. Per optimiser step the trainer runs the main
phase (``training_forward(batch, step, cache)`` over the micro-batches, backward, clip, step of the other
modules) and then, when ``aux_active(step)``, the auxiliary phase (``aux_forward(batch, step, cache)`` over the
same micro-batches, with the ``cache`` dict the main phase filled for each). A task with ``aux_first`` reverses the
order (DAC / Semantic-VAE update the discriminator first): when ``aux_active(step)``, the auxiliary phase runs
first with empty caches that ``aux_forward`` fills for the main phase. During each phase only its own
parameters require gradients, and :meth:`Task.call` goes through the wrapper only for the modules it trains: a
discriminator called inside the generator loss runs bare, so DDP neither expects nor syncs its gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unitok.adapter import ModalityAdapter
from unitok.engine.optim import OptimConfig
from unitok.losses.compose import LossComposer
from unitok.models.autoencoder import TransformerAutoencoder


def random_subset(batch_size: int, size: int, device: torch.device | str | None = None) -> torch.Tensor | None:
    """Indices of ``size`` random samples of a batch (global torch RNG); None for the whole batch (size 0 or >= B)."""
    if size <= 0 or size >= batch_size:
        return None
    return torch.randperm(batch_size)[:size].to(device)


class Task(nn.Module):
    """Base class. Subclasses set ``trainable`` and implement :meth:`training_forward`."""

    #: attribute names of the submodules the trainer wraps and optimises
    trainable: tuple[str, ...] = ("student",)
    #: the subset of ``trainable`` stepped by the auxiliary optimiser, after the main step (empty: one phase)
    aux_trainable: tuple[str, ...] = ()
    #: the auxiliary optimiser's configuration (required when ``aux_trainable`` is set)
    aux_optim: OptimConfig | None = None
    #: run the auxiliary phase before the main one in each step (its ``aux_forward`` then fills the cache)
    aux_first: bool = False
    #: frozen EMA copies of trainable modules (e.g. a DINO teacher), updated in :meth:`after_step`: under FSDP the
    #: trainer shards them exactly like the trainable modules (the update stays shard-local), so they must be run
    #: through their ``forward`` (where FSDP gathers their parameters)
    teachers: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._wrapped: dict[str, nn.Module] = {}  # DDP wrappers live outside the module tree (clean state dicts)
        self._phase_modules: frozenset[str] | None = None  # modules the running phase trains (None: all)

    def set_wrapper(self, name: str, wrapper: nn.Module) -> None:
        """Route calls of trainable module ``name`` through ``wrapper`` (e.g. DDP)."""
        self._wrapped[name] = wrapper

    def set_phase(self, names: tuple[str, ...] | None) -> None:
        """The trainable modules the running optimiser phase trains (None: all); :meth:`call` wraps only these."""
        self._phase_modules = frozenset(names) if names is not None else None

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a trainable module through its wrapper when it has one and the running phase trains it."""
        routed = self._phase_modules is None or name in self._phase_modules
        module = self._wrapped.get(name, getattr(self, name)) if routed else getattr(self, name)
        return module(*args, **kwargs)

    def training_forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch -> (scalar loss to back-propagate, report of named scalars).

        Tasks with an auxiliary phase take a third argument, ``cache``: a dict kept for :meth:`aux_forward`.
        """
        raise NotImplementedError

    def aux_active(self, step: int) -> bool:
        """Whether the auxiliary phase runs at ``step`` (decided once per step, identically on every rank)."""
        return bool(self.aux_trainable)

    def aux_forward(
        self, batch: dict[str, Any], step: int, cache: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Auxiliary phase, one micro-batch (with what the main phase put in ``cache``) -> (loss, report)."""
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
