"""Audio GAN discriminator of DAC, as trained with Semantic-VAE: multi-period (MPD) + multi-band multi-resolution
STFT (MRD) sub-discriminators, optionally multi-scale (MSD), with the released checkpoint's state-dict layout.

Re-implements ``dac/model/discriminator.py: Discriminator`` (descript-audio-codec, as used by ZhikangNiu/Semantic-VAE):
same module tree and key names (``discriminators.{k}.convs.{i}.0.parametrizations.weight.original0/1``: weight norm by
``torch.nn.utils.parametrizations.weight_norm``, LeakyReLU(0.1) after every conv but ``conv_post``), same order
(MPD for each period, then MSD for each rate, then MRD for each FFT size) and the same input preprocessing: per
clip, the mean is removed and the peak is scaled to 0.8 (``0.8·y / (max|y| + 1e-9)``). ``forward`` returns one list
of feature maps per sub-discriminator, its last entry being the logits (DAC's convention, consumed by
:func:`unitok.losses.adversarial.discriminator_loss` and friends).

MRD spectrogram (audiotools ``AudioSignal.stft`` with ``match_stride=True``, reproduced with ``torch.stft``): periodic
Hann window of the FFT size (scipy's ``get_window("hann")``), hop H = L // 4, no normalisation; the clip is
reflect-padded by D = (L - H) // 2 left and D + (-T mod H) right, so there are ceil(T/H) frames and frame k covers
samples [k·H - D, k·H - D + L) (D = 3L/8 for the usual sizes). audiotools gets the same frames from a centred STFT
of that padded clip minus two frames at each end; the uncentred STFT here skips computing them. Real and imaginary
parts are the 2 input channels, laid out (time, frequency); each band is a slice of frequency bins
``[int(lo·F), int(hi·F))`` with F = L/2 + 1, run through its own conv stack; the band outputs are concatenated along
frequency for the shared ``conv_post``. Checked against the official module (descript-audiotools 0.7.2): identical
outputs for identical weights (``tests/modalities/speech/data/dac_discriminator_reference.pt``).

MSD (off in the released config, ``rates: []``) resamples to ``sample_rate // rate`` as audiotools does (julius'
``resample_frac``), reproduced with ``torchaudio.functional.resample`` (:func:`resample_like_julius`).

The channel widths are DAC's by default (fixed there); the ``*_channels`` options exist for small test / demo models.

Shape legend:
    B: batch, T: samples, P: period, h: rows of the period view (T padded to a multiple of P, then / P),
    L: FFT size (= window), H = L/4 hop, K = ceil(T/H) frames, F = L/2 + 1 bins, F_b: bins of band b, C: channels
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

#: DAC's MRD bands, as fractions of the F frequency bins
BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
#: peak amplitude the inputs are normalised to
PEAK = 0.8
_LEAKY_SLOPE = 0.1
_DAC_KWARGS = {"sample_rate", "rates", "periods", "fft_sizes", "bands", "use_msstft_replace_mrd"}


@dataclass
class SpeechDiscriminatorConfig:
    """Attributes (the first five are DAC ``Discriminator``'s arguments, same names):
    sample_rate: Hz of the input (used by MSD only).
    rates: MSD downsampling factors ([] = no MSD, the released config).
    periods: MPD periods.
    fft_sizes: MRD FFT sizes (window = FFT size, hop = FFT/4).
    bands: MRD frequency bands as [lo, hi] fractions of the spectrum.
    period_channels: MPD conv widths (DAC: 32, 128, 512, 1024, 1024; the first four convs have stride 3).
    band_channels: MRD conv width (DAC: 32).
    scale_channels: MSD conv widths (DAC: 16, 64, 256, 1024, 1024, 1024; grouped convs with in/4 groups).
    """

    sample_rate: int = 16000
    rates: list[int] = field(default_factory=list)
    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    fft_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512])
    bands: list[list[float]] = field(default_factory=lambda: [list(b) for b in BANDS])
    period_channels: list[int] = field(default_factory=lambda: [32, 128, 512, 1024, 1024])
    band_channels: int = 32
    scale_channels: list[int] = field(default_factory=lambda: [16, 64, 256, 1024, 1024, 1024])

    @classmethod
    def from_dac(cls, kwargs: Mapping[str, Any]) -> SpeechDiscriminatorConfig:
        """The config equal to DAC ``Discriminator(**kwargs)``, e.g. a released ``metainfo.json["Discriminator"]``."""
        kwargs = dict(kwargs)
        unknown = sorted(set(kwargs) - _DAC_KWARGS)
        if unknown:
            raise ValueError(f"unknown DAC Discriminator arguments {unknown}; expected some of {sorted(_DAC_KWARGS)}")
        if kwargs.pop("use_msstft_replace_mrd", False):
            raise NotImplementedError("use_msstft_replace_mrd=True (EnCodec-style STFT discriminator) is not supported")
        kwargs.setdefault("sample_rate", 44100)  # DAC's default
        return cls(**{k: list(v) if isinstance(v, Sequence) else v for k, v in kwargs.items()})


def _wn_conv(dims: int, c_in: int, c_out: int, kernel, stride=1, padding=0, groups: int = 1, act: bool = True):
    """Weight-normed Conv1d/2d, followed by LeakyReLU(0.1) in a Sequential (key ``.0.``) unless ``act`` is False."""
    conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
    conv = weight_norm(conv_cls(c_in, c_out, kernel, stride, padding=padding, groups=groups))
    return nn.Sequential(conv, nn.LeakyReLU(_LEAKY_SLOPE)) if act else conv


def _run(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every conv output, then the logits."""
    fmap = []
    for layer in convs:
        x = layer(x)
        fmap.append(x)
    fmap.append(conv_post(x))
    return fmap


def resample_like_julius(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """``julius.resample_frac(x, orig, new)`` (audiotools' resampler) through ``torchaudio.functional.resample``.

    Same Hann-windowed sinc (24 zero crossings, rolloff 0.945) and output length floor(T·new/orig); the clip is
    first padded by replicating its end samples, as julius does, by whole input periods beyond the kernel width,
    and the outputs of that padding are dropped. Agrees with julius to ~1e-5 (3e-4 for coprime rates).
    """
    import torchaudio

    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    width = math.ceil(24 * o / (min(o, n) * 0.945))  # torchaudio's kernel half-width, in input samples
    pad = o * math.ceil(width / o)
    y = torchaudio.functional.resample(
        F.pad(x, (pad, pad), mode="replicate"), o, n, lowpass_filter_width=24, rolloff=0.945
    )
    start = pad // o * n
    return y[..., start : start + n * x.shape[-1] // o]


class PeriodDiscriminator(nn.Module):
    """DAC ``MPD``: (B, 1, T) -> the clip viewed as (B, 1, h, P) through (5, 1) convs; logits (B, 1, h', P)."""

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024, 1024)):
        super().__init__()
        if period < 1 or len(channels) < 1:
            raise ValueError(f"MPD needs a period >= 1 and at least one conv width, got {period}, {list(channels)}")
        self.period = period
        c_in = (1, *channels[:-1])
        strides = [3] * (len(channels) - 1) + [1]
        self.convs = nn.ModuleList(
            _wn_conv(2, i, o, (5, 1), (s, 1), padding=(2, 0)) for i, o, s in zip(c_in, channels, strides, strict=True)
        )
        self.conv_post = _wn_conv(2, channels[-1], 1, (3, 1), padding=(1, 0), act=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        B, C, T = x.shape
        pad = self.period - T % self.period  # DAC pads a whole period when T is already a multiple
        if pad >= T:
            raise ValueError(f"MPD with period {self.period} needs more than {pad} samples, got {T}")
        x = F.pad(x, (0, pad), mode="reflect").view(B, C, -1, self.period)
        return _run(self.convs, self.conv_post, x)


class ScaleDiscriminator(nn.Module):
    """DAC ``MSD``: (B, 1, T) resampled to ``sample_rate // rate``, then 1-D grouped convs; logits (B, 1, T')."""

    def __init__(self, rate: int, sample_rate: int, channels: Sequence[int] = (16, 64, 256, 1024, 1024, 1024)) -> None:
        super().__init__()
        if len(channels) != 6 or any(c % 4 for c in channels[:4]):
            raise ValueError(f"MSD needs 6 conv widths, the first four multiples of 4, got {list(channels)}")
        if rate < 1:
            raise ValueError(f"MSD rate must be >= 1, got {rate}")
        self.rate, self.sample_rate = rate, sample_rate
        layers = [_wn_conv(1, 1, channels[0], 15, 1, padding=7)]
        for c_in, c_out in zip(channels[:4], channels[1:5], strict=True):
            layers.append(_wn_conv(1, c_in, c_out, 41, 4, padding=20, groups=c_in // 4))
        layers.append(_wn_conv(1, channels[4], channels[5], 5, 1, padding=2))
        self.convs = nn.ModuleList(layers)
        self.conv_post = _wn_conv(1, channels[5], 1, 3, 1, padding=1, act=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.rate != 1:
            x = resample_like_julius(x, self.sample_rate, self.sample_rate // self.rate)
        return _run(self.convs, self.conv_post, x)


class BandDiscriminator(nn.Module):
    """DAC ``MRD``: complex STFT (B, 2, K, F) split into frequency bands, one conv stack per band, shared post conv.

    Args:
        window_length: FFT size L (= window length); hop L/4.
        bands: [lo, hi] fractions of the F = L/2 + 1 bins.
        channels: conv width.
    """

    def __init__(self, window_length: int, bands: Sequence[Sequence[float]] = BANDS, channels: int = 32):
        super().__init__()
        if window_length < 4:
            raise ValueError(f"MRD FFT size must be >= 4, got {window_length}")
        self.window_length, self.hop_length = window_length, window_length // 4
        n_bins = window_length // 2 + 1
        self.bands = [(int(lo * n_bins), int(hi * n_bins)) for lo, hi in bands]
        if not self.bands or any(not 0 <= lo < hi <= n_bins for lo, hi in self.bands):
            raise ValueError(f"MRD bands {[list(b) for b in bands]} give empty or out-of-range bins {self.bands}")

        def stack() -> nn.ModuleList:
            strides = [(1, 1), (1, 2), (1, 2), (1, 2)]
            convs = [_wn_conv(2, 2 if i == 0 else channels, channels, (3, 9), s, (1, 4)) for i, s in enumerate(strides)]
            return nn.ModuleList([*convs, _wn_conv(2, channels, channels, (3, 3), (1, 1), (1, 1))])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.conv_post = _wn_conv(2, channels, 1, (3, 3), (1, 1), (1, 1), act=False)
        # scipy's periodic Hann, computed in float64 as scipy does; not part of the state dict
        window = torch.hann_window(window_length, periodic=True, dtype=torch.float64).float()
        self.register_buffer("window", window, persistent=False)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, 2, K, F) real/imaginary STFT, K = ceil(T / H) (see the module docstring)."""
        B, _, T = x.shape
        right, pad = -T % self.hop_length, (self.window_length - self.hop_length) // 2
        if pad + right >= T:
            raise ValueError(
                f"MRD with FFT size {self.window_length} needs more than {pad + right} samples here, got {T}"
            )
        x = F.pad(x.float(), (pad, pad + right), mode="reflect").reshape(B, -1)
        spec = torch.stft(x, self.window_length, self.hop_length, window=self.window, center=False, return_complex=True)
        return torch.view_as_real(spec).permute(0, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        spec = self.spectrogram(x)
        fmap, outs = [], []
        for (lo, hi), stack in zip(self.bands, self.band_convs, strict=True):
            band = spec[..., lo:hi]
            for layer in stack:
                band = layer(band)
                fmap.append(band)
            outs.append(band)
        fmap.append(self.conv_post(torch.cat(outs, dim=-1)))
        return fmap


class SpeechDiscriminator(nn.Module):
    """MPD + MSD + MRD over (B, 1, T) waveforms; ``forward`` -> one feature-map list per sub-discriminator.

    Build the released Semantic-VAE discriminator with
    ``SpeechDiscriminator(SpeechDiscriminatorConfig.from_dac(metainfo["Discriminator"]))``.
    """

    def __init__(self, cfg: SpeechDiscriminatorConfig | None = None):
        super().__init__()
        cfg = cfg or SpeechDiscriminatorConfig()
        discs: list[nn.Module] = [PeriodDiscriminator(p, cfg.period_channels) for p in cfg.periods]
        discs += [ScaleDiscriminator(r, cfg.sample_rate, cfg.scale_channels) for r in cfg.rates]
        discs += [BandDiscriminator(n, cfg.bands, cfg.band_channels) for n in cfg.fft_sizes]
        if not discs:
            raise ValueError("the speech discriminator needs at least one of periods, rates or fft_sizes")
        self.cfg = cfg
        self.discriminators = nn.ModuleList(discs)

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """Per clip: remove the mean, scale the peak to 0.8 (DAC ``Discriminator.preprocess``)."""
        x = x - x.mean(dim=-1, keepdim=True)
        return PEAK * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-9)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """(B, 1, T) waveforms -> ``[[feature maps..., logits] for each sub-discriminator]``.

        Real and fake clips may share one call (concatenated along the batch): every clip is processed on its own.
        """
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"the speech discriminator takes (B, 1, T) mono waveforms, got shape {tuple(x.shape)}")
        x = self.preprocess(x)
        return [d(x) for d in self.discriminators]
