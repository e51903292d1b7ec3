"""The Semantic-VAE building blocks before the decoder: DAC conv encoder, attention projection, SSL projector.

State-dict names follow the official code (``dac/model/dac.py``, ``attn_proj.py``, ``regulator.py``), so a
released checkpoint loads strictly.

Shape legend:
    B: batch, T: samples, L: frames at the current encoder stage, N: latent frames, D: encoder width
    (``latent_dim``), C: latent width (``vae_dim``), H: attention heads, S: SSL frames, E: SSL width
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unitok.modalities.speech.bigvgan import wn_conv1d


class Snake1d(nn.Module):
    """DAC's Snake: x + sin²(αx)/(α + 1e-9), α of shape (1, C, 1) on a linear scale (init 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L)."""
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake -> WN-Conv k7 (dilated) -> Snake -> WN-Conv k1, plus the input."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        pad = (7 - 1) * dilation // 2
        self.block = nn.Sequential(
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=pad),
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L)."""
        y = self.block(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        return x + y


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at ``dim // 2``, Snake, strided WN-Conv to ``dim`` channels."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            ResidualUnit(half, 1),
            ResidualUnit(half, 3),
            ResidualUnit(half, 9),
            Snake1d(half),
            wn_conv1d(half, dim, kernel_size=2 * stride, stride=stride, padding=(stride + 1) // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim/2, L) -> (B, dim, L / stride)."""
        return self.block(x)


class DACEncoder(nn.Module):
    """WN-Conv k7 -> encoder blocks doubling the width -> Snake -> WN-Conv k3 to ``out_dim``.

    Args:
        dim: width of the first conv.
        strides: one encoder block per stride.
        out_dim: output width D.
    """

    def __init__(self, dim: int, strides: list[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = [wn_conv1d(1, dim, kernel_size=7, padding=3)]
        for stride in strides:
            dim *= 2
            layers.append(EncoderBlock(dim, stride))
        layers += [Snake1d(dim), wn_conv1d(dim, out_dim, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, D, T / hop)."""
        return self.block(x)


class GeGluMlp(nn.Module):
    """LayerNorm -> GELU-tanh(w0 x) * w1 x -> w2 (the norm is applied even after the caller's own norm)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.w0 = nn.Linear(dim, hidden)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = self.norm(x)
        return self.w2(F.gelu(self.w0(x), approximate="tanh") * self.w1(x))


class CausalAttention(nn.Module):
    """Causal multi-head attention from ``in_dim`` to ``out_dim`` (learnable q/v biases, zero k bias buffer).

    Narrowing (in > out): heads of ``in_dim / H`` are averaged, adaptive-average-pooled to ``out_dim`` if needed,
    then projected. Widening (in <= out): heads of ``out_dim / H`` are concatenated, then projected.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        width = max(in_dim, out_dim)
        self.narrowing = in_dim > out_dim
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.out_dim = out_dim
        self.qkv = nn.Linear(in_dim, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, in_dim) -> (B, N, out_dim)."""
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.narrowing:
            x = x.mean(dim=1)
            if self.head_dim != self.out_dim:
                x = F.adaptive_avg_pool1d(x, self.out_dim)
        else:
            x = x.transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


class AttnProjection(nn.Module):
    """The bottleneck projection: ``y = proj(LN3(x)) + attn(LN1(x))``, then ``y + mlp(LN2(y))``."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int = 8, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = CausalAttention(in_dim, out_dim, num_heads)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm3 = nn.LayerNorm(in_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = GeGluMlp(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, C)."""
        x = self.proj(self.norm3(x)) + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def valid_frames(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True for frame indices below the length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class SSLProjector(nn.Module):
    """The official ``InterpolateRegulator``: SSL features -> latent space at the latent frame rate.

    Linear interpolation in time to N frames, then [Conv1d k3 -> GroupNorm(1) -> Mish] per entry of
    ``sampling_ratios`` and a Conv1d k1 (a single Conv1d k1 when there are none).

    Args:
        num_blocks: number of Conv-GroupNorm-Mish blocks (``len(sampling_ratios)``).
        in_dim: SSL width E.
        hidden: block width (``2 * vae_dim`` upstream).
        out_dim: latent width C.
    """

    def __init__(self, num_blocks: int, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_blocks):
            layers += [nn.Conv1d(in_dim if i == 0 else hidden, hidden, 3, 1, 1), nn.GroupNorm(1, hidden), nn.Mish()]
        layers.append(nn.Conv1d(hidden if num_blocks else in_dim, out_dim, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, ssl: torch.Tensor, lengths: torch.Tensor, size: int) -> torch.Tensor:
        """Project (B, S, E) features to (B, N=size, C), zeroing frames at indices >= ``lengths`` (B,)."""
        x = F.interpolate(ssl.transpose(1, 2).contiguous(), size=size, mode="linear")
        out = self.model(x).transpose(1, 2).contiguous()
        return out * valid_frames(lengths, size).unsqueeze(-1)
