"""Pre-norm Transformer block with RoPE and key-padding masks, assembled from ``timm.layers``.

Parameter names follow timm (``norm1``, ``attn.qkv``, ``attn.q_norm``, ``attn.proj``, ``ls1.gamma``,
``mlp.fc1_g``/``fc1_x``/``fc2`` for SwiGLU, ``mlp.fc1``/``fc2`` for the GELU MLP), so the usual checkpoint
renames (DINOv3/VTP ``mlp.w1/w2/w3``) are the ones timm's own DINOv3 filter applies.

Shape legend:
    B: batch, T: sequence length (prefix + tokens), D: width, H: heads, hd: head dim
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Attention, DropPath, LayerNorm, LayerScale, Mlp, RmsNorm, SwiGLU
from torch import nn

from unitok.layers.rope import apply_rope

#: default epsilon per norm type (VTP: RMSNorm 1e-5 in the encoder, LayerNorm 1e-6 in the decoder)
NORM_EPS = {"rmsnorm": 1e-5, "layernorm": 1e-6}


def make_norm_layer(kind: str, eps: float | None = None) -> type[nn.Module]:
    """'rmsnorm' | 'layernorm' -> a norm constructor taking the width."""
    if kind not in NORM_EPS:
        raise ValueError(f"norm must be one of {sorted(NORM_EPS)}, got {kind!r}")
    eps = NORM_EPS[kind] if eps is None else eps
    return partial(RmsNorm if kind == "rmsnorm" else LayerNorm, eps=eps)


def ffn_hidden_dim(dim: int, mlp_ratio: float, ffn: str, align_to: int = 8) -> int:
    """Hidden width of the feed-forward layer.

    'mlp': ``int(dim * mlp_ratio)``. 'swiglu' (DINOv2/v3 and VTP rule): ``int(int(dim * mlp_ratio) * 2 / 3)``
    rounded up to a multiple of ``align_to`` (768 -> 2048, 1024 -> 2736, 64 -> 176).
    """
    hidden = int(dim * mlp_ratio)
    if ffn == "mlp":
        return hidden
    if ffn == "swiglu":
        d = int(hidden * 2 / 3)
        return d + (-d % align_to)
    raise ValueError(f"ffn must be 'swiglu' or 'mlp', got {ffn!r}")


class RopeAttention(Attention):
    """timm ``Attention`` (fused qkv, optional q/k norm before RoPE) plus axial RoPE and a key-padding mask."""

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_prefix_tokens: int = 0,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
        x: (B, T, D).
        rope: (sin, cos) tables for the T - num_prefix_tokens non-prefix tokens, or None.
        attn_mask: (B, 1, 1, T) bool, True where a key may be attended to, or None.
        """
        B, T, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = apply_rope(q, *rope, num_prefix_tokens=num_prefix_tokens)
            k = apply_rope(k, *rope, num_prefix_tokens=num_prefix_tokens)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        x = self.proj(x.transpose(1, 2).reshape(B, T, self.attn_dim))
        return self.proj_drop(x)


class Block(nn.Module):
    """``x + ls1(attn(norm1(x))) ; x + ls2(mlp(norm2(x)))`` with drop-path.

    Args:
        dim: width D.
        num_heads: attention heads.
        mlp_hidden: hidden width of the feed-forward layer (see :func:`ffn_hidden_dim`).
        ffn: 'swiglu' or 'mlp' (GELU).
        norm_layer: constructor from :func:`make_norm_layer`.
        qkv_bias, proj_bias, ffn_bias: biases of the projections.
        qk_norm: RmsNorm(hd, eps=1e-5) on queries and keys before RoPE.
        init_values: LayerScale init; None or 0 disables LayerScale.
        drop_path: stochastic depth rate.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        ffn: str = "swiglu",
        norm_layer: type[nn.Module] = LayerNorm,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.norm1 = norm_layer(dim)
        self.attn = RopeAttention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            proj_bias=proj_bias,
            norm_layer=partial(RmsNorm, eps=1e-5),
        )
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        if ffn == "swiglu":
            self.mlp = SwiGLU(dim, mlp_hidden, bias=ffn_bias)
        elif ffn == "mlp":
            self.mlp = Mlp(dim, mlp_hidden, act_layer=nn.GELU, bias=ffn_bias)
        else:
            raise ValueError(f"ffn must be 'swiglu' or 'mlp', got {ffn!r}")
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_prefix_tokens: int = 0,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), rope, num_prefix_tokens, attn_mask)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
