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


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """(size, size) normalised Gaussian window, centred on the middle pixel."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    prediction: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """(B,) SSIM of [0, 1] images, the convention of the official VTP tool
    (``torchmetrics.StructuralSimilarityIndexMeasure(data_range=1.0)``).

    Gaussian window 11 x 11 with sigma 1.5, constants ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with L = ``data_range``;
    images are reflect-padded by half a window so the SSIM map is H x W, variances are clamped at 0, and each
    image's score is the mean of its map over channels and pixels. Computed in float64.
    """
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) batches of the same shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}"
        )
    pad = window // 2
    if min(prediction.shape[-2:]) <= pad:
        raise ValueError(f"images of {tuple(prediction.shape[-2:])} pixels are too small for a {window}-pixel window")
    b, c = prediction.shape[:2]
    x, y = prediction.double(), target.double()
    kernel = _gaussian_window(window, sigma, torch.float64).to(x.device).expand(c, 1, window, window)
    stack = torch.cat([x, y, x * x, y * y, x * y])  # (5B, C, H, W)
    stack = torch.nn.functional.pad(stack, (pad, pad, pad, pad), mode="reflect")
    mu_x, mu_y, e_xx, e_yy, e_xy = torch.nn.functional.conv2d(stack, kernel, groups=c).split(b)
    var_x = (e_xx - mu_x**2).clamp_min(0)
    var_y = (e_yy - mu_y**2).clamp_min(0)
    cov = e_xy - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).float()
