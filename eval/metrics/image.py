"""Pixel metrics of reconstructions.

Shape legend:
    B: images, C: channels, H/W: pixels
"""

from __future__ import annotations

import torch


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of [0, 1] images, on float values x 255 (not quantised), as the official VTP tool.

    ``20 log10(255 / sqrt(MSE))`` per image; identical images give +inf.
    """
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) batches of the same shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}"
        )
    mse = ((prediction.double() - target.double()) * 255).pow(2).flatten(1).mean(1)
    return (20 * torch.log10(255 / mse.sqrt())).float()
