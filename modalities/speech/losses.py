"""Speech reconstruction losses of DAC / Semantic-VAE: multi-scale mel L1, multi-scale STFT L1, waveform L1.

Numerically those of ``dac/nn/loss.py`` over audiotools' ``AudioSignal``: torch.stft with a periodic Hann
window (what ``scipy.signal.get_window("hann", n)`` gives), ``center=True`` with reflect padding, hop =
window / 4, magnitude spectra, and for the mel loss librosa's Slaney mel filterbank (fmin 0, fmax Nyquist).
The spectrograms come from ``torchaudio.transforms`` (``Spectrogram`` / ``MelSpectrogram`` with
``norm="slaney", mel_scale="slaney"``, which reproduce the audiotools + librosa spectra). Each scale adds
``log_weight · L1(log10(clamp(S, eps)^pow))`` and ``mag_weight · L1(S)``. auraloss is not used: its STFT loss
clamps the power at 1e-8 and takes natural logs, so it cannot reproduce these values.

:class:`SemanticVAELoss` combines them with the VAE terms using the ``conf/svae/example.yml`` lambdas
(generator total = 15·mel + 2·feature matching + 1·adversarial + 0.01·KL + 1·alignment; the STFT loss and the
waveform L1 are logged only).

Shape legend:
    B: batch, T: samples, F: frequency bins or mel bands, K: STFT frames, S: scales
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def at_model_rate(cfg: Any, sample_rate: int, name: str) -> Any:
    """A copy of a loss config (a dataclass with a ``sample_rate`` field) at the model's ``sample_rate``.

    Raises:
        ValueError: the config sets a rate other than its default and the model's.
    """
    default = next(f.default for f in dataclasses.fields(cfg) if f.name == "sample_rate")
    if cfg.sample_rate not in (default, sample_rate):
        raise ValueError(
            f"{name}.sample_rate is {cfg.sample_rate} Hz but the model runs at {sample_rate} Hz: leave it out, it "
            "follows the model"
        )
    return dataclasses.replace(cfg, sample_rate=sample_rate)


@dataclass
class MelLossConfig:
    """DAC's ``MelSpectrogramLoss`` as set in ``conf/svae/example.yml`` (7 scales, power 1, no magnitude term).

    ``sample_rate`` follows the model in the ``semantic_vae`` task (:func:`at_model_rate`).
    """

    sample_rate: int = 16000
    n_mels: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 80, 160, 320])
    window_lengths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    mel_fmin: list[float] = field(default_factory=lambda: [0.0] * 7)
    mel_fmax: list[float | None] = field(default_factory=lambda: [None] * 7)
    pow: float = 1.0
    clamp_eps: float = 1e-5
    mag_weight: float = 0.0
    log_weight: float = 1.0


@dataclass
class STFTLossConfig:
    """DAC's ``MultiScaleSTFTLoss`` (library defaults: power 2, magnitude term weight 1)."""

    window_lengths: list[int] = field(default_factory=lambda: [2048, 512])
    pow: float = 2.0
    clamp_eps: float = 1e-5
    mag_weight: float = 1.0
    log_weight: float = 1.0


class SpectralL1(nn.Module):
    """Sum over scales of ``log_weight·L1(log10(clamp(S)^pow)) + mag_weight·L1(S)`` between two signals.

    Args:
        transforms: one waveform -> magnitude-spectrogram module per scale.
        pow, clamp_eps, mag_weight, log_weight: as in DAC's losses.
    """

    def __init__(self, transforms: list[nn.Module], pow: float, clamp_eps: float, mag_weight: float, log_weight: float):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.pow, self.clamp_eps = pow, clamp_eps
        self.mag_weight, self.log_weight = mag_weight, log_weight

    def _log(self, s: torch.Tensor) -> torch.Tensor:
        return s.clamp(self.clamp_eps).pow(self.pow).log10()

    def per_scale(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(S,) loss of each scale for estimate ``x`` and reference ``y``, both (B, 1, T)."""
        if x.shape != y.shape:
            raise ValueError(f"estimate {tuple(x.shape)} and reference {tuple(y.shape)} must have the same shape")
        min_length = max(t.n_fft for t in self.transforms) // 2 + 1
        if x.shape[-1] < min_length:
            raise ValueError(
                f"audio of {x.shape[-1]} samples is too short for this spectral loss: reflect padding of the "
                f"largest window needs at least {min_length} samples"
            )
        losses = []
        for transform in self.transforms:
            sx, sy = transform(x), transform(y)  # (B, 1, F, K)
            loss = self.log_weight * F.l1_loss(self._log(sx), self._log(sy))
            if self.mag_weight:
                loss = loss + self.mag_weight * F.l1_loss(sx, sy)
            losses.append(loss)
        return torch.stack(losses)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The summed loss (scalar)."""
        return self.per_scale(x, y).sum()


def _hann(window_length: int, dtype: torch.dtype | None = None, **kwargs) -> torch.Tensor:
    """Periodic Hann window evaluated in float64, then rounded (scipy's window as audiotools casts it)."""
    window = torch.hann_window(window_length, periodic=True, dtype=torch.float64, **kwargs)
    return window.to(dtype or torch.get_default_dtype())


def slaney_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_freqs, n_mels) librosa ``filters.mel`` (Slaney scale and norm), bit-equal in float32.

    ``torchaudio.functional.melscale_fbanks`` computes in the default dtype. In float32 its weights differ from
    librosa's (computed in float64, then rounded) by up to 1.5e-5 relative at n_fft 2048; evaluated in float64
    and rounded they were bit-equal to a float64 transcription of librosa's algorithm at all 7 DAC scales, so
    it runs with float64 as the default dtype. (Like torchaudio, the top frequency bin is ``sample_rate // 2``.)
    """
    import torchaudio

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fb = torchaudio.functional.melscale_fbanks(
            n_freqs, f_min, f_max, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
        )
    finally:
        torch.set_default_dtype(previous)
    return fb.to(previous)


def mel_spectrogram(sample_rate: int, window_length: int, n_mels: int, fmin: float, fmax: float | None) -> nn.Module:
    """audiotools' ``AudioSignal.mel_spectrogram`` (magnitude, Slaney mel) as a torchaudio transform."""
    import torchaudio

    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=window_length, hop_length=window_length // 4, f_min=fmin, f_max=fmax,
        n_mels=n_mels, window_fn=_hann, power=1.0, center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney",
    )  # fmt: skip
    fb = transform.mel_scale.fb
    fmax = sample_rate / 2 if fmax is None else fmax
    fb.copy_(slaney_mel_filterbank(fb.shape[0], fmin, fmax, n_mels, sample_rate))
    return transform


