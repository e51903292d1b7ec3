"""Audio reconstruction terms of the speech recipe through ``auraloss``: multi-resolution STFT, multi-resolution
log-mel, waveform L1 and SI-SDR (a reported metric unless weighted).

Terms (each weighted inside, like the image ``ReconstructionLoss``, and skipped when its weight is 0):
    rec_stft_loss   ``auraloss.freq.MultiResolutionSTFTLoss``: spectral convergence + log-magnitude L1, averaged
                    over the resolutions (hop = FFT/4, window = FFT).
    rec_mel_loss    the same on mel magnitudes, one mel count per resolution (as DAC's mel loss; by default the
                    Semantic-VAE set: FFT 32 ... 2048 with 5 ... 320 mels, log-magnitude L1 only). Natural log and
                    auraloss' clamp of the power at 1e-8 before the mel projection, where DAC takes log10 of the
                    mel magnitude clamped at 1e-5: same shape of loss, not DAC's numbers.
    rec_l1_loss     mean |prediction - target| over the valid samples.
    rec_sisdr_loss  -SI-SDR (``auraloss.time.SISDRLoss``); ``rec_si_sdr`` (dB, detached) is reported either way.

Masks: with ``lengths``, prediction and target are zeroed beyond each clip's length first. L1 is then the exact
mean over valid samples and SI-SDR is computed per clip on its valid samples. The spectral terms are approximate:
frames overlapping the padding see zeros in both signals, so samples in the padding never change them, but the
frames inside the padding still count in auraloss' means (diluting the term by about the padding fraction) and
spectral convergence is one ratio of norms over the whole batch.

Mel filterbank: auraloss builds it with librosa (not a dependency here); the same Slaney filterbank (librosa's
default, bit-equal in float32) comes from :func:`~unitok.modalities.speech.losses.slaney_mel_filterbank` and is
installed on each auraloss ``STFTLoss`` (its ``fb`` buffer and ``scale``), which is how auraloss applies it.

Shape legend:
    B: batch, T: samples (padded); audio (B, 1, T), lengths (B,)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from unitok.modalities.speech.adapter import valid_lengths
from unitok.modalities.speech.losses import slaney_mel_filterbank


@dataclass
class AudioReconstructionConfig:
    """Attributes (GUESS: the weights of the VTP speech recipe are not published; mel-only as Semantic-VAE):
    sample_rate: Hz (mel filterbanks); the speech tasks set the model's.
    stft_weight: weight of the multi-resolution STFT term.
    stft_fft_sizes: its FFT sizes (Semantic-VAE logs an STFT loss at 2048 and 512).
    stft_w_sc, stft_w_log_mag: auraloss' spectral-convergence and log-magnitude weights of that term.
    mel_weight: weight of the multi-resolution mel term.
    mel_fft_sizes, mel_bins: its FFT sizes and mel counts, one per resolution.
    mel_w_sc, mel_w_log_mag: auraloss' weights inside the mel term.
    l1_weight: weight of the waveform L1 term.
    si_sdr_weight: weight of -SI-SDR as a loss (0: a metric only).
    report_si_sdr: report ``rec_si_sdr`` (dB).
    """

    sample_rate: int = 16000
    stft_weight: float = 0.0
    stft_fft_sizes: list[int] = field(default_factory=lambda: [2048, 512])
    stft_w_sc: float = 1.0
    stft_w_log_mag: float = 1.0
    mel_weight: float = 1.0
    mel_fft_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    mel_bins: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 80, 160, 320])
    mel_w_sc: float = 0.0
    mel_w_log_mag: float = 1.0
    l1_weight: float = 0.0
    si_sdr_weight: float = 0.0
    report_si_sdr: bool = True


def multi_resolution_stft_loss(
    fft_sizes: list[int], w_sc: float, w_log_mag: float, mel_bins: list[int] | None = None, sample_rate: int = 16000
) -> nn.Module:
    """``auraloss.freq.MultiResolutionSTFTLoss`` (hop = FFT/4, window = FFT), on mel magnitudes when ``mel_bins``."""
    from auraloss.freq import MultiResolutionSTFTLoss

    if not fft_sizes or any(n < 4 for n in fft_sizes):
        raise ValueError(f"STFT loss FFT sizes must be >= 4, got {fft_sizes}")
    bad_bins = mel_bins is not None and (
        len(mel_bins) != len(fft_sizes) or any(not 0 < m <= n for m, n in zip(mel_bins, fft_sizes, strict=True))
    )
    if bad_bins:
        raise ValueError(f"mel_bins {mel_bins} must give one count in [1, FFT size] per FFT size {fft_sizes}")
    loss = MultiResolutionSTFTLoss(
        fft_sizes=list(fft_sizes), hop_sizes=[n // 4 for n in fft_sizes], win_lengths=list(fft_sizes),
        w_sc=w_sc, w_log_mag=w_log_mag, w_lin_mag=0.0, w_phs=0.0,
    )  # fmt: skip
    for stft_loss, n_mels in zip(loss.stft_losses, mel_bins or [], strict=False):
        _install_mel_filterbank(stft_loss, n_mels, sample_rate)
    return loss


def _install_mel_filterbank(stft_loss: nn.Module, n_mels: int, sample_rate: int) -> None:
    """What ``auraloss.freq.STFTLoss(scale="mel")`` does, with :func:`slaney_mel_filterbank` (librosa's, bit-equal
    in float32) instead of librosa."""
    n_freqs = stft_loss.fft_size // 2 + 1
    fb = slaney_mel_filterbank(n_freqs, 0.0, sample_rate / 2, n_mels, sample_rate)
    stft_loss.register_buffer("fb", fb.T.unsqueeze(0).contiguous())  # (1, n_mels, F), as librosa's
    stft_loss.scale, stft_loss.n_bins, stft_loss.sample_rate = "mel", n_mels, sample_rate


class AudioReconstructionLoss(nn.Module):
    """``{"rec_stft_loss", "rec_mel_loss", "rec_l1_loss", "rec_sisdr_loss", "rec_si_sdr"}`` over (B, 1, T) audio.

    Only the weighted terms (and the SI-SDR report) are computed; see the module docstring for the masking.
    """

    def __init__(self, cfg: AudioReconstructionConfig | None = None):
        super().__init__()
        cfg = cfg or AudioReconstructionConfig()
        weights = (cfg.stft_weight, cfg.mel_weight, cfg.l1_weight, cfg.si_sdr_weight)
        if any(w < 0 for w in weights):
            raise ValueError(f"audio reconstruction weights must be >= 0, got {weights}")
        self.cfg = cfg
        self.stft = self.mel = None
        if cfg.stft_weight > 0:
            self.stft = multi_resolution_stft_loss(cfg.stft_fft_sizes, cfg.stft_w_sc, cfg.stft_w_log_mag)
        if cfg.mel_weight > 0:
            self.mel = multi_resolution_stft_loss(
                cfg.mel_fft_sizes, cfg.mel_w_sc, cfg.mel_w_log_mag, cfg.mel_bins, cfg.sample_rate
            )

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Named terms for (B, 1, T) prediction and target, clips valid up to ``lengths`` (all T when None)."""
        if prediction.shape != target.shape or prediction.ndim != 3 or prediction.shape[1] != 1:
            raise ValueError(
                f"audio reconstruction takes (B, 1, T) prediction and target of one shape, got "
                f"{tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        B, _, T = prediction.shape
        lengths = valid_lengths(lengths, B, T, device=prediction.device)
        mask = (torch.arange(T, device=prediction.device) < lengths[:, None]).unsqueeze(1)  # (B, 1, T)
        pred, tgt = prediction.float() * mask, target.float() * mask
        cfg, terms = self.cfg, {}
        if self.stft is not None:
            terms["rec_stft_loss"] = cfg.stft_weight * self.stft(pred, tgt)
        if self.mel is not None:
            terms["rec_mel_loss"] = cfg.mel_weight * self.mel(pred, tgt)
        if cfg.l1_weight > 0:
            terms["rec_l1_loss"] = cfg.l1_weight * (pred - tgt).abs().sum() / lengths.sum()
        if cfg.si_sdr_weight > 0 or cfg.report_si_sdr:
            with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.si_sdr_weight > 0):  # report only: no graph
                si_sdr = si_sdr_per_clip(pred, tgt, lengths).mean()
            if cfg.si_sdr_weight > 0:
                terms["rec_sisdr_loss"] = -cfg.si_sdr_weight * si_sdr
            if cfg.report_si_sdr:
                terms["rec_si_sdr"] = si_sdr.detach()
        return terms


def si_sdr_per_clip(prediction: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B,) SI-SDR in dB (``auraloss.time.SISDRLoss``, zero-mean) of each clip over its first ``lengths[b]`` samples."""
    from auraloss.time import SISDRLoss

    metric = SISDRLoss(reduction="none")
    if bool((lengths == prediction.shape[-1]).all()):
        return -metric(prediction, target).view(-1)
    clips = zip(prediction, target, lengths.tolist(), strict=True)
    return torch.cat([-metric(p[..., :n], t[..., :n]).view(-1) for p, t, n in clips])
