"""One speech-tokenizer interface for the evaluation suites and latent export, over any speech model of unitok.

:class:`SpeechTokenizer` gives the Semantic-VAE / acoustic-VAE baselines and the unitok speech models the same
calls: encode a batch of padded utterances to per-utterance latents (the mean and a sample drawn with noise seeded
by the utterance, so results do not depend on batching), decode them back, and the frame lengths.

Shape legend:
    B: utterances, T: samples (longest), N: latent frames (longest), C: latent channels
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def utterance_noise(shape: tuple[int, ...], seed: int, index: int) -> torch.Tensor:
    """Standard normal noise for utterance ``index`` from a generator seeded by (seed, index)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn(shape, generator=g)


class SpeechTokenizer:
    """A speech tokenizer seen through the calls the suites need.

    Args:
        model: a ``SemanticVAE``, or a unitok speech model (``SpeechTokenizerModel``) with ``posterior(audio, lengths)``
            (``mean``, and ``logvar`` for a Gaussian bottleneck) and ``decode(latents, lengths)``.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.is_semantic_vae = type(model).__name__ == "SemanticVAE"
        expected = "a Semantic-VAE / acoustic-VAE or a unitok speech tokenizer checkpoint"
        if not self.is_semantic_vae and not (hasattr(model, "encode") and hasattr(model, "decode")):
            raise ValueError(f"{type(model).__name__} is not a speech tokenizer (no encode / decode): pass {expected}")
        if not hasattr(model, "sample_rate"):
            raise ValueError(f"{type(model).__name__} is not a speech tokenizer (no sample_rate): pass {expected}")

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def hop_length(self) -> int:
        """Samples per latent frame."""
        return int(getattr(self.model, "hop_length", 0) or self.model.frame_size)

    @property
    def latent_dim(self) -> int:
        return int(self.model.latent_dim)

    @property
    def latent_rate(self) -> float:
        """Latent frames per second."""
        return self.sample_rate / self.hop_length

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) latent frames (the last one zero-padded)."""
        return (lengths + self.hop_length - 1) // self.hop_length

    def to(self, device: torch.device | str) -> SpeechTokenizer:
        self.model.to(device)
        return self

    def encode(
        self, audio: torch.Tensor, lengths: torch.Tensor, indices: list[int] | None = None, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """(B, T) padded audio + (B,) lengths -> ``mean`` and ``z`` (B, N, C) with zeros past each utterance's frames,
        and ``frames`` (B,). ``z`` is drawn with noise seeded by (seed, indices[b]) (default: b)."""
        indices = list(range(audio.shape[0])) if indices is None else indices
        if self.is_semantic_vae:
            return self._encode_one_by_one(audio, lengths, indices, seed)
        # unitok speech models: ``posterior`` gives the mean (and logvar of a Gaussian bottleneck) of every frame
        out = (
            self.model.posterior(audio, lengths)
            if hasattr(self.model, "posterior")
            else self.model.encode(audio, lengths)
        )
        mean = out["mean"] if isinstance(out, dict) else out
        z = mean
        frames = self.frames(lengths.to(mean.device))
        if isinstance(out, dict) and "logvar" in out:  # each utterance's noise has its own frames: batch-independent
            noise = [
                utterance_noise((1, int(f), mean.shape[-1]), seed, i)[0] for f, i in zip(frames, indices, strict=True)
            ]
            noise = torch.nn.utils.rnn.pad_sequence(noise, batch_first=True)
            noise = torch.nn.functional.pad(noise, (0, 0, 0, mean.shape[1] - noise.shape[1])).to(mean)
            z = mean + torch.exp(0.5 * out["logvar"]) * noise
        valid = (torch.arange(mean.shape[1], device=mean.device)[None] < frames[:, None])[..., None]
        return {"mean": mean * valid, "z": z * valid, "frames": frames}

    def _encode_one_by_one(self, audio, lengths, indices, seed) -> dict[str, torch.Tensor]:
        """The baseline's encoder sees no padding mask (convolutions + causal attention): one utterance at a time,
        each as the official code encodes it (right-padded to a multiple of the hop)."""
        means, zs = [], []
        for wav, n, index in zip(audio, lengths.tolist(), indices, strict=True):
            frames = math.ceil(n / self.hop_length)
            eps = utterance_noise((1, frames, self.latent_dim), seed, index).to(wav)
            out = self.model.encode(wav[None, None, :n], sample=True, eps=eps)
            means.append(out["mu"][0])
            zs.append(out["z"][0])
        pad = torch.nn.utils.rnn.pad_sequence
        return {"mean": pad(means, batch_first=True), "z": pad(zs, batch_first=True),
                "frames": self.frames(lengths.to(audio.device))}  # fmt: skip

    def decode(self, latents: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N, C) latents + (B,) sample lengths -> (B, T) audio, zero past each length."""
        if self.is_semantic_vae:
            frames = self.frames(lengths).tolist()
            clips = [self.model.decode(z[None, :f])[0, 0, :n] for z, f, n in zip(latents, frames, lengths.tolist(),
                                                                                strict=True)]  # fmt: skip
            return torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
        audio = self.model.decode(latents, lengths)
        audio = audio[:, 0] if audio.ndim == 3 else audio
        T = int(lengths.max())
        audio = audio[:, :T]
        return audio * (torch.arange(audio.shape[1], device=audio.device)[None] < lengths[:, None].to(audio.device))

    def describe(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "latent_dim": self.latent_dim, "latent_rate_hz": self.latent_rate,
                "hop_length": self.hop_length}  # fmt: skip
