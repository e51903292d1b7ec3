"""BigVGAN-v2 generator (arXiv 2206.04658) as the Semantic-VAE decoder, with the official state-dict layout.

conv_pre (WN-Conv1d k7) -> per stage: WN-ConvTranspose1d upsampling, then the mean of the AMP residual blocks
(anti-aliased periodic activations) -> anti-aliased activation_post -> WN-Conv1d k7 to one channel -> tanh or
clamp to [-1, 1]. Anti-aliasing wraps each activation in 2x upsampling and 2x downsampling with 12-tap
kaiser-sinc low-pass filters (persistent buffers, replicate padding), as in BigVGAN's torch implementation.
Weight norm uses ``torch.nn.utils.parametrizations.weight_norm`` (dim 0): keys
``<layer>.parametrizations.weight.original0`` (g) and ``.original1`` (v).

Shape legend:
    B: batch, C: channels, L: frames / samples at the current stage, K: filter taps
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from unitok.modalities.speech.semantic_vae_config import BigVGANConfig


def wn_conv1d(*args, **kwargs) -> nn.Conv1d:
    """A weight-normed ``nn.Conv1d`` (parametrization form, dim 0)."""
    return weight_norm(nn.Conv1d(*args, **kwargs))


def wn_conv_transpose1d(*args, **kwargs) -> nn.ConvTranspose1d:
    """A weight-normed ``nn.ConvTranspose1d`` (g has one entry per *input* channel)."""
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


def kaiser_sinc_filter1d(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """A kaiser-windowed sinc low-pass filter normalised to unit sum.

    Args:
        cutoff: cutoff frequency as a fraction of the sample rate (0 < cutoff <= 0.5).
        half_width: transition half-width, same unit.
        kernel_size: number of taps K.

    Returns:
        (1, 1, K) filter.
    """
    even = kernel_size % 2 == 0
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    time = (torch.arange(-half, half) + 0.5) if even else (torch.arange(kernel_size) - half)
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (taps / taps.sum()).view(1, 1, kernel_size)


class UpSample1d(nn.Module):
    """Anti-aliased upsampling by ``ratio``: replicate pad, zero-stuffing transposed conv with the low-pass."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter1d(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, ratio·L)."""
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=self.ratio, groups=channels)
        return x[..., self.crop_left : -self.crop_right]


class LowPassFilter1d(nn.Module):
    """Replicate-padded depthwise low-pass filtering with an optional stride."""

    def __init__(self, cutoff: float = 0.5, half_width: float = 0.6, stride: int = 1, kernel_size: int = 12):
        super().__init__()
        if not 0.0 <= cutoff <= 0.5:
            raise ValueError(f"low-pass cutoff must lie in [0, 0.5], got {cutoff}")
        even = kernel_size % 2 == 0
        self.pad_left = kernel_size // 2 - int(even)
        self.pad_right = kernel_size // 2
        self.stride = stride
        self.register_buffer("filter", kaiser_sinc_filter1d(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, ceil(L / stride))."""
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels)


class DownSample1d(nn.Module):
    """Anti-aliased downsampling by ``ratio`` (key layout ``downsample.lowpass.filter``)."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, stride=ratio, kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, ratio·L) -> (B, C, L)."""
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin²(αx)/(β + 1e-9) per channel; α, β of shape (C,), log-scale (stored 0 = 1) when ``logscale``.

    With ``separate_beta=False`` this is BigVGAN's Snake (β = α, no ``beta`` parameter).
    """

    def __init__(self, channels: int, logscale: bool = True, separate_beta: bool = True):
        super().__init__()
        self.logscale = logscale
        init = torch.zeros(channels) if logscale else torch.ones(channels)
        self.alpha = nn.Parameter(init.clone())
        self.beta = nn.Parameter(init.clone()) if separate_beta else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L)."""
        alpha = self.alpha[None, :, None]
        beta = alpha if self.beta is None else self.beta[None, :, None]
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return x + (beta + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class Activation1d(nn.Module):
    """An activation evaluated at twice the rate: 2x upsample -> act -> 2x downsample."""

    def __init__(self, act: nn.Module, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.act = act
        self.upsample = UpSample1d(ratio, kernel_size)
        self.downsample = DownSample1d(ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L)."""
        return self.downsample(self.act(self.upsample(x)))


def _activation(cfg: BigVGANConfig, channels: int) -> Activation1d:
    return Activation1d(SnakeBeta(channels, cfg.snake_logscale, separate_beta=cfg.activation == "snakebeta"))


def _same_conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    return wn_conv1d(
        channels, channels, kernel_size, dilation=dilation, padding=(kernel_size * dilation - dilation) // 2
    )


class AMPBlock(nn.Module):
    """Anti-aliased multi-periodicity residual block.

    Type "1": per dilation d, ``x += conv2(act(conv1_d(act(x))))``; type "2": ``x += conv_d(act(x))``.
    """

    def __init__(self, cfg: BigVGANConfig, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.two_convs = cfg.resblock == "1"
        convs = nn.ModuleList(_same_conv(channels, kernel_size, d) for d in dilations)
        if self.two_convs:
            self.convs1 = convs
            self.convs2 = nn.ModuleList(_same_conv(channels, kernel_size, 1) for _ in dilations)
        else:
            self.convs = convs
        n_acts = len(dilations) * (2 if self.two_convs else 1)
        self.activations = nn.ModuleList(_activation(cfg, channels) for _ in range(n_acts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, L)."""
        if not self.two_convs:
            for conv, act in zip(self.convs, self.activations, strict=True):
                x = conv(act(x)) + x
            return x
        acts1, acts2 = self.activations[::2], self.activations[1::2]
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, acts1, acts2, strict=True):
            x = c2(a2(c1(a1(x)))) + x
        return x


class BigVGAN(nn.Module):
    """The BigVGAN-v2 generator: (B, num_mels, L) -> (B, 1, L·prod(upsample_rates)).

    Args:
        cfg: the ``Decoder`` block.
    """

    def __init__(self, cfg: BigVGANConfig):
        super().__init__()
        self.config = cfg
        ch0 = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.conv_pre = wn_conv1d(cfg.num_mels, ch0, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ModuleList([wn_conv_transpose1d(ch0 // 2**i, ch0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)])
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))
        )
        self.resblocks = nn.ModuleList(
            AMPBlock(cfg, ch0 // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        ch = ch0 // 2 ** len(self.ups)
        self.activation_post = _activation(cfg, ch)
        self.conv_post = wn_conv1d(ch, 1, 7, 1, padding=3, bias=cfg.use_bias_at_final)

    def stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Upsampling stage ``i``: transposed conv, then the mean of its AMP blocks."""
        for up in self.ups[i]:
            x = up(x)
        blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
        xs = blocks[0](x)
        for block in blocks[1:]:
            xs = xs + block(x)
        return xs / self.num_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_mels, L) -> (B, 1, L·hop) in [-1, 1]."""
        x = self.conv_pre(x)
        for i in range(len(self.ups)):
            x = self.stage(i, x)
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.config.use_tanh_at_final else x.clamp(-1.0, 1.0)
