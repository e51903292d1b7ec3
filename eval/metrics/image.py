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


def _gaussian_band(size: int, window: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(size - window + 1, size) matrix whose rows are the normalised 1-D Gaussian shifted by one pixel each:
    ``band @ x`` is a valid 1-D Gaussian filter along x's rows (the 2-D window is the outer product)."""
    t = torch.arange(window, dtype=like.dtype, device=like.device) - (window - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    rows = size - window + 1
    cols = torch.arange(rows, device=like.device)[:, None] + torch.arange(window, device=like.device)
    return torch.zeros(rows, size, dtype=like.dtype, device=like.device).scatter_(1, cols, g.expand(rows, window))


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
    b = prediction.shape[0]
    x, y = prediction.double(), target.double()
    stack = torch.cat([x, y, x * x, y * y, x * y])  # (5B, C, H, W)
    stack = torch.nn.functional.pad(stack, (pad, pad, pad, pad), mode="reflect")
    # the separable Gaussian as two banded matrix products (float64 GEMM: several times faster than a float64
    # depthwise convolution on CPU, the same weights and sums up to rounding)
    rows = _gaussian_band(stack.shape[-2], window, sigma, stack)
    cols = _gaussian_band(stack.shape[-1], window, sigma, stack)
    mu_x, mu_y, e_xx, e_yy, e_xy = (rows @ stack @ cols.T).split(b)
    var_x = (e_xx - mu_x**2).clamp_min(0)
    var_y = (e_yy - mu_y**2).clamp_min(0)
    cov = e_xy - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).float()
