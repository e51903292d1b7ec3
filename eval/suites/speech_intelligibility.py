"""``speech.intelligibility``: can an ASR model still read the reconstruction? WER as F5-TTS measures it.

Whisper (transformers, local path ``asr_model=``, English, beam ``num_beams``) transcribes every reconstruction (and,
with ``reference_audio=true``, the original too: the ceiling of the same ASR on the same data); ``asr=pocketsphinx``
swaps in the offline PocketSphinx model for demos and smoke tests (a coarse signal, not Whisper's scale); references and
hypotheses are normalised as F5-TTS does (punctuation deleted, lowercase), ``jiwer`` gives each utterance's WER and
the metric is the mean of per-utterance WERs (not a corpus WER), as F5-TTS reports it. Transcripts are written to
``OUT/speech.intelligibility/transcripts.jsonl`` (from one file per utterance, written while the chunks are computed;
the cache key names their folder, so a new ``--out`` sharing a ``--cache-dir`` writes them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import extract
from unitok.eval.metrics.text import utterance_wers
from unitok.eval.speech_data import collate_speech
from unitok.eval.speech_models import PocketsphinxTranscriber, WhisperTranscriber
from unitok.eval.suites.speech_common import (
    check_latent,
    reconstruct,
    speech_cache_key,
    speech_tokenizer,
    to_16k,
    utterance_durations,
    utterance_indices,
    utterances,
)

OUT_FOLDER = "speech.intelligibility"


@dataclass
class IntelligibilityConfig:
    """Settings of ``speech.intelligibility``.

    Attributes:
        split: manifest split under ``--data`` (transcripts come from the cuts' supervisions).
        asr: 'whisper' (the protocol: ``asr_model``) or 'pocketsphinx' (bundled offline model; demos, smoke tests).
        asr_model: local transformers Whisper directory (model + processor files).
        num_beams: beam size (F5-TTS: faster-whisper large-v3, beam 5).
        reference_audio: also transcribe the originals (``wer_original``).
        latent: decode the latent 'mean' (default) or the sampled 'z'.
        seed: seed of the sampling noise.
        max_seconds: truncate longer utterances (None: whole; truncation would cut words off the references).
    """

    split: str = "val"
    asr: str = "whisper"
    asr_model: str | None = None
    num_beams: int = 5
    reference_audio: bool = True
    latent: str = "mean"
    seed: int = 0
    max_seconds: float | None = None


def load_transcriber(cfg: IntelligibilityConfig, device) -> WhisperTranscriber | PocketsphinxTranscriber:
    """The ASR model: ``.transcribe([(T_i,) 16 kHz audio]) -> [text]`` and ``.identity`` (a seam for tests)."""
    if cfg.asr == "whisper":
        return WhisperTranscriber(cfg.asr_model, device, num_beams=cfg.num_beams)
    if cfg.asr == "pocketsphinx":
        if cfg.asr_model:
            raise ValueError("asr=pocketsphinx uses its bundled model: drop asr_model (or set asr=whisper)")
        return PocketsphinxTranscriber()
    raise ValueError(f"asr must be 'whisper' or 'pocketsphinx', got {cfg.asr!r}")


def check_durations(dataset, max_seconds: float | None, window_seconds: float) -> None:
    """Refuse, before any work, utterances the ASR would cut (their WER would count the cut words as deleted)."""
    longest = max(utterance_durations(dataset), default=0.0)
    if max_seconds is not None:
        longest = min(longest, max_seconds)
    if longest > window_seconds:
        raise ValueError(f"the ASR reads at most {window_seconds:g} s and the data has an utterance of "
                         f"{longest:.1f} s: pass speech.intelligibility.max_seconds={window_seconds:g}, or "
                         f"evaluate a split of shorter utterances")  # fmt: skip


def run(ctx: EvalContext, cfg: IntelligibilityConfig) -> SuiteOutput:
    check_latent(cfg.latent)
    tok = speech_tokenizer(ctx)
    asr = load_transcriber(cfg, ctx.device)
    dataset, data = utterances(ctx, cfg.split, tok.sample_rate, cfg.max_seconds)
    check_durations(dataset, cfg.max_seconds, getattr(asr, "window_seconds", float("inf")))
    folder = ctx.out_dir / OUT_FOLDER / "utterances"
    folder.mkdir(parents=True, exist_ok=True)

    def score(batch):
        audio, lengths, rec = reconstruct(ctx, tok, batch, cfg.latent, cfg.seed)
        spans = list(enumerate(lengths.tolist()))
        hyps = asr.transcribe([to_16k(rec[b, :n], tok.sample_rate) for b, n in spans])
        if cfg.reference_audio:
            hyps_original = asr.transcribe([to_16k(audio[b, :n], tok.sample_rate) for b, n in spans])
        rows = []
        for b, _ in spans:
            row = {"cut_id": batch["cut_id"][b], "reference": batch["text"][b], "hypothesis": hyps[b]}
            if cfg.reference_audio:
                row["hypothesis_original"] = hyps_original[b]
            (folder / f"{int(batch['index'][b]):06d}.json").write_text(json.dumps(row) + "\n")
            rows.append(row)
        refs = [r["reference"] for r in rows]
        out = {"wer": torch.tensor(utterance_wers(refs, [r["hypothesis"] for r in rows]))}
        if cfg.reference_audio:
            out["wer_original"] = torch.tensor(utterance_wers(refs, [r["hypothesis_original"] for r in rows]))
        return out

    key = speech_cache_key(ctx, data, suite="speech.intelligibility", latent=cfg.latent, seed=cfg.seed,
                           asr=asr.identity, beams=cfg.num_beams, reference_audio=cfg.reference_audio,
                           utterance_files=str(folder.resolve()))  # fmt: skip
    out = extract(ctx, dataset, score, "speech_wer", key, collate_fn=collate_speech, desc="transcribe")
    metrics = {k: torch.nanmean(v.double()).item() for k, v in out.items()}
    artifacts = {}
    if ctx.dist.is_main:
        lines = [(folder / f"{i:06d}.json").read_text() for i in utterance_indices(dataset)]  # not stale files
        (ctx.out_dir / OUT_FOLDER / "transcripts.jsonl").write_text("".join(lines))
        artifacts["transcripts"] = f"{OUT_FOLDER}/transcripts.jsonl"
    data["empty_references"] = int(torch.isnan(out["wer"]).sum())
    protocol = {
        **asdict(cfg),
        "asr_model": asr.identity,
        "tokenizer": tok.describe(),
        "normalisation": "F5-TTS: punctuation deleted, lowercase",
        "average": "mean of per-utterance WER",
    }
    return SuiteOutput(metrics, data, artifacts, details={"protocol": protocol})


SUITE = Suite(
    name="speech.intelligibility",
    config=IntelligibilityConfig,
    run=run,
    summary="Whisper WER of reconstructions (F5-TTS normalisation, mean of per-utterance WER)",
)
