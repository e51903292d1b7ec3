"""Projection heads for self-distillation (the DINOv2 DINO/iBOT head).

Shape legend:
    *: any leading dims (batch, or batch x tokens), D: input dim, H: hidden dim, Bn: bottleneck dim,
    K: number of prototypes (output dim)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def l2_normalize_bottleneck(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim with eps 1e-6 for fp16 inputs (1e-12 is below fp16 resolution), else 1e-12."""
    eps = 1e-6 if x.dtype == torch.float16 else 1e-12
    return F.normalize(x, p=2, dim=-1, eps=eps)


def _build_mlp(in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int) -> nn.Sequential:
    """``nlayers`` Linear layers D -> H -> ... -> Bn with GELU between them and none after the last."""
    if nlayers < 1:
        raise ValueError(f"DINOHead needs nlayers >= 1, got {nlayers}")
    dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < nlayers - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINOv2 projection head: MLP -> L2-normalise -> weight-normalised prototype layer.

    ``(*, D) -> MLP -> (*, Bn) -> L2-normalise -> (*, Bn) -> Linear(Bn, K, bias=False) -> (*, K)``.

    The MLP has ``nlayers`` Linear layers (GELU between them, no activation after the bottleneck, no BatchNorm),
    weights trunc-normal(std 0.02), zero biases. The last layer is weight-normalised
    (``W = g * V / ||V||`` row-wise) with the gain ``g`` (K, 1) initialised to 1 and **trainable**, as in DINOv2
    (DINO v1 froze it). With ``g = 1`` every logit lies in [-1, 1].

    Parameter names of the last layer (see :attr:`GAIN_PARAM`, :attr:`DIRECTION_PARAM`):
    ``last_layer.parametrizations.weight.original0`` is the gain g (K, 1) and
    ``...original1`` the direction V (K, Bn). :meth:`last_layer_parameters` lists both, so a trainer can set
    their learning rate to 0 for the first epoch (DINOv2 ``freeze_last_layer_epochs``).

    Args:
        in_dim: input feature dim D (the backbone width).
        out_dim: number of prototypes K.
        hidden_dim: MLP hidden width H.
        bottleneck_dim: MLP output width Bn.
        nlayers: number of Linear layers in the MLP (1 means a single D -> Bn layer).
    """

    GAIN_PARAM = "last_layer.parametrizations.weight.original0"
    DIRECTION_PARAM = "last_layer.parametrizations.weight.original1"

    def __init__(
        self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3
    ):
        super().__init__()
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim
        self.mlp = _build_mlp(in_dim, hidden_dim, bottleneck_dim, nlayers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                # torch's default bounds (-2, 2) are absolute, i.e. ~100 std: effectively untruncated, as upstream.
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # Guess kept from upstream: the trunc-normal init above runs before the last layer exists, so the direction
        # V keeps torch's default Linear init (only its direction matters for the forward; g sets the scale).
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), name="weight", dim=0)
        with torch.no_grad():
            self.weight_g.fill_(1.0)

    @property
    def weight_g(self) -> nn.Parameter:
        """The weight-norm gain g, (K, 1), trainable."""
        return self.last_layer.parametrizations.weight.original0

    @property
    def weight_v(self) -> nn.Parameter:
        """The weight-norm direction V, (K, Bn)."""
        return self.last_layer.parametrizations.weight.original1

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the prototype layer, ``[g, V]`` (to freeze during the first epoch)."""
        return [self.weight_g, self.weight_v]

    def forward_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """(*, D) -> (*, Bn): the MLP output after L2 normalisation."""
        return l2_normalize_bottleneck(self.mlp(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(*, D) -> (*, K) prototype logits."""
        return self.last_layer(self.forward_bottleneck(x))
