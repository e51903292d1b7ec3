"""``speech.latent_stats``: per-channel latent mean / std of a speech tokenizer (``latents_stats.pt`` format).

Over the valid latent frames of every utterance of the split (padding frames never count), for the sampled latent
``z`` (default: what Semantic-VAE's ``extract_latent.py`` exports for TTS, noise seeded per utterance) or the mean.
Per-utterance moments are cached per chunk and merged exactly (any number of ranks, resumable). Writes
``OUT/latents_stats.pt`` and, with ``store_in_checkpoint=true``, the same file into the checkpoint directory.

Shape legend:
    B: utterances, N: latent frames, C: latent channels
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import extract
from unitok.eval.speech_data import collate_speech
from unitok.eval.suites.image_latent_stats import checkpoint_dir, publish_latent_stats, stats_metrics
from unitok.eval.suites.speech_common import check_latent, speech_cache_key, speech_tokenizer, utterances


@dataclass
class SpeechLatentStatsConfig:
    """Settings of ``speech.latent_stats``.

    Attributes:
        split: manifest split under ``--data`` (the TTS training split).
        latent: 'z' (sampled, default) or 'mean'.
        seed: seed of the sampling noise.
        max_seconds: truncate longer utterances (None: whole).
        multiplier: recorded with the statistics (never stored in the file).
        bf16: encode under bf16 autocast (``unitok-extract`` encodes in fp32).
        store_in_checkpoint: also write ``latents_stats.pt`` into the checkpoint's pretrained directory.
    """

    split: str = "train"
    latent: str = "z"
    seed: int = 0
    max_seconds: float | None = None
    multiplier: float = 1.0
    bf16: bool = False
    store_in_checkpoint: bool = False


def run(ctx: EvalContext, cfg: SpeechLatentStatsConfig) -> SuiteOutput:
    check_latent(cfg.latent)
    tok = speech_tokenizer(ctx)
    target = checkpoint_dir(ctx) if cfg.store_in_checkpoint else None  # fail before the long pass
    dataset, data = utterances(ctx, cfg.split, tok.sample_rate, cfg.max_seconds)

    def moments(batch):
        audio, lengths = batch["audio"].to(ctx.device), batch["audio_lens"].to(ctx.device)
        with ctx.autocast(enabled=cfg.bf16):
            out = tok.encode(audio, lengths, batch["index"].tolist(), cfg.seed)
        z, frames = out[cfg.latent].double(), out["frames"]
        valid = (torch.arange(z.shape[1], device=z.device)[None] < frames[:, None])[..., None]
        count = frames[:, None].double().expand(-1, z.shape[-1])
        mean = (z * valid).sum(1) / count
        return {"count": count, "mean": mean, "m2": (((z - mean[:, None]) * valid) ** 2).sum(1)}

    key = speech_cache_key(ctx, data, suite="speech.latent_stats", latent=cfg.latent, seed=cfg.seed,
                           bf16_encode=cfg.bf16 and ctx.bf16)  # fmt: skip
    out = extract(ctx, dataset, moments, "speech_latent_stats", key, collate_fn=collate_speech, desc="latents")
    stats, artifacts = publish_latent_stats(ctx, out, tok.latent_dim, cfg.multiplier, target)
    data["latent_frames"] = int(out["count"][:, 0].sum().item())
    protocol = {**asdict(cfg), "tokenizer": tok.describe()}
    return SuiteOutput(stats_metrics(stats), data, artifacts, details={"protocol": protocol, "stats": stats.to_dict()})


SUITE = Suite(
    name="speech.latent_stats",
    config=SpeechLatentStatsConfig,
    run=run,
    summary="per-channel latent mean/std over valid frames (latents_stats.pt), optionally stored in the checkpoint",
)
