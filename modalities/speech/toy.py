"""Embedded speech: a deterministic English corpus synthesised offline with espeak-ng (no download).

The ``espeakng-loader`` wheel carries ``libespeak-ng`` and its voice data; :class:`Espeak` drives the library
through ctypes in synchronous mode (22050 Hz int16), and the corpus is resampled to 16 kHz with torchaudio.

Determinism: libespeak-ng keeps state between utterances that no API call resets (a pitch-flutter phase, filter
memories, ``rand()`` breath noise), so the same text and voice give different samples on a second call. Every
utterance is therefore synthesised by a freshly loaded library (``dlopen`` after ``dlclose``, about 1 ms) with
fixed random seeds, which makes each wav a pure function of (voice, rate, pitch, sentence): the same bytes on
every run and in any order. Another user of libespeak-ng in the same process (e.g. a phonemizer holding it open)
would keep the library loaded and break this; the corpus test checks it.

Corpus layout (:func:`write_toy_corpus`): ``wavs/<split>/<speaker>/<cut_id>.wav`` (16 kHz, 16-bit) and one lhotse
CutSet manifest per split, ``cuts_train.jsonl.gz`` / ``cuts_val.jsonl.gz``, with text and speaker (the voice).
The split is by sentence: validation sentences are the last ``num_val`` of :data:`SENTENCES`, training sentences
the first ``num_train``; every voice reads every sentence of its split.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ESPEAK_RATE = 22050  # what espeak_Initialize reports for the shipped voices
SAMPLE_RATE = 16000
_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8, _PARAM_RATE, _PARAM_PITCH = 2, 1, 1, 1, 3
CORPUS_VERSION = 1  # bump when the synthesis or the layout changes (invalidates cached corpora)


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: ``<language>+<variant>`` (variants in ``espeak-ng-data/voices/!v``), rate, pitch.

    Attributes:
        name: e.g. ``"en-us+f3"``; also the speaker label of its utterances.
        rate: words per minute.
        pitch: base pitch 0-99 (espeak's default is 50).
    """

    name: str
    rate: int = 160
    pitch: int = 50


# Five voices of the spec's probe (all present in the wheel's data); rates and pitches spread them further apart.
VOICES: tuple[Voice, ...] = (
    Voice("en-us+m1", 165, 45),
    Voice("en-us+f3", 160, 55),
    Voice("en-gb-x-rp+m7", 150, 50),
    Voice("en-us+f5", 170, 60),
    Voice("en-029+m3", 155, 40),
)

# Sixty short everyday sentences written for this corpus.
SENTENCES: tuple[str, ...] = (
    "The cat sleeps on the warm window sill.",
    "We had soup and bread for lunch today.",
    "Please close the door when you leave.",
    "The train to the city leaves at nine.",
    "My brother plays the piano every evening.",
    "It rained all night and the roads are wet.",
    "She painted the fence a bright shade of green.",
    "The children ran across the park to the pond.",
    "I left my keys on the kitchen table.",
    "A small boat drifted slowly down the river.",
    "He reads the morning paper with his coffee.",
    "The baker opens the shop before sunrise.",
    "Our neighbours planted apple trees last spring.",
    "The wind blew the leaves into a big pile.",
    "Can you pass me the salt, please?",
    "The library is quiet on Sunday afternoons.",
    "Two birds were singing on the garden wall.",
    "She keeps her old letters in a wooden box.",
    "The bus was late because of the snow.",
    "We walked along the beach until it got dark.",
    "The old clock in the hall still keeps good time.",
    "He fixed the broken chair with some glue.",
    "The market sells fresh fish on Fridays.",
    "My sister is learning to ride a bicycle.",
    "The lamp on the desk gives a soft yellow light.",
    "They built a snowman in the front yard.",
    "Put the milk back in the fridge, please.",
    "The mountain path is steep and narrow.",
    "A dog barked somewhere down the street.",
    "The teacher wrote the date on the board.",
    "We need more flour to bake the cake.",
    "The river was cold, but the water was clear.",
    "He always takes the stairs instead of the lift.",
    "The garden smells of roses after the rain.",
    "She found a coin under the sofa cushion.",
    "The farmer checks his sheep every morning.",
    "Turn left at the bridge and follow the road.",
    "The kettle is boiling, so the tea is nearly ready.",
    "My grandfather tells the best stories.",
    "The shop on the corner closes at six.",
    "A gentle breeze came in through the open window.",
    "The puppy chewed one of my new shoes.",
    "We watched the stars from the top of the hill.",
    "The soup needs a little more pepper.",
    "He packed a sandwich and an apple for the trip.",
    "The candle burned down to a tiny stub.",
    "Our team won the match by a single goal.",
    "The museum has a large collection of maps.",
    "She hums a tune while she waters the plants.",
    "The ice on the lake is too thin to walk on.",
    "I will call you when the parcel arrives.",
    "The fox crept quietly past the chicken coop.",
    "Fresh bread is best with a bit of butter.",
    "The bell rang and the pupils left the room.",
    "He wrapped the present in bright blue paper.",
    "The pilot said we would land in ten minutes.",
    "A red kite flew high above the green field.",
    "The cafe serves breakfast until eleven.",
    "We sat by the fire and listened to the rain.",
    "The last leaf fell from the tall oak tree.",
)