def magnitude_spectrogram(window_length: int) -> nn.Module:
    """audiotools' ``AudioSignal.stft(...).abs()`` as a torchaudio transform."""
    import torchaudio

    return torchaudio.transforms.Spectrogram(
        n_fft=window_length, hop_length=window_length // 4, window_fn=_hann, power=1.0, center=True, pad_mode="reflect"
    )


class MelSpectrogramLoss(SpectralL1):
    """DAC's multi-scale mel loss (default: the Semantic-VAE setting)."""

    def __init__(self, cfg: MelLossConfig | None = None):
        cfg = cfg or MelLossConfig()
        scales = list(zip(cfg.window_lengths, cfg.n_mels, cfg.mel_fmin, cfg.mel_fmax, strict=True))
        transforms = [mel_spectrogram(cfg.sample_rate, w, m, lo, hi) for w, m, lo, hi in scales]
        super().__init__(transforms, cfg.pow, cfg.clamp_eps, cfg.mag_weight, cfg.log_weight)


class MultiScaleSTFTLoss(SpectralL1):
    """DAC's multi-scale STFT loss (logged, not trained on, by Semantic-VAE)."""

    def __init__(self, cfg: STFTLossConfig | None = None):
        cfg = cfg or STFTLossConfig()
        transforms = [magnitude_spectrogram(w) for w in cfg.window_lengths]
        super().__init__(transforms, cfg.pow, cfg.clamp_eps, cfg.mag_weight, cfg.log_weight)


@dataclass
class SemanticVAELossConfig:
    """The generator objective of ``conf/svae/example.yml`` (``lambdas``) and its reconstruction losses."""

    mel_weight: float = 15.0
    kl_weight: float = 0.01
    align_weight: float = 1.0
    adv_gen_weight: float = 1.0
    adv_feat_weight: float = 2.0
    mel: MelLossConfig = field(default_factory=MelLossConfig)
    stft: STFTLossConfig = field(default_factory=STFTLossConfig)


class SemanticVAELoss(nn.Module):
    """Generator losses of Semantic-VAE from a :class:`SemanticVAE` forward output and the target audio.

    Returns a dict with ``mel_loss``, ``stft_loss`` and ``waveform_l1`` (both logged only), ``kl_loss``,
    ``align_loss`` (when the output has it), ``adv_gen_loss`` / ``adv_feat_loss`` (when given), and ``loss``:
    the weighted sum of the weighted terms present.
    """

    def __init__(self, cfg: SemanticVAELossConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or SemanticVAELossConfig()
        self.mel = MelSpectrogramLoss(cfg.mel)
        self.stft = MultiScaleSTFTLoss(cfg.stft)
        self.weights: dict[str, float] = {"mel_loss": cfg.mel_weight, "kl_loss": cfg.kl_weight,
                                          "align_loss": cfg.align_weight, "adv_gen_loss": cfg.adv_gen_weight,
                                          "adv_feat_loss": cfg.adv_feat_weight}  # fmt: skip

    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        target: torch.Tensor,
        adversarial: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of ``outputs["audio"]`` (B, 1, T) against ``target`` (B, 1, T).

        Args:
            outputs: ``SemanticVAE.forward`` output (``audio``, ``kl_loss``, optional ``align_loss``).
            target: the input audio.
            adversarial: optional ``adv_gen_loss`` / ``adv_feat_loss`` from the discriminator side.
        """
        audio = outputs["audio"]
        terms = {
            "mel_loss": self.mel(audio, target),
            "stft_loss": self.stft(audio, target),
            "waveform_l1": F.l1_loss(audio, target),
            "kl_loss": outputs["kl_loss"],
        }
        if "align_loss" in outputs:
            terms["align_loss"] = outputs["align_loss"]
        terms.update(adversarial or {})
        terms["loss"] = weighted_sum(terms, self.weights)
        return terms


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ weight·term over the weighted terms present (the official ``sum(v * output[k] for k in lambdas)``)."""
    present = [weights[k] * v for k, v in terms.items() if k in weights]
    if not present:
        raise ValueError(f"no weighted loss term among {sorted(terms)} (weighted: {sorted(weights)})")
    return torch.stack(present).sum()
