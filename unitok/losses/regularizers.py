"""Latent regularisers: the KL divergence of a Gaussian posterior to N(0, I), masked over padded tokens.

Semantic-VAE's form: per token ``-½ Σ_L (1 + logvar - mean² - (exp(logvar) + 1e-6))`` (summed over the L latent
channels, not averaged: its weight 0.01 is relative to that sum), then the mean over the valid tokens of the batch.
The 1e-6 is the official code's (a constant offset of 5e-7·L, no gradient).

Shape legend:
    B: batch, N: tokens (frames / patches), L: latent channels
"""

from __future__ import annotations

import torch
from torch import nn


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar KL(N(mean, exp(logvar)) || N(0, I)): summed over channels, averaged over the valid tokens.

    Args:
        mean, logvar: (B, N, L) posterior parameters.
        mask: (B, N) bool, True for real tokens (None: all).
    """
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    mean, logvar = mean.float(), logvar.float()
    kl = -0.5 * torch.sum(1 + logvar - mean.square() - (logvar.exp() + 1e-6), dim=-1)  # (B, N)
    if mask is None:
        return kl.mean()
    if mask.shape != kl.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, N) = {tuple(kl.shape)}")
    weights = mask.to(kl.dtype)
    return (kl * weights).sum() / weights.sum().clamp_min(1)


class KLLoss(nn.Module):
    """``{"kl_loss": gaussian_kl(...)}`` (a term for :class:`~unitok.losses.compose.LossComposer`)."""

    def forward(
        self, mean: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return {"kl_loss": gaussian_kl(mean, logvar, mask)}
