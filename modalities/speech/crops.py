"""1-D multi-crop of a batch of padded audio for self-distillation (DINO on speech): random time crops, on device.

Two global crops and ``n_local`` local crops per clip, each a random window of the clip's valid samples (a clip
shorter than the window gives the whole clip, zero-padded, with its length), optionally scaled by a random gain.
Crops are view-major, as the image multi-crop collates them: rows ``[view 0 of every clip, view 1 of every clip,
...]``. Randomness comes from the global torch RNG (saved in checkpoints) or a given CPU generator.

GUESSES (no published speech DINO recipe): 2 s global and 0.5 s local windows, 4 local crops, ±6 dB gain. The
windows start on frame boundaries by default, so a crop's tokens are the clip's tokens (only the content of each
view differs, never the framing); ``align_to_frames=False`` draws sample offsets.

Shape legend:
    B: clips, T: samples (padded), V: views, C: crop samples; outputs (V·B, C) audio and (V·B,) lengths
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AudioMultiCropConfig:
    """Attributes:
    global_seconds, local_seconds: window lengths of the global and local crops.
    n_local: local crops per clip (0: none).
    gain_db: each crop is scaled by a gain uniform in ±gain_db decibels (0: off).
    align_to_frames: windows start at multiples of the frame size.
    """

    global_seconds: float = 2.0
    local_seconds: float = 0.5
    n_local: int = 4
    gain_db: float = 6.0
    align_to_frames: bool = True


class AudioMultiCrop:
    """``__call__(audio (B, T), lengths (B,)) -> dict`` with ``global_crops`` (2·B, Cg), ``global_lens``,
    ``local_crops`` (n_local·B, Cl) and ``local_lens`` (the last two only with local crops).

    Args:
        cfg: the crop settings.
        sample_rate: Hz (window lengths in samples).
        frame_size: samples per token (crop windows are rounded to whole frames).
    """

    global_views = 2

    def __init__(self, cfg: AudioMultiCropConfig, sample_rate: int = 16000, frame_size: int = 320):
        if cfg.n_local < 0 or cfg.gain_db < 0:
            raise ValueError(f"n_local and gain_db must be >= 0, got {cfg.n_local}, {cfg.gain_db}")
        self.cfg, self.frame_size = cfg, frame_size
        self.global_samples = self._window(cfg.global_seconds, sample_rate, "global_seconds")
        self.local_samples = self._window(cfg.local_seconds, sample_rate, "local_seconds") if cfg.n_local else 0

    def _window(self, seconds: float, sample_rate: int, name: str) -> int:
        frames = round(seconds * sample_rate / self.frame_size)
        if frames < 1:
            raise ValueError(f"crops.{name}={seconds} is shorter than one frame ({self.frame_size} samples)")
        return frames * self.frame_size

    def crop(
        self, audio: torch.Tensor, lengths: torch.Tensor, size: int, views: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``views`` random windows of ``size`` samples per clip -> ((views·B, size) audio, (views·B,) lengths)."""
        B, T = audio.shape
        lens = lengths.repeat(views).cpu()
        kept = lens.clamp(max=size)
        slack = (lens - kept).double()
        start = (torch.rand(views * B, generator=generator, dtype=torch.float64) * (slack + 1)).floor().long()
        if self.cfg.align_to_frames:
            start = start // self.frame_size * self.frame_size
        start = start.to(audio.device)
        index = (start[:, None] + torch.arange(size, device=audio.device)[None]).clamp(max=T - 1)
        valid = torch.arange(size, device=audio.device)[None] < kept.to(audio.device)[:, None]
        crops = audio.repeat(views, 1).gather(1, index) * valid
        if self.cfg.gain_db > 0:
            db = (torch.rand(views * B, generator=generator) * 2 - 1) * self.cfg.gain_db
            crops = crops * (10 ** (db / 20)).to(crops)[:, None]
        return crops, kept.to(audio.device)

    def __call__(
        self, audio: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        if audio.ndim != 2 or lengths.shape != audio.shape[:1]:
            shapes = f"{tuple(audio.shape)}, {tuple(lengths.shape)}"
            raise ValueError(f"multi-crop expects audio (B, T) and lengths (B,), got {shapes}")
        out = {}
        out["global_crops"], out["global_lens"] = self.crop(
            audio, lengths, self.global_samples, self.global_views, generator
        )
        if self.cfg.n_local:
            out["local_crops"], out["local_lens"] = self.crop(
                audio, lengths, self.local_samples, self.cfg.n_local, generator
            )
        return out
