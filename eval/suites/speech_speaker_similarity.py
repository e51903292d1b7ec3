"""``speech.speaker_similarity``: does the reconstruction keep the speaker? Cosine similarity between the speaker
embeddings of each original utterance and its reconstruction, through a speaker-verification model from
transformers read from a local path (``sv_model=``, e.g. ``microsoft/wavlm-base-plus-sv``), both at 16 kHz; mean
over utterances. (F5-TTS's SIM-o uses WavLM-large + ECAPA-TDNN from s3prl/UniSpeech, which is not a transformers
model; scores of different embedders are not comparable, so the result records the model.) ``sv=resemblyzer`` swaps
in Resemblyzer's offline GE2E d-vector for demos and smoke tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import extract
from unitok.eval.speech_data import collate_speech
from unitok.eval.speech_models import ResemblyzerEmbedder, SpeakerEmbedder
from unitok.eval.suites.speech_common import (
    check_latent,
    reconstruct,
    speech_cache_key,
    speech_tokenizer,
    to_16k,
    utterances,
)


@dataclass
class SpeakerSimilarityConfig:
    """Settings of ``speech.speaker_similarity``.

    Attributes:
        split: manifest split under ``--data``.
        sv: 'transformers' (``sv_model``) or 'resemblyzer' (bundled offline d-vector; demos, smoke tests).
        sv_model: local transformers speaker-verification model directory (AutoModelForAudioXVector).
        latent: decode the latent 'mean' (default) or the sampled 'z'.
        seed: seed of the sampling noise.
        max_seconds: truncate longer utterances (None: whole).
    """

    split: str = "val"
    sv: str = "transformers"
    sv_model: str | None = None
    latent: str = "mean"
    seed: int = 0
    max_seconds: float | None = None


def load_embedder(cfg: SpeakerSimilarityConfig, device) -> SpeakerEmbedder | ResemblyzerEmbedder:
    """The speaker model: ``(T,) 16 kHz audio -> (D,)`` unit embedding, and ``.identity``."""
    if cfg.sv == "transformers":
        return SpeakerEmbedder(cfg.sv_model, device)
    if cfg.sv == "resemblyzer":
        if cfg.sv_model:
            raise ValueError("sv=resemblyzer uses its bundled model: drop sv_model (or set sv=transformers)")
        return ResemblyzerEmbedder(device)
    raise ValueError(f"sv must be 'transformers' or 'resemblyzer', got {cfg.sv!r}")


def run(ctx: EvalContext, cfg: SpeakerSimilarityConfig) -> SuiteOutput:
    check_latent(cfg.latent)
    tok = speech_tokenizer(ctx)
    embed = load_embedder(cfg, ctx.device)
    dataset, data = utterances(ctx, cfg.split, tok.sample_rate, cfg.max_seconds)

    def similarity(batch):
        audio, lengths, rec = reconstruct(ctx, tok, batch, cfg.latent, cfg.seed)
        sims = []
        for b, n in enumerate(lengths.tolist()):
            a, r = to_16k(audio[b, :n], tok.sample_rate), to_16k(rec[b, :n], tok.sample_rate)
            sims.append(torch.dot(embed(a), embed(r)).cpu())
        return {"similarity": torch.stack(sims)}

    key = speech_cache_key(ctx, data, suite="speech.speaker_similarity", latent=cfg.latent, seed=cfg.seed,
                           sv_model=embed.identity)  # fmt: skip
    out = extract(ctx, dataset, similarity, "speech_sim", key, collate_fn=collate_speech, desc="speaker similarity")
    protocol = {**asdict(cfg), "sv_model": embed.identity, "tokenizer": tok.describe()}
    return SuiteOutput({"similarity": out["similarity"].double().mean().item()}, data, details={"protocol": protocol})


SUITE = Suite(
    name="speech.speaker_similarity",
    config=SpeakerSimilarityConfig,
    run=run,
    summary="speaker-embedding cosine between originals and reconstructions (transformers x-vector model)",
)
