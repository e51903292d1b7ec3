"""Contrastive (CLIP softmax or SigLIP sigmoid) loss between a signal embedding and its caption embedding.

Thin, faithful wrappers over ``open_clip.loss.ClipLoss`` / ``SigLipLoss``: gather with gradient and local loss
by default (the combination whose DDP-averaged gradient equals the single-process full-batch gradient), rank and
world size taken from ``torch.distributed`` when a process group is up. ``clamp_logit_scale_`` is the step the
open_clip training loop applies after every optimiser step (not part of the pip package).

Shape legend:
    B: local batch, E: embedding width
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: upper bound of the raw logit scale (exp = 100), as in open_clip training
LOGIT_SCALE_MAX = math.log(100)


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ContrastiveLoss(nn.Module):
    """``{"clip_loss": ...}`` from L2-normalised features.

    Args:
        kind: 'clip' (softmax, ``ClipLoss``) or 'siglip' (sigmoid, ``SigLipLoss``).
        local_loss: compute only the local rows against the gathered batch (O(B·WB) memory); CLIP only.
        gather_with_grad: all-gather with gradient (exact gradient with local_loss); CLIP only.
        name: the key prefix of the returned term.
    """

    def __init__(self, kind: str = "clip", local_loss: bool = True, gather_with_grad: bool = True, name: str = "clip"):
        super().__init__()
        if kind not in ("clip", "siglip"):
            raise ValueError(f"contrastive kind must be 'clip' or 'siglip', got {kind!r}")
        self.kind, self.local_loss, self.gather_with_grad, self.name = kind, local_loss, gather_with_grad, name
        self._loss: nn.Module | None = None
        self._world: tuple[int, int] | None = None

    def _open_clip_loss(self) -> nn.Module:
        world = _dist_info()
        if self._loss is None or world != self._world:
            from open_clip.loss import ClipLoss, SigLipLoss

            rank, size = world
            if self.kind == "clip":
                self._loss = ClipLoss(
                    local_loss=self.local_loss,
                    gather_with_grad=self.gather_with_grad,
                    cache_labels=True,
                    rank=rank,
                    world_size=size,
                )
            else:
                self._loss = SigLipLoss(cache_labels=True, rank=rank, world_size=size)
            self._world = world
        return self._loss

    def forward(
        self,
        features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Args:
            features: (B, E) normalised signal embeddings.
            text_features: (B, E) normalised text embeddings (row i is the caption of signal i).
            logit_scale: the raw (log) temperature parameter; exponentiated here.
            logit_bias: additive logit bias (SigLIP), or None.

        Returns:
            {"<name>_loss": scalar, "<name>_logit_scale": exp(scale) (a report value)}
        """
        if features.shape != text_features.shape:
            raise ValueError(f"features {tuple(features.shape)} and text features {tuple(text_features.shape)} differ")
        if self.kind == "siglip" and logit_bias is None:
            raise ValueError("the SigLIP loss needs a logit_bias (set init_logit_bias, e.g. -10)")
        scale = logit_scale.exp().squeeze()
        loss_fn = self._open_clip_loss()
        f, t = features.float(), text_features.float()
        if self.kind == "clip":
            loss = loss_fn(f, t, scale, logit_bias=logit_bias)
        else:
            loss = loss_fn(f, t, scale, logit_bias.squeeze())
        return {f"{self.name}_loss": loss, f"{self.name}_logit_scale": scale.detach()}


@torch.no_grad()
def clamp_logit_scale_(logit_scale: torch.Tensor, max_value: float = LOGIT_SCALE_MAX) -> None:
    """Clamp the raw logit-scale parameter in place to [0, ln 100] (call after every optimiser step)."""
    logit_scale.clamp_(0, max_value)
