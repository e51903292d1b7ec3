"""``speech.reconstruction``: how well a speech tokenizer gives back its input.

Every utterance (whole, at the tokenizer's sample rate) is encoded and decoded from the latent mean (config
``latent: mean | z``; the sample uses noise seeded per utterance) and compared with its original over its own
samples: the multi-resolution mel distance of DAC / Semantic-VAE (sum over 7 scales of the L1 between log10 mel
magnitudes, the baseline's training loss), the multi-resolution STFT distance of ``auraloss`` (spectral convergence +
log magnitude, FFT 512 / 1024 / 2048), SI-SDR (``auraloss``) and wide-band PESQ when the ``pesq`` package is
installed. Means over all utterances of all ranks. The first ``save_audio`` pairs are written as WAV files while
the chunks are computed; the cache key names their folder, so a new ``--out`` sharing a ``--cache-dir`` writes them.

Shape legend:
    B: utterances, T: samples
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import extract
from unitok.eval.speech_data import collate_speech
from unitok.eval.suites.speech_common import (
    check_latent,
    reconstruct,
    speech_cache_key,
    speech_tokenizer,
    utterances,
    write_wav,
)

OUT_FOLDER = "speech.reconstruction"


@dataclass
class SpeechReconstructionConfig:
    """Settings of ``speech.reconstruction``.

    Attributes:
        split: manifest split under ``--data``.
        latent: decode the latent 'mean' (default) or the sampled 'z' (noise seeded by utterance and ``seed``).
        seed: seed of the sampling noise.
        max_seconds: truncate longer utterances (None: whole).
        stft_fft_sizes: FFT sizes of the STFT distance.
        pesq: compute wide-band PESQ when the ``pesq`` package is importable (16 kHz audio only).
        save_audio: original / reconstruction WAV pairs written for listening (first N utterances).
    """

    split: str = "val"
    latent: str = "mean"
    seed: int = 0
    max_seconds: float | None = None
    stft_fft_sizes: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    pesq: bool = True
    save_audio: int = 8

    def __post_init__(self) -> None:
        check_latent(self.latent)


def _pesq_fn(enabled: bool, sample_rate: int):
    if not enabled or sample_rate != 16000:
        return None
    try:
        from pesq import pesq
    except ImportError:
        return None
    return lambda ref, deg: float(pesq(16000, ref.numpy(), deg.numpy(), "wb"))


def _metric_fns(cfg: SpeechReconstructionConfig, sample_rate: int):
    from unitok.modalities.speech.losses import MelLossConfig, MelSpectrogramLoss
    from unitok.modalities.speech.perceptual import multi_resolution_stft_loss, si_sdr_per_clip

    mel = MelSpectrogramLoss(MelLossConfig(sample_rate=sample_rate))  # mel filters at the model's rate
    stft = multi_resolution_stft_loss(cfg.stft_fft_sizes, w_sc=1.0, w_log_mag=1.0, sample_rate=sample_rate)
    return mel, stft, si_sdr_per_clip, _pesq_fn(cfg.pesq, sample_rate)


def run(ctx: EvalContext, cfg: SpeechReconstructionConfig) -> SuiteOutput:
    check_latent(cfg.latent)
    tok = speech_tokenizer(ctx)
    dataset, data = utterances(ctx, cfg.split, tok.sample_rate, cfg.max_seconds)
    mel, stft, si_sdr, pesq = _metric_fns(cfg, tok.sample_rate)
    mel, stft = mel.to(ctx.device), stft.to(ctx.device)
    out_dir = ctx.out_dir / OUT_FOLDER

    def measure(batch):
        audio, lengths, rec = reconstruct(ctx, tok, batch, cfg.latent, cfg.seed)
        rows = {"mel_distance": [], "stft_distance": [], "si_sdr": [], "pesq": []}
        for b, n in enumerate(lengths.tolist()):
            x, y = rec[b : b + 1, None, :n], audio[b : b + 1, None, :n]
            rows["mel_distance"].append(mel(x, y))
            rows["stft_distance"].append(stft(x, y))
            rows["si_sdr"].append(si_sdr(x, y, lengths[b : b + 1])[0])
            rows["pesq"].append(torch.tensor(pesq(y[0, 0].cpu(), x[0, 0].cpu()) if pesq else float("nan")))
            index = int(batch["index"][b])
            if index < cfg.save_audio:  # each utterance belongs to one rank
                write_wav(out_dir / f"orig_{index:06d}.wav", y[0, 0], tok.sample_rate)
                write_wav(out_dir / f"rec_{index:06d}.wav", x[0, 0], tok.sample_rate)
        return {k: torch.stack([v.float().cpu() for v in vs]) for k, vs in rows.items()}

    audio_files = {"dir": str(out_dir.resolve()) if cfg.save_audio else None, "save_audio": cfg.save_audio}
    key = speech_cache_key(ctx, data, suite="speech.reconstruction", latent=cfg.latent, seed=cfg.seed,
                           stft=cfg.stft_fft_sizes, pesq=pesq is not None, audio_files=audio_files)  # fmt: skip
    out = extract(ctx, dataset, measure, "speech_reconstruction", key, collate_fn=collate_speech, desc="reconstruct")
    metrics = {k: out[k].double().mean().item() for k in ("mel_distance", "stft_distance", "si_sdr")}
    if pesq is not None:
        metrics["pesq"] = out["pesq"].double().mean().item()
    saved = min(cfg.save_audio, len(dataset))
    artifacts = {"audio_pairs": OUT_FOLDER} if saved else {}
    protocol = {**asdict(cfg), "tokenizer": tok.describe(), "pesq_available": pesq is not None,
                "mel_distance": "DAC/Semantic-VAE multi-scale log10-mel L1 (7 scales, summed)",
                "stft_distance": "auraloss MultiResolutionSTFTLoss (SC + log magnitude)"}  # fmt: skip
    return SuiteOutput(metrics, data, artifacts, details={"protocol": protocol})


SUITE = Suite(
    name="speech.reconstruction",
    config=SpeechReconstructionConfig,
    run=run,
    summary="multi-resolution mel and STFT distance, SI-SDR, PESQ (if installed) of decoded speech",
)
