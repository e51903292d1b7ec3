"""N-d axial rotary position embedding from coordinate tensors (the DINOv3 / VTP layout).

Each token carries a coordinate vector in [0, 1] per axis (see :class:`unitok.adapter.Tokens`). With
``n = head_dim / (2 * ndim)`` periods ``base ** (2i / 2n)``, the angles of one token are
``2π · (2c - 1) / period`` for every axis and period, laid out ``[axis0 periods..., axis1 periods..., ...]``
and tiled twice, and the rotation is "rotate-half": dim ``j`` pairs with ``j + head_dim/2``.

``dtype="bfloat16"`` reproduces the official VTP numerics op for op: periods, coordinates, angles and sin/cos
are computed in bfloat16 and q/k are rounded to bfloat16 for the rotation (prefix tokens included), then cast
back. ``dtype="float32"`` computes the same function in float32 (what timm's ``RotaryEmbeddingDinoV3`` gives).

Shape legend:
    B: batch, H: heads, N: tokens, P: prefix tokens, C: coordinate dims, hd: head dim
"""

from __future__ import annotations

import math

import torch
from torch import nn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_rope_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32'/'bfloat16' (or the torch dtype) -> torch dtype, with a clear error otherwise."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"RoPE dtype must be float32 or bfloat16, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"RoPE dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def grid_coords(sizes: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """Centre coordinates of a row-major grid, each axis normalised by its own length ("separate").

    Args:
        sizes: grid size per axis, e.g. (h, w) for images or (n,) for a sequence.

    Returns:
        (prod(sizes), len(sizes)) float32 tensor with values ``(k + 0.5) / size`` in (0, 1).
    """
    axes = [torch.arange(0.5, n, device=device, dtype=torch.float32) / n for n in sizes]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, len(sizes))


class AxialRoPE(nn.Module):
    """Sin/cos tables of N-d axial RoPE for arbitrary per-token coordinates.

    Args:
        head_dim: attention head size; must be divisible by ``2 * coord_ndim``.
        coord_ndim: number of coordinate axes (1 for audio, 2 for images).
        base: period base (VTP and DINOv3 use 100).
        dtype: "float32" (default) or "bfloat16" (the official VTP rounding).
    """

    def __init__(self, head_dim: int, coord_ndim: int, base: float = 100.0, dtype: str | torch.dtype = "float32"):
        super().__init__()
        if head_dim % (2 * coord_ndim) != 0:
            raise ValueError(f"head_dim {head_dim} must be divisible by 2 * coord_ndim = {2 * coord_ndim} for RoPE")
        self.head_dim = head_dim
        self.coord_ndim = coord_ndim
        self.base = float(base)
        self.dtype = resolve_rope_dtype(dtype)
        self.num_periods = head_dim // (2 * coord_ndim)
        # Not persistent: always derived from (base, head_dim, dtype); checkpoint converters write it when a
        # released layout stores it.
        self.register_buffer("periods", self.compute_periods(), persistent=False)

    def compute_periods(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(n,) periods ``base ** (2i / 2n)``, computed in the RoPE dtype in the official order of operations."""
        n = self.num_periods
        exponents = 2 * torch.arange(n, device=device, dtype=self.dtype) / (2 * n)
        return self.base**exponents

    def _apply(self, fn, *args, **kwargs):
        # Keep the periods in the RoPE dtype whatever .to()/.half() does to the module.
        module = super()._apply(fn, *args, **kwargs)
        if self.periods.dtype != self.dtype:
            self.periods = self.compute_periods(device=self.periods.device)
        return module

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates -> (sin, cos).

        Args:
            coords: (B, N, C) or (N, C) coordinates in [0, 1].

        Returns:
            sin, cos: (B, N, hd) (or (N, hd)) in the RoPE dtype. A batch whose coordinates are expanded from one
            row (stride 0 on B, as the adapters make them) is computed once and expanded.
        """
        if coords.shape[-1] != self.coord_ndim:
            raise ValueError(f"RoPE expects {self.coord_ndim}-d coordinates, got shape {tuple(coords.shape)}")
        if coords.ndim == 3 and coords.stride(0) == 0 and coords.shape[0] > 1:
            sin, cos = self.forward(coords[0])
            return sin.expand(coords.shape[0], -1, -1), cos.expand(coords.shape[0], -1, -1)
        c = coords.to(device=self.periods.device, dtype=self.dtype)
        c = 2.0 * c - 1.0
        angles = 2 * math.pi * c[..., None] / self.periods  # (..., N, C, n)
        angles = angles.flatten(-2).tile(2)  # (..., N, hd)
        return torch.sin(angles), torch.cos(angles)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, coord_ndim={self.coord_ndim}, base={self.base}, dtype={self.dtype}"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, num_prefix_tokens: int = 0) -> torch.Tensor:
    """Rotate the non-prefix tokens of ``x`` (rotate-half layout) in the dtype of the tables.

    Args:
        x: (B, H, P + N, hd) queries or keys.
        sin, cos: (B, N, hd) or (N, hd) tables from :class:`AxialRoPE`.
        num_prefix_tokens: P leading tokens (CLS, registers) that are not rotated.

    Returns:
        (B, H, P + N, hd) in the dtype of ``x``. The whole tensor passes through the table dtype, as in VTP.
    """
    in_dtype = x.dtype
    x = x.to(sin.dtype)
    if sin.ndim == 3:  # per-sample tables broadcast over heads
        sin, cos = sin.unsqueeze(1), cos.unsqueeze(1)
    if num_prefix_tokens:
        prefix, body = x[..., :num_prefix_tokens, :], x[..., num_prefix_tokens:, :]
        x = torch.cat([prefix, body * cos + _rotate_half(body) * sin], dim=-2)
    else:
        x = x * cos + _rotate_half(x) * sin
    return x.to(in_dtype)
