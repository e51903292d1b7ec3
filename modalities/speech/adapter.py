"""Speech adapter: mono waveforms of any lengths <-> Tokens of fixed-size frames with 1-D coordinates.

A clip of T samples becomes ceil(T / frame_size) non-overlapping frames (the last one zero-padded); a batch
is padded to its longest clip and ``Tokens.mask`` marks the real frames. Coordinates are time-based, so a
frame keeps its position whatever the clip length: ``(k + 0.5) / reference_frames``.

Shape legend:
    B: batch, T: samples (longest clip), F: frame_size, N = ceil(T / F) frames
"""

from __future__ import annotations

import math
from typing import Any

import torch

from unitok.adapter import ModalityAdapter, Tokens


def valid_lengths(
    lengths: torch.Tensor | None, batch_size: int, num_samples: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(B,) long clip lengths in [1, T] (all T when None), or a ValueError naming the problem."""
    if lengths is None:
        return torch.full((batch_size,), num_samples, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device).long()
    if lengths.shape != (batch_size,):
        raise ValueError(f"audio_lens must have shape ({batch_size},), got {tuple(lengths.shape)}")
    if bool((lengths <= 0).any()) or bool((lengths > num_samples).any()):
        raise ValueError(f"audio_lens must be in [1, {num_samples}] (the padded length), got {lengths.tolist()}")
    return lengths


class SpeechAdapter(ModalityAdapter):
    """Frames of ``frame_size`` samples over 16 kHz mono audio.

    Args:
        frame_size: samples per token F (320 at 16 kHz = 50 tokens per second).
        sample_rate: expected sample rate (recorded in meta; resampling belongs to the data pipeline).
        reference_frames: the frame count that spans coordinate 1.0. GUESS: 250 frames (5 s at 50 Hz, a
            typical training crop), so crops and full utterances share one time scale; a config field.
    """

    data_key = "audio"
    coord_ndim = 1

    def __init__(self, frame_size: int = 320, sample_rate: int = 16000, reference_frames: int = 250):
        if frame_size <= 0 or reference_frames <= 0:
            raise ValueError("frame_size and reference_frames must be positive")
        self.frame_size = frame_size
        self.patch_dim = frame_size
        self.sample_rate = sample_rate
        self.reference_frames = reference_frames

    @property
    def frame_rate(self) -> float:
        """Tokens per second."""
        return self.sample_rate / self.frame_size

    def _waveforms(self, audio: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(audio):
            raise TypeError(f"audio must be a tensor, got {type(audio).__name__}")
        if audio.ndim == 3 and audio.shape[1] == 1:
            audio = audio[:, 0]
        if audio.ndim != 2:
            raise ValueError(
                f"audio must be a batch of mono waveforms (B, T) or (B, 1, T), got shape {tuple(audio.shape)}"
                + (" (multi-channel audio: mix down to mono first)" if audio.ndim == 3 else "")
                + (" (a single clip: add a batch dimension with audio[None])" if audio.ndim == 1 else "")
            )
        if not audio.is_floating_point():
            raise ValueError(f"audio must be floating point samples in [-1, 1], got {audio.dtype}")
        return audio

    def _lengths(self, lengths: torch.Tensor | None, audio: torch.Tensor) -> torch.Tensor:
        return valid_lengths(lengths, *audio.shape, device=audio.device)

    def coords(self, num_frames: int, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, N, 1) frame-centre coordinates in units of ``reference_frames``, expanded over the batch."""
        k = torch.arange(num_frames, device=device, dtype=torch.float32)
        return ((k + 0.5) / self.reference_frames).view(1, num_frames, 1).expand(batch_size, -1, -1)

    def patchify(self, batch: dict[str, Any] | torch.Tensor) -> Tokens:
        """{'audio': (B, T) or (B, 1, T), 'audio_lens': (B,) optional} -> Tokens of (B, N, F) frames."""
        if isinstance(batch, dict):
            audio, lengths = batch[self.data_key], batch.get("audio_lens")
        else:
            audio, lengths = batch, None
        audio = self._waveforms(audio)
        lengths = self._lengths(lengths, audio)
        B, T = audio.shape
        F = self.frame_size
        N = math.ceil(T / F)
        padded = torch.nn.functional.pad(audio, (0, N * F - T))
        valid = torch.arange(N * F, device=audio.device)[None] < lengths[:, None]
        x = (padded * valid).view(B, N, F)  # samples past a clip's end are zeroed, not leaked from padding
        frames = (lengths + F - 1) // F
        mask = torch.arange(N, device=audio.device)[None] < frames[:, None]
        return Tokens(
            x=x, coords=self.coords(N, B, audio.device), mask=mask, meta={"lengths": lengths, "num_samples": T}
        )

    def unpatchify(self, tokens: Tokens | torch.Tensor, meta: dict[str, Any] | None = None) -> torch.Tensor:
        """(B, N, F) frames -> (B, T) waveforms, zero past each clip's length."""
        x = tokens.x if isinstance(tokens, Tokens) else tokens
        meta = meta if meta is not None else tokens.meta
        if x.ndim != 3 or x.shape[-1] != self.frame_size:
            raise ValueError(f"expected frames (B, N, {self.frame_size}), got {tuple(x.shape)}")
        B, N, F = x.shape
        T = meta.get("num_samples", N * F)
        if T > N * F:
            raise ValueError(f"{N} frames of {F} cannot hold {T} samples")
        wave = x.reshape(B, N * F)[:, :T]
        lengths = meta.get("lengths")
        if lengths is not None:
            wave = wave * (torch.arange(T, device=x.device)[None] < lengths.to(x.device)[:, None])
        return wave

    def dummy_batch(self, batch_size: int, generator: torch.Generator | None = None, seconds: float = 1.0) -> dict:
        T = int(seconds * self.sample_rate)
        audio = 0.1 * torch.randn(batch_size, T, generator=generator)
        lengths = torch.linspace(T // 2, T, batch_size).long()
        lengths[-1] = T
        return {"audio": audio, "audio_lens": lengths, "text": [f"utterance {i}" for i in range(batch_size)]}

    def to_media(self, signal: torch.Tensor, path: str) -> str:
        """Write a (T,) or (1, T) waveform as 16-bit WAV."""
        import soundfile as sf

        wave = signal.detach().float().cpu().reshape(-1).clamp(-1, 1).numpy()
        sf.write(path, wave, self.sample_rate, subtype="PCM_16")
        return path
