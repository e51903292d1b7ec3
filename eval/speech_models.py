"""Frozen speech models the evaluation suites score with, all read from local files.

* a speaker-verification model (``AutoModelForAudioXVector``, e.g. ``microsoft/wavlm-base-plus-sv``) for speaker
  similarity: cosine of the x-vector embeddings;
* Whisper (``WhisperForConditionalGeneration`` + ``WhisperProcessor``, e.g. ``openai/whisper-large-v3``) for ASR;
* offline stand-ins whose weights ship inside their pip packages, for demos and smoke tests on machines without
  those downloads: CMU PocketSphinx's US-English model (ASR) and Resemblyzer's GE2E d-vector (speaker embedding).
  Their scores are a coarse relative signal (PocketSphinx's WER on clean synthetic speech is far above Whisper's):
  compare systems only under the same model; every result records which one it used.

Nothing is downloaded: a missing path names the model to copy there. The speaker models embed one utterance at a
time, so padding never changes a score; Whisper transcribes a batch at once, since its processor pads every input to
the same 30-second window anyway (so a batch gives each utterance the input it would get alone).

Shape legend:
    T: samples at 16 kHz, D: embedding width
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F

SV_HINT = "a transformers speaker-verification model such as microsoft/wavlm-base-plus-sv (AutoModelForAudioXVector)"
ASR_HINT = "a transformers Whisper model such as openai/whisper-large-v3 (model + processor files)"


def _local_dir(path: str | os.PathLike | None, what: str, hint: str) -> Path:
    if not path:
        raise FileNotFoundError(f"{what} needs a local model directory: pass {what}=/path/to/model ({hint})")
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"{what}={str(p)!r} is not a transformers model directory (no config.json); copy {hint}"
        )
    return p


class SpeakerEmbedder:
    """(T,) 16 kHz audio -> (D,) L2-normalised speaker embedding."""

    def __init__(self, path: str | os.PathLike | None, device: torch.device | str = "cpu"):
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        self.path = _local_dir(path, "sv_model", SV_HINT)
        self.identity = str(self.path)
        self.extractor = AutoFeatureExtractor.from_pretrained(self.path)
        self.model = AutoModelForAudioXVector.from_pretrained(self.path).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        inputs = self.extractor(audio.float().cpu().numpy(), sampling_rate=16000, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return F.normalize(self.model(**inputs).embeddings.float(), dim=-1)[0]


class WhisperTranscriber:
    """16 kHz audio -> text, with Whisper (English transcription, beam search), a batch of utterances at a time."""

    window_seconds = 30.0  # Whisper's input window: the processor pads or truncates every utterance to it

    def __init__(self, path: str | os.PathLike | None, device: torch.device | str = "cpu", num_beams: int = 5,
                 language: str = "en"):  # fmt: skip
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.path = _local_dir(path, "asr_model", ASR_HINT)
        self.identity = str(self.path)
        self.processor = WhisperProcessor.from_pretrained(self.path)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.path).to(device).eval()
        self.device, self.num_beams, self.language = device, num_beams, language

    @torch.no_grad()
    def transcribe(self, audios: list[torch.Tensor]) -> list[str]:
        """[(T_i,) 16 kHz audio] -> one text each (utterances over 30 s are refused: Whisper would cut them)."""
        too_long = [len(a) / 16000 for a in audios if len(a) > self.window_seconds * 16000]
        if too_long:
            raise ValueError(f"Whisper reads at most {self.window_seconds:g} s, got an utterance of "
                             f"{max(too_long):.1f} s: evaluate with max_seconds={self.window_seconds:g}")  # fmt: skip
        arrays = [a.float().cpu().numpy() for a in audios]
        feats = self.processor(arrays, sampling_rate=16000, return_tensors="pt").input_features
        ids = self.model.generate(feats.to(self.device, self.model.dtype), language=self.language, task="transcribe",
                                  num_beams=self.num_beams)  # fmt: skip
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def __call__(self, audio: torch.Tensor) -> str:
        """(T,) 16 kHz audio -> text."""
        return self.transcribe([audio])[0]


def _import_offline(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{what} needs the {module} package: pip install {module} (or unitok[eval])") from None


class PocketsphinxTranscriber:
    """16 kHz audio -> text with PocketSphinx's bundled US-English acoustic model, 3-gram LM and dictionary."""

    window_seconds = float("inf")  # decodes utterances of any length

    def __init__(self):
        self.decoder_cls = _import_offline("pocketsphinx", "asr=pocketsphinx").Decoder
        self.identity = f"pocketsphinx {version('pocketsphinx')} (bundled en-us model)"

    def transcribe(self, audios: list[torch.Tensor]) -> list[str]:
        """[(T_i,) 16 kHz audio] -> one text each (16-bit PCM).

        Each utterance gets a fresh decoder (about 0.1 s): a reused one carries its running cepstral-mean and noise
        estimates over from the previous utterance, which makes a transcript depend on what was decoded before.
        """
        texts = []
        for audio in audios:
            pcm = (audio.detach().float().clamp(-1, 1) * 32767).round().short().cpu().numpy().tobytes()
            decoder = self.decoder_cls(samprate=16000, loglevel="FATAL")
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            texts.append(hyp.hypstr.strip() if hyp is not None else "")
        return texts


class ResemblyzerEmbedder:
    """(T,) 16 kHz audio -> (256,) L2-normalised GE2E d-vector (Resemblyzer: volume normalised, silences trimmed)."""

    def __init__(self, device: torch.device | str = "cpu"):
        resemblyzer = _import_offline("resemblyzer", "sv=resemblyzer")
        self.encoder = resemblyzer.VoiceEncoder(device=str(device), verbose=False)
        self.preprocess = resemblyzer.preprocess_wav
        self.identity = f"resemblyzer {version('resemblyzer')} (bundled GE2E d-vector)"

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        wav = self.preprocess(audio.detach().float().cpu().numpy(), source_sr=16000)
        if len(wav) == 0:  # all silence after trimming: embed the untrimmed audio rather than nothing
            wav = audio.detach().float().cpu().numpy()
        return F.normalize(torch.from_numpy(self.encoder.embed_utterance(wav)).float(), dim=-1)
