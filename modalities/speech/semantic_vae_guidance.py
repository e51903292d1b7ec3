"""Where the Semantic-VAE alignment term gets its SSL guidance features: the batch, a frozen teacher, or log-mels.

Upstream, WavLM-large features are precomputed offline (``scripts/extract_ssl_feature.py``, one ``.npy`` (S, 1024)
at 50 Hz per file) and the loader crops them at the offset of the random audio crop (frame = offset · 50) and
zero-pads them to duration · 50 frames. Three sources here:

- ``batch``: precomputed features in the batch, ``ssl_features`` (B, S, E) and optional ``ssl_lens`` (B,) (the
  data set crops them with the audio, as upstream);
- ``teacher``: the frozen :class:`~.teachers.SSLTeacher` (a local transformers WavLM / HuBERT directory and its
  layer) computes them on the fly from the crop (upstream's WavLM saw the whole utterance, this one the crop);
- ``mel``: a log-mel stand-in teacher (E mel bands at 50 Hz): no weights to download, for CPU demos and tests
  only (it aligns the latents with an acoustic, not a semantic, representation).

A teacher is a module ``teacher(audio (B, T), audio_lens (B,)) -> (features (B, S, E), lengths (B,))``.

Shape legend:
    B: batch, T: samples, S: guidance frames, E: guidance width (``DAC.distill_hidden_dim``)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unitok.modalities.speech.teachers import SSLTeacherConfig

#: guidance sources
SOURCES = ("batch", "teacher", "mel")


@dataclass
class SSLGuidanceConfig:
    """Attributes:
    source: 'batch' (precomputed ``ssl_features`` / ``ssl_lens`` batch keys), 'teacher' (the frozen
        :class:`~.teachers.SSLTeacher`) or 'mel' (log-mel stand-in, demos and tests).
    teacher: the SSL teacher of source 'teacher': a local WavLM-large directory (``path``) and its ``layer``.
    frame_rate: guidance frames per second of the 'mel' source (WavLM: 50).
    """

    source: str = "batch"
    teacher: SSLTeacherConfig = field(default_factory=SSLTeacherConfig)
    frame_rate: int = 50

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"ssl.source must be one of {list(SOURCES)}, got {self.source!r}")


class MelGuidance(nn.Module):
    """Log-mel features as a stand-in SSL teacher: (B, T) audio -> (B, T // hop, E) at ``frame_rate``.

    Args:
        dim: mel bands E (the projector's input width).
        sample_rate: Hz of the audio.
        frame_rate: frames per second (hop = sample_rate / frame_rate).
    """

    def __init__(self, dim: int, sample_rate: int = 16000, frame_rate: int = 50):
        super().__init__()
        import torchaudio

        if sample_rate % frame_rate:
            raise ValueError(f"mel guidance needs a whole hop: {sample_rate} Hz is not a multiple of {frame_rate}")
        self.hop = sample_rate // frame_rate
        n_fft = 1 << (2 * self.hop - 1).bit_length()
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=self.hop, n_mels=dim)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = audio.shape[-1] // self.hop
        feats = self.mel(audio.float()).clamp(min=1e-5).log()[..., :frames]  # (B, E, S)
        return feats.transpose(1, 2).contiguous(), (lengths // self.hop).clamp(1, frames)


def build_guidance(cfg: SSLGuidanceConfig, dim: int, sample_rate: int) -> nn.Module | None:
    """The frozen module computing guidance features of width ``dim`` (None for source 'batch')."""
    if cfg.source == "batch":
        return None
    if cfg.source == "mel":
        return MelGuidance(dim, sample_rate, cfg.frame_rate)
    from unitok.modalities.speech.teachers import SSLTeacher

    teacher = SSLTeacher(cfg.teacher)  # stops here, saying where the weights go, when the path is missing
    if teacher.feature_dim != dim:
        raise ValueError(
            f"the SSL teacher at {cfg.teacher.path} gives {teacher.feature_dim}-d features but the model's projector "
            f"takes {dim} (DAC.distill_hidden_dim; WavLM-large: 1024)"
        )
    return teacher


def guidance_features(
    cfg: SSLGuidanceConfig, teacher: nn.Module | None, batch: dict[str, Any], audio: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(features (B, S, E), lengths (B,) or None) for a batch; ``audio`` is (B, T)."""
    if teacher is None:
        if "ssl_features" not in batch:
            raise KeyError(
                "the alignment term with ssl.source='batch' needs precomputed 'ssl_features' (B, S, E) (and "
                "'ssl_lens') in the batch; set task.params.ssl.source to 'teacher' or 'mel' to compute them"
            )
        return batch["ssl_features"], batch.get("ssl_lens")
    lengths = batch.get("audio_lens")
    if lengths is None:
        lengths = torch.full((audio.shape[0],), audio.shape[-1], dtype=torch.long, device=audio.device)
    with torch.no_grad():
        feats, feat_lens = teacher(audio, lengths)
    return feats.float(), feat_lens
