"""The contract between a modality and the modality-agnostic core.

A :class:`ModalityAdapter` turns a batch of raw signals (images, waveforms) into :class:`Tokens` and back.
The core (Transformer stacks, the autoencoder) only ever sees tokens, coordinates and masks.

Shape legend:
    B: batch, N: tokens per sample, P: values per token (``patch_dim``), C: coordinate dims (``coord_ndim``)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass
class Tokens:
    """A padded batch of token sequences.

    Attributes:
        x: (B, N, P) token values (raw patches before the in-projection, features after it).
        coords: (B, N, C) float32 positions of every token, normalised so that the signal's reference extent
            spans [0, 1] (a patch centre at ``(k + 0.5) / n``). RoPE maps them to [-1, 1] itself.
        mask: (B, N) bool, True where a token is real and False where it is padding; None means all real.
        meta: what the adapter needs to turn tokens back into a signal (grid size, lengths, ...).
    """

    x: torch.Tensor
    coords: torch.Tensor
    mask: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim != 3:
            raise ValueError(f"Tokens.x must be (B, N, P), got shape {tuple(self.x.shape)}")
        if self.coords.ndim != 3 or self.coords.shape[:2] != self.x.shape[:2]:
            raise ValueError(
                f"Tokens.coords must be (B, N, C) with (B, N) = {tuple(self.x.shape[:2])}, "
                f"got {tuple(self.coords.shape)}"
            )
        if self.mask is not None and self.mask.shape != self.x.shape[:2]:
            raise ValueError(f"Tokens.mask must be (B, N) = {tuple(self.x.shape[:2])}, got {tuple(self.mask.shape)}")

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.x.shape[1]

    @property
    def coord_ndim(self) -> int:
        return self.coords.shape[-1]

    def with_x(self, x: torch.Tensor) -> Tokens:
        """The same positions, masks and meta with new token values (N must not change)."""
        return replace(self, x=x)

    def lengths(self) -> torch.Tensor:
        """(B,) number of real tokens per sample."""
        if self.mask is None:
            return torch.full((self.batch_size,), self.num_tokens, dtype=torch.long, device=self.x.device)
        return self.mask.sum(dim=1)


class ModalityAdapter(abc.ABC):
    """Turns one modality's batches into :class:`Tokens` and back.

    Subclasses set ``data_key`` (the batch key holding the signal), ``patch_dim`` and ``coord_ndim``.
    Factories for perceptual losses, discriminators, teachers and loaders are added by the training issues;
    the base class raises a clear error for any a modality does not provide.
    """

    data_key: str
    patch_dim: int
    coord_ndim: int

    @abc.abstractmethod
    def patchify(self, batch: dict[str, Any]) -> Tokens:
        """Raw signal batch -> Tokens (x is (B, N, patch_dim))."""

    @abc.abstractmethod
    def unpatchify(self, tokens: Tokens | torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
        """Token values (B, N, patch_dim) and the meta of :meth:`patchify` -> signal."""

    @abc.abstractmethod
    def dummy_batch(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """A random batch of the documented keys, for tests and benchmarks."""

    def target(self, batch: dict[str, Any]) -> torch.Tensor:
        """The reconstruction target for ``batch`` (the raw signal by default)."""
        return batch[self.data_key]

    def to_media(self, signal: torch.Tensor, path: str) -> str:
        """Write a signal for people to look at or listen to (PNG, WAV); returns the path written."""
        raise NotImplementedError(f"{type(self).__name__} cannot write media files")
