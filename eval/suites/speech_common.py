"""Helpers shared by the speech suites: the tokenizer view, the evaluated utterances, cache keys, WAV files."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from unitok.eval.context import EvalContext
from unitok.eval.speech_data import SpeechCuts, resolve_manifest
from unitok.eval.suites.image_common import fixed_subset
from unitok.modalities.speech.tokenizer import SpeechTokenizer

LATENTS = ("mean", "z")


def check_latent(latent: str) -> None:
    """Refuse a ``latent`` setting other than 'mean' or 'z' (every speech suite, before any model loads)."""
    if latent not in LATENTS:
        raise ValueError(f"latent must be 'mean' or 'z', got {latent!r}")


def speech_tokenizer(ctx: EvalContext) -> SpeechTokenizer:
    """The checkpoint's model as a :class:`SpeechTokenizer` (a clear error when it is not a speech model)."""
    return SpeechTokenizer(ctx.ckpt.model)


def utterances(
    ctx: EvalContext, split: str, sample_rate: int, max_seconds: float | None = None
) -> tuple[Dataset, dict[str, Any]]:
    """(utterances to evaluate, data description for results and cache keys)."""
    cuts = SpeechCuts(resolve_manifest(ctx.data, split), sample_rate, max_seconds)
    dataset = fixed_subset(cuts, ctx.options.max_samples)
    info = {"path": str(cuts.manifest), "split": split, "num_samples": len(dataset), "sample_rate": sample_rate,
            "cuts_sha1": cuts.digest(), "max_seconds": max_seconds}  # fmt: skip
    return dataset, info


def utterance_indices(dataset: Dataset) -> list[int]:
    """Positions in the manifest of the utterances of :func:`utterances`' dataset (a batch's ``index`` values)."""
    return list(dataset.indices) if isinstance(dataset, Subset) else list(range(len(dataset)))


def utterance_durations(dataset: Dataset) -> list[float]:
    """Seconds of each utterance of :func:`utterances`' dataset (before any ``max_seconds`` truncation)."""
    cuts = dataset.dataset.cut_list if isinstance(dataset, Subset) else dataset.cut_list
    return [cuts[i].duration for i in utterance_indices(dataset)]


def speech_cache_key(ctx: EvalContext, data: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """Everything cached outputs depend on: checkpoint identity, data, precision and the suite's settings."""
    return {"checkpoint": ctx.ckpt.identity, "data": data, "bf16": ctx.bf16, **settings}


def reconstruct(
    ctx: EvalContext, tok: SpeechTokenizer, batch: dict[str, Any], latent: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode (autocast) and decode (fp32) one batch of utterances.

    Returns (audio (B, T), lengths (B,), reconstruction (B, T)) on ``ctx.device``; ``latent`` is 'mean' or 'z'.
    """
    audio, lengths = batch["audio"].to(ctx.device), batch["audio_lens"].to(ctx.device)
    with ctx.autocast():
        latents = tok.encode(audio, lengths, batch["index"].tolist(), seed)
    return audio, lengths, tok.decode(latents[latent].float(), lengths).float()


@functools.lru_cache(maxsize=8)
def _resampler_to_16k(sample_rate: int, device: torch.device) -> torch.nn.Module:
    import torchaudio

    return torchaudio.transforms.Resample(sample_rate, 16000).to(device)  # the sinc kernel, built once


def to_16k(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(..., T) audio at ``sample_rate`` -> 16 kHz (torchaudio's default sinc resampling), as the scorers read it."""
    return audio if sample_rate == 16000 else _resampler_to_16k(sample_rate, audio.device)(audio)


def write_wav(path: Path, audio: torch.Tensor, sample_rate: int) -> None:
    """(T,) float audio in [-1, 1] -> 16-bit PCM WAV (soundfile)."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio.detach().float().clamp(-1, 1).cpu().numpy(), sample_rate, subtype="PCM_16")
