"""Fréchet distance (FID) on feature statistics, and streaming statistics that do not depend on the batch size.

Shape legend:
    N: samples, D: feature dim (2048 for Inception pool_3)
"""

from __future__ import annotations

import numpy as np
import torch


class FeatureStats:
    """Running mean / covariance of features: float64 sums, mergeable across batches and ranks.

    Keeps ``n``, ``sum`` (D,) and ``outer`` (D, D) = sum of x x^T, so any split of the data into batches or ranks
    gives the same statistics (up to float64 rounding). Across ranks, all-reduce (SUM) the three fields.
    """

    def __init__(self, dim: int):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> FeatureStats:
        """Add an (N, D) batch of features."""
        if features.ndim != 2 or features.shape[1] != self.sum.shape[0]:
            raise ValueError(f"expected (N, {self.sum.shape[0]}) features, got {tuple(features.shape)}")
        x = features.detach().to("cpu", torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add the samples counted by ``other`` (e.g. another rank's statistics)."""
        if other.sum.shape != self.sum.shape:
            raise ValueError(f"cannot merge statistics of dims {self.sum.shape[0]} and {other.sum.shape[0]}")
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer
        return self

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        """(D,) mean and (D, D) unbiased covariance (``np.cov(x, rowvar=False)``), float64."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        sigma = (sigma + sigma.T) / 2
        return mu.numpy(), sigma.numpy()


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """tr(sqrt(S1 S2)) by ``scipy.linalg.sqrtm``, retried with ``eps`` on the diagonals when not finite."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(sigma1 sigma2) has an imaginary component of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigendecomposition (negative rounding eigenvalues set to 0)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(S1 S2)) = tr(sqrt(sqrt(S1) S2 sqrt(S1))): symmetric eigendecompositions only."""
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6, method: str = "sqrtm"
) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))`` between two Gaussians, in float64.

    ``method="sqrtm"`` follows ``pytorch_fid.fid_score.calculate_frechet_distance`` (scipy ``sqrtm``, ``eps``
    retry, error on a large imaginary part); ``method="eigh"`` is the symmetric-eigendecomposition route,
    exact for singular covariances too.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"expected (D,) means and (D, D) covariances, got {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    elif method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        raise ValueError(f"unknown method {method!r}: use 'sqrtm' or 'eigh'")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(real: FeatureStats, fake: FeatureStats, method: str = "sqrtm") -> float:
    """FID between the statistics of real and generated (or reconstructed) features."""
    return frechet_distance(*real.compute(), *fake.compute(), method=method)
