"""PatchGAN discriminator (pix2pix ``NLayerDiscriminator`` layout, as used by taming-transformers VQGAN).

Layers: conv 4x4 stride 2 (no norm) + LeakyReLU(0.2); ``n_layers - 1`` more conv 4x4 stride 2 + norm + LeakyReLU
with widths ``channels · min(2^n, max_mult)``; one conv 4x4 stride 1 + norm + LeakyReLU; a conv 4x4 stride 1 to a
single logit per patch. pix2pix initialisation: conv weights N(0, 0.02), norm gains N(1, 0.02), biases 0.

Norm: 'group' by default (GUESS: taming and LDM use BatchNorm, whose batch statistics differ between DDP ranks and
between the real and fake halves; GroupNorm makes every sample's logits independent of the rest of the batch),
'batch' or 'none'. Convolutions followed by a norm have no bias (the norm's shift plays its role).

Shape legend:
    B: batch, C: input channels, H/W: pixels, h/w: patch-logit map (H / 2^n_layers - 2 for the default layout)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PatchDiscriminatorConfig:
    """Attributes:
    in_channels: input image channels.
    channels: width of the first conv (pix2pix ``ndf``).
    n_layers: stride-2 convolutions (3: a 70x70 receptive field, 30x30 logits at 256 px).
    max_mult: cap of the width multiplier.
    norm: 'group', 'batch' or 'none'.
    norm_groups: GroupNorm groups (must divide every normed width).
    """

    in_channels: int = 3
    channels: int = 64
    n_layers: int = 3
    max_mult: int = 8
    norm: str = "group"
    norm_groups: int = 32


def _norm(cfg: PatchDiscriminatorConfig, width: int) -> nn.Module:
    if cfg.norm == "batch":
        return nn.BatchNorm2d(width)
    if cfg.norm == "group":
        if width % cfg.norm_groups:
            raise ValueError(f"discriminator norm_groups={cfg.norm_groups} does not divide width {width}")
        return nn.GroupNorm(cfg.norm_groups, width)
    if cfg.norm == "none":
        return nn.Identity()
    raise ValueError(f"discriminator norm must be 'group', 'batch' or 'none', got {cfg.norm!r}")


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) images -> (B, 1, h, w) per-patch logits (real > 0)."""

    def __init__(self, cfg: PatchDiscriminatorConfig | None = None):
        super().__init__()
        cfg = cfg or PatchDiscriminatorConfig()
        if cfg.n_layers < 1:
            raise ValueError("discriminator n_layers must be >= 1")
        self.cfg = cfg
        bias = cfg.norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = cfg.channels
        for n in range(1, cfg.n_layers + 1):
            out = cfg.channels * min(2**n, cfg.max_mult)
            stride = 2 if n < cfg.n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=bias), _norm(cfg, out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        self.init_weights()

    def init_weights(self) -> None:
        """pix2pix: conv N(0, 0.02), norm gain N(1, 0.02), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