_LOCK = threading.Lock()  # libespeak-ng has process-global state: one synthesis at a time
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _espeak_paths() -> tuple[str, str]:
    """(library path, directory holding ``espeak-ng-data``) from the espeakng-loader package."""
    try:
        import espeakng_loader
    except ImportError:
        raise ImportError(
            "the embedded speech corpus needs the 'espeakng-loader' package (pip install espeakng-loader), "
            "which carries libespeak-ng and its voice data"
        ) from None
    return espeakng_loader.get_library_path(), str(Path(espeakng_loader.get_data_path()).parent)


def _bind(lib: ctypes.CDLL) -> None:
    """Declare the C signatures of the functions used."""
    sigs = {
        "espeak_Initialize": ([ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
        "espeak_SetSynthCallback": ([_CALLBACK_TYPE], None),
        "espeak_SetVoiceByName": ([ctypes.c_char_p], ctypes.c_int),
        "espeak_SetParameter": ([ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "espeak_Synth": (
            [
                ctypes.c_char_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.c_void_p,
                ctypes.c_void_p,
            ],
            ctypes.c_int,
        ),  # fmt: skip
        "espeak_Synchronize": ([], ctypes.c_int),
        "espeak_Terminate": ([], ctypes.c_int),
        "espeak_ng_SetRandSeed": ([ctypes.c_long], ctypes.c_int),
    }
    for name, (argtypes, restype) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype


class Espeak:
    """Synthesis with libespeak-ng through ctypes, one freshly loaded library per utterance (see module doc)."""

    def __init__(self):
        self.library, self.data_dir = _espeak_paths()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK_TYPE(self._collect)  # kept alive as long as the object
        self._libc = ctypes.CDLL(None)

    def _collect(self, wav, num_samples: int, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # continue

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """(T,) int16 samples at 22050 Hz of ``text`` read by ``voice``; a pure function of its arguments."""
        import _ctypes

        with _LOCK:
            lib = ctypes.CDLL(self.library)
            try:
                _bind(lib)
                rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, self.data_dir.encode(), 0)
                if rate != ESPEAK_RATE:
                    raise RuntimeError(f"libespeak-ng at {self.library} failed to start (espeak_Initialize: {rate})")
                lib.espeak_SetSynthCallback(self._callback)
                if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                    raise ValueError(
                        f"espeak-ng has no voice {voice.name!r}: use <language>+<variant>, e.g. en-us+f3 or "
                        f"en-gb-x-rp+m7 (variants are the files of {self.data_dir}/espeak-ng-data/voices/!v)"
                    )
                lib.espeak_SetParameter(_PARAM_RATE, voice.rate, 0)
                lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
                lib.espeak_ng_SetRandSeed(1)
                self._libc.srand(1)  # breath noise uses libc rand()
                self._chunks = []
                data = text.encode("utf-8")
                status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                if status != 0 or lib.espeak_Synchronize() != 0:
                    raise RuntimeError(f"espeak-ng could not synthesise {text!r} (status {status})")
                lib.espeak_Terminate()
            finally:
                if hasattr(_ctypes, "dlclose"):  # unload, so the next utterance starts from a fresh library state
                    _ctypes.dlclose(lib._handle)
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@functools.cache
def _resampler():
    import torchaudio

    return torchaudio.transforms.Resample(ESPEAK_RATE, SAMPLE_RATE)  # its sinc kernel is computed once


def to_16k(samples: np.ndarray) -> np.ndarray:
    """int16 samples at 22050 Hz -> float32 in [-1, 1] at 16 kHz (torchaudio's sinc resampler)."""
    import torch

    with torch.no_grad():
        return _resampler()(torch.from_numpy(samples.astype(np.float32) / 32768.0)).clamp(-1, 1).numpy()


def split_sentences(num_train: int, num_val: int) -> dict[str, list[tuple[int, str]]]:
    """{"train": first num_train, "val": last num_val} (index, sentence) pairs of :data:`SENTENCES`; disjoint."""
    if num_train < 1 or num_val < 0 or num_train + num_val > len(SENTENCES):
        raise ValueError(
            f"num_train ({num_train}) >= 1 and num_val ({num_val}) >= 0 sentences must add up to at most "
            f"{len(SENTENCES)} (the corpus has {len(SENTENCES)} sentences)"
        )
    indexed = list(enumerate(SENTENCES))
    return {"train": indexed[:num_train], "val": indexed[len(SENTENCES) - num_val :]}


def _write_wav(path: Path, wave: np.ndarray) -> None:
    """16-bit PCM wav, written atomically (temp file + rename)."""
    import soundfile as sf

    from unitok.engine.checkpoint import atomic_write

    atomic_write(path, lambda tmp: sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV"))


def write_toy_corpus(out_dir: str | os.PathLike, num_train: int = 48, num_val: int = 12,
                     voices: Sequence[Voice | str] = VOICES, progress: bool = True) -> dict[str, Path]:  # fmt: skip
    """Synthesise the corpus into ``out_dir``: wavs and one CutSet manifest per split (see module doc).

    Args:
        out_dir: output folder (created).
        num_train: training sentences (the first ones of :data:`SENTENCES`).
        num_val: validation sentences (the last ones; never in training).
        voices: speakers (:class:`Voice` or voice names at the default rate and pitch).
        progress: show a progress bar.

    Returns:
        {"train": manifest path, "val": manifest path}.
    """
    from tqdm.auto import tqdm

    from unitok.engine.state import single_threaded

    out = Path(out_dir).resolve()
    voices = [v if isinstance(v, Voice) else Voice(v) for v in voices]
    if not voices or len({v.name for v in voices}) != len(voices):
        raise ValueError(f"voices must be distinct and non-empty, got {[v.name for v in voices]}")
    espeak = Espeak()
    splits = split_sentences(num_train, num_val)
    total = sum(len(s) for s in splits.values()) * len(voices)
    bar = tqdm(total=total, desc="espeak-ng corpus", unit="utt", disable=not progress)
    manifests = {}
    with single_threaded():  # short clips: one thread is fastest, and spares a busy machine
        for split, sentences in splits.items():
            manifests[split] = _write_split(out, split, sentences, voices, espeak, bar)
    bar.close()
    return manifests


def _write_split(out: Path, split: str, sentences: list[tuple[int, str]], voices: list[Voice], espeak: Espeak,
                 bar) -> Path:  # fmt: skip
    """Wavs and the manifest of one split; every voice reads every sentence."""
    from lhotse import Recording, SupervisionSegment

    from unitok.modalities.speech.data import make_cut, save_cuts

    cuts = []
    for voice in voices:
        for index, text in sentences:
            cut_id = f"{voice.name}_{index:03d}"
            path = out / "wavs" / split / voice.name / f"{cut_id}.wav"
            _write_wav(path, to_16k(espeak.synthesize(text, voice)))
            rec = Recording.from_file(path, recording_id=cut_id)
            sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=rec.duration, channel=0,
                                     text=text, speaker=voice.name, language="English")  # fmt: skip
            cuts.append(make_cut(rec, [sup]))
            bar.update()
    return save_cuts(cuts, out / f"cuts_{split}.jsonl.gz")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/unitok/speech_toy`` (``~/.cache/unitok/speech_toy``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unitok" / "speech_toy"


def toy_corpus(root: str | os.PathLike | None = None, num_train: int = 48, num_val: int = 12,
               voices: Sequence[Voice | str] = VOICES, progress: bool = True) -> dict[str, Path]:  # fmt: skip
    """The corpus of these settings under ``root`` (default :func:`default_cache_dir`), written on first use.

    Each setting gets its own subfolder (named by a hash of the settings); a ``corpus.json`` written last marks it
    complete. Concurrent builders (e.g. several ranks) write identical bytes, every file atomically, so they
    cannot corrupt each other.
    """
    voices = [v if isinstance(v, Voice) else Voice(v) for v in voices]
    settings = {"version": CORPUS_VERSION, "num_train": num_train, "num_val": num_val,
                "voices": [[v.name, v.rate, v.pitch] for v in voices]}  # fmt: skip
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root if root is not None else default_cache_dir()) / f"toy-{key}"
    marker = folder / "corpus.json"
    manifests = {split: folder / f"cuts_{split}.jsonl.gz" for split in ("train", "val")}
    if marker.is_file() and all(p.is_file() for p in manifests.values()):
        return manifests
    manifests = write_toy_corpus(folder, num_train, num_val, voices, progress=progress)
    from unitok.engine.checkpoint import atomic_write_text

    atomic_write_text(marker, json.dumps(settings, indent=1) + "\n")
    return manifests
