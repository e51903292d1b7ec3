"""A Transformer token stack: prefix tokens, mask token, RoPE blocks, final norm, intermediates.

The stack sees embedded tokens, their coordinates and padding masks only: it is the shared trunk of every
modality. Sequence layout: ``[CLS?, registers..., tokens...]`` (the DINOv2/v3 order).

Shape legend:
    B: batch, N: tokens, P: prefix tokens (CLS + registers), T = P + N, D: width, C: coordinate dims
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from unitok.layers.blocks import Block, ffn_hidden_dim, make_norm_layer
from unitok.layers.rope import AxialRoPE


@dataclass
class TransformerConfig:
    """One token stack.

    Attributes:
        dim: width D.
        depth: number of blocks.
        num_heads: attention heads; ``dim / num_heads`` must be divisible by ``2 * coord_ndim`` for RoPE.
        mlp_ratio: feed-forward expansion before the SwiGLU 2/3 rule.
        ffn: 'swiglu' or 'mlp' (GELU).
        swiglu_align: SwiGLU hidden width rounded up to this multiple.
        norm: 'rmsnorm' or 'layernorm' (blocks and final norm).
        norm_eps: None picks the VTP default (RMSNorm 1e-5, LayerNorm 1e-6).
        qkv_bias, proj_bias, ffn_bias: projection biases.
        qk_norm: RmsNorm on queries and keys per head.
        init_values: LayerScale init, None disables it.
        drop_path_rate: stochastic depth, linearly increasing over depth.
        class_token: prepend a learned CLS token.
        num_registers: learned register (storage) tokens after CLS.
        mask_token: learn a token that replaces masked inputs (iBOT masking).
        coord_ndim: coordinate axes (2 for images, 1 for audio).
        rope_base: RoPE period base.
        rope_dtype: 'float32' or 'bfloat16' (the official VTP rounding).
        grad_checkpointing: recompute blocks in the backward pass.
    """

    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    ffn: str = "swiglu"
    swiglu_align: int = 8
    norm: str = "rmsnorm"
    norm_eps: float | None = None
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None
    drop_path_rate: float = 0.0
    class_token: bool = True
    num_registers: int = 0
    mask_token: bool = True
    coord_ndim: int = 2
    rope_base: float = 100.0
    rope_dtype: str = "float32"
    grad_checkpointing: bool = False

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.num_registers

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass
class StackOutput:
    """Outputs of :meth:`TransformerStack.forward`.

    Attributes:
        prefix: (B, P, D) final-normed prefix tokens (CLS first).
        tokens: (B, N, D) final-normed tokens.
        prenorm: (B, T, D) the sequence before the final norm.
    """

    prefix: torch.Tensor
    tokens: torch.Tensor
    prenorm: torch.Tensor

    @property
    def cls(self) -> torch.Tensor:
        """(B, D) the CLS token (the first prefix token)."""
        if self.prefix.shape[1] == 0:
            raise ValueError("this stack has no CLS token")
        return self.prefix[:, 0]


class TransformerStack(nn.Module):
    """Prefix tokens + RoPE Transformer blocks + final norm over embedded tokens."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.num_prefix_tokens = cfg.num_prefix_tokens
        if cfg.dim % cfg.num_heads:
            raise ValueError(f"dim {cfg.dim} is not divisible by num_heads {cfg.num_heads}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.dim)) if cfg.num_registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.dim)) if cfg.mask_token else None
        self.rope = AxialRoPE(cfg.head_dim, cfg.coord_ndim, base=cfg.rope_base, dtype=cfg.rope_dtype)
        norm_layer = make_norm_layer(cfg.norm, cfg.norm_eps)
        hidden = ffn_hidden_dim(cfg.dim, cfg.mlp_ratio, cfg.ffn, cfg.swiglu_align)
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear over depth
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.num_heads,
                hidden,
                ffn=cfg.ffn,
                norm_layer=norm_layer,
                qkv_bias=cfg.qkv_bias,
                proj_bias=cfg.proj_bias,
                ffn_bias=cfg.ffn_bias,
                qk_norm=cfg.qk_norm,
                init_values=cfg.init_values,
                drop_path=dpr[i],
            )
            for i in range(cfg.depth)
        )
        self.norm = norm_layer(cfg.dim)
        self.init_weights()

    def init_weights(self) -> None:
        """DINOv3 init: Linear trunc_normal(0.02) and zero bias, norms reset, prefix N(0, 0.02), mask token 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        for p in (self.cls_token, self.reg_token):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        if self.mask_token is not None:
            nn.init.zeros_(self.mask_token)

    # ------------------------------------------------------------------------------------------ sequence
    def prepare(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) embedded tokens -> (B, T, D) with prefix tokens, masked tokens replaced by the mask token."""
        B = x.shape[0]
        prefix = []
        if self.cls_token is not None:
            cls = self.cls_token
            if self.mask_token is not None and token_mask is None:
                cls = cls + 0 * self.mask_token  # keeps the mask token in the graph (DDP), numerically a no-op
            prefix.append(cls.expand(B, -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if token_mask is not None:
            if self.mask_token is None:
                raise ValueError("token_mask given but this stack has no mask token (mask_token=False)")
            x = torch.where(token_mask.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        return torch.cat([*prefix, x], dim=1) if prefix else x

    def _attn_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, N) valid-token mask -> (B, 1, 1, T) key mask (prefix always visible), None when nothing is padded."""
        if mask is None or bool(mask.all()):
            return None
        keep = torch.cat([mask.new_ones(mask.shape[0], self.num_prefix_tokens), mask], dim=1)
        return keep[:, None, None, :]

    def _run_block(self, blk: Block, x, rope, attn_mask):
        if self.cfg.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, rope, self.num_prefix_tokens, attn_mask, use_reentrant=False)
        return blk(x, rope, self.num_prefix_tokens, attn_mask)

    def _check(self, x: torch.Tensor, coords: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"expected embedded tokens (B, N, {self.cfg.dim}), got {tuple(x.shape)}")
        if coords.shape[-2] != x.shape[1]:
            raise ValueError(f"{x.shape[1]} tokens but coordinates for {coords.shape[-2]}")

    def split(self, seq: torch.Tensor, norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> (prefix (B, P, D), tokens (B, N, D)), through the final norm when ``norm``."""
        if norm:
            seq = self.norm(seq)
        return seq[:, : self.num_prefix_tokens], seq[:, self.num_prefix_tokens :]

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        coords: torch.Tensor,
        mask: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> StackOutput:
        """Args:
        x: (B, N, D) embedded tokens.
        coords: (B, N, C) or (N, C) coordinates in [0, 1].
        mask: (B, N) bool, True for real tokens (padding is never attended to).
        token_mask: (B, N) bool, True where the input is replaced by the mask token.
        """
        self._check(x, coords)
        seq = self.prepare(x, token_mask)
        rope = self.rope(coords)
        attn_mask = self._attn_mask(mask)
        for blk in self.blocks:
            seq = self._run_block(blk, seq, rope, attn_mask)
        prefix, tokens = self.split(seq)
        return StackOutput(prefix=prefix, tokens=tokens, prenorm=seq)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        coords: torch.Tensor,
        mask: torch.Tensor | None = None,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = True,
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Outputs of selected blocks.

        Args:
            indices: an int n takes the last n blocks; a sequence takes those block indices (negative ones count
                from the end); None takes all.
            norm: pass every intermediate through the final norm.
            stop_early: stop after the last requested block (then no final output is returned).

        Returns:
            (intermediates, final): a list of (B, T, D) sequences in block order, and the final-normed (B, T, D)
            sequence or None when stopped early.
        """
        self._check(x, coords)
        take = self._resolve_indices(indices)
        seq = self.prepare(x)
        rope = self.rope(coords)
        attn_mask = self._attn_mask(mask)
        last = max(take) if (stop_early and take) else len(self.blocks) - 1
        out = []
        for i, blk in enumerate(self.blocks[: last + 1]):
            seq = self._run_block(blk, seq, rope, attn_mask)
            if i in take:
                out.append(self.norm(seq) if norm else seq)
        final = self.norm(seq) if last == len(self.blocks) - 1 else None
        return out, final

    def _resolve_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        depth = len(self.blocks)
        if indices is None:
            return list(range(depth))
        if isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ValueError(f"asked for the last {indices} blocks of a {depth}-block stack")
            return list(range(depth - indices, depth))
        resolved = []
        for i in indices:
            j = i + depth if i < 0 else i
            if not 0 <= j < depth:
                raise ValueError(f"block index {i} is out of range for a {depth}-block stack")
            resolved.append(j)
        return sorted(set(resolved))
