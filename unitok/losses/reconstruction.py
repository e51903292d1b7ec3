"""Pixel reconstruction loss: L1 + LPIPS on [0, 1] / [-1, 1] images.

Inputs are in the model's input space; ``denormalize`` maps them to [0, 1] first (for VTP: ImageNet mean/std).
GUESS (not published): both terms are computed on de-normalised, unclamped images; configurable weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class ReconstructionLoss(nn.Module):
    """``{"rec_l1_loss", "rec_lpips_loss"}`` terms (LPIPS only when a perceptual net is given and weighted).

    Args:
        denormalize: model space -> [0, 1] (identity when None).
        perceptual: an LPIPS module taking [-1, 1] images, or None.
        l1_weight, perceptual_weight: weights inside the reconstruction loss (the composer's λ_rec scales both).
    """

    def __init__(
        self,
        denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        perceptual: nn.Module | None = None,
        l1_weight: float = 1.0,
        perceptual_weight: float = 1.0,
    ):
        super().__init__()
        self.denormalize = denormalize
        self.perceptual = perceptual if perceptual_weight > 0 else None
        self.l1_weight, self.perceptual_weight = l1_weight, perceptual_weight

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if prediction.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
        pred, tgt = prediction.float(), target.float()
        if self.denormalize is not None:
            pred, tgt = self.denormalize(pred), self.denormalize(tgt)
        terms = {"rec_l1_loss": self.l1_weight * (pred - tgt).abs().mean()}
        if self.perceptual is not None:
            terms["rec_lpips_loss"] = self.perceptual_weight * self.perceptual(2 * pred - 1, 2 * tgt - 1)
        return terms
