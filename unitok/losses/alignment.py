"""Alignment of latents to the features of a frozen teacher (REPA-style; Semantic-VAE's semantic alignment).

Loss: the frame-wise negative cosine similarity between the latents and the (projected) teacher features,
averaged over each sample's valid tokens, then over the batch (Semantic-VAE ``vae/proj_loss``).

Shape legend:
    B: batch, N: tokens, C: channels
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_negative_cosine(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar ``-cos(x, target)`` averaged over each sample's valid tokens, then over the batch.

    Args:
        x, target: (B, N, C).
        mask: (B, N) bool, True for tokens that count (None: all); a sample without one counts 0.
    """
    if x.shape != target.shape:
        raise ValueError(f"latents {tuple(x.shape)} and alignment targets {tuple(target.shape)} must match")
    neg_cos = -F.cosine_similarity(x.float(), target.float(), dim=-1)  # (B, N)
    if mask is None:
        return neg_cos.mean()
    if mask.shape != neg_cos.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, N) = {tuple(neg_cos.shape)}")
    weights = mask.to(neg_cos.dtype)
    return ((neg_cos * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)).mean()
