"""Speech evaluation data: utterances of a lhotse CutSet manifest, resampled to the tokenizer's rate.

``--data`` is a CutSet manifest (``cuts.jsonl.gz``, as written by ``python -m unitok.modalities.speech.data
prepare ...`` or any lhotse recipe), a folder holding ``cuts_<split>.jsonl.gz``, or a folder of wav / flac files
with side-by-side ``.txt`` transcripts (read by ``cuts_from_folder``).

Shape legend:
    B: utterances, T: samples (longest in the batch)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from unitok.modalities.speech.data import load_mono


def resolve_manifest(data: str | Path | None, split: str) -> Path:
    """The CutSet manifest of ``split`` under ``data`` (or ``data`` itself when it is a manifest file, or the folder
    itself when it holds audio files and no manifest)."""
    if data is None:
        raise ValueError("this suite needs --data: a lhotse CutSet manifest or a folder with cuts_<split>.jsonl.gz")
    path = Path(data).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in (f"cuts_{split}.jsonl.gz", f"cuts_{split}.jsonl", f"{split}.jsonl.gz"):
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.glob("*.jsonl*"))
        if not found:
            return path  # a folder of audio files
        raise FileNotFoundError(f"--data {path} has no cuts_{split}.jsonl.gz (manifests there: {found or 'none'})")
    raise FileNotFoundError(f"--data {str(path)!r} does not exist")


class SpeechCuts(Dataset):
    """Utterances of a CutSet: ``{"audio": (T,) float32 mono, "text", "speaker", "cut_id", "index"}``.

    Args:
        manifest: a CutSet manifest file, or a folder of audio files with ``.txt`` transcripts.
        sample_rate: resample every cut to this rate (lhotse ``cut.resample``).
        max_seconds: truncate longer utterances (None: whole utterances).
    """

    def __init__(self, manifest: str | Path, sample_rate: int, max_seconds: float | None = None):
        from lhotse import CutSet

        self.manifest = Path(manifest)
        if self.manifest.is_dir():
            from unitok.modalities.speech.data import cuts_from_folder

            self.cut_list = list(cuts_from_folder(self.manifest, progress=False))
        else:
            self.cut_list = list(CutSet.from_file(self.manifest).to_eager())
        if not self.cut_list:
            raise ValueError(f"{self.manifest} holds no cuts")
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.cut_list)

    def digest(self) -> str:
        """SHA-1 of the cut ids and durations: part of every cache key."""
        h = hashlib.sha1()
        for cut in self.cut_list:
            h.update(f"{cut.id}\t{cut.duration:.6f}\n".encode())
        return h.hexdigest()

    def __getitem__(self, index: int) -> dict[str, Any]:
        cut = self.cut_list[index]
        try:
            audio = load_mono(cut, self.sample_rate, self.max_seconds)
        except Exception as e:  # an evaluation never skips an utterance silently
            raise ValueError(f"cannot load the audio of cut {cut.id} ({self.manifest}): {e}") from e
        sups = list(cut.supervisions)
        return {"audio": audio, "text": " ".join(s.text or "" for s in sups).strip(), "cut_id": cut.id,
                "speaker": sups[0].speaker if sups else None, "index": index}  # fmt: skip


def collate_speech(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad to the longest utterance: ``audio`` (B, T), ``audio_lens`` (B,), ``index`` (B,), texts, ids, speakers."""
    audio = torch.nn.utils.rnn.pad_sequence([s["audio"] for s in samples], batch_first=True)
    return {
        "audio": audio,
        "audio_lens": torch.tensor([len(s["audio"]) for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "text": [s["text"] for s in samples],
        "cut_id": [s["cut_id"] for s in samples],
        "speaker": [s["speaker"] for s in samples],
    }
