"""Speech augmentation: lhotse cut transforms from a config list, and random fixed-length crops, both replayable.

Every random choice is a pure function of (seed, epoch, cut id): each transform's ``randgen`` is re-seeded per cut
before it is applied, and a crop's offset is drawn from its own seeded generator. A resumed run, another DataLoader
worker or another batch composition therefore gives a cut exactly the same augmentation and crop.

Augmentation config (``augment`` in the data params), a list applied in order, all off unless listed::

    - {name: speed, p: 0.5, factors: [0.9, 1.1]}     # lhotse PerturbSpeed (changes duration and pitch)
    - {name: tempo, p: 0.5, factors: [0.9, 1.1]}     # lhotse PerturbTempo (duration only)
    - {name: volume, p: 0.5, scale_low: 0.5, scale_high: 1.5}   # lhotse PerturbVolume
    - {name: reverb, p: 0.3, rir: /data/rirs.jsonl.gz}          # lhotse ReverbWithImpulseResponse

``reverb`` convolves with a random recording of ``rir`` (a lhotse RecordingSet or CutSet manifest at the corpus
sample rate); without ``rir`` lhotse simulates a room (FRA-RIR) whose random generators are seeded from the cut
(its audio is then loaded with one torch thread, see :class:`CutAugmenter`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lhotse import CutSet, RecordingSet
from lhotse.dataset.cut_transforms import PerturbSpeed, PerturbTempo, PerturbVolume, ReverbWithImpulseResponse


def cut_rng(seed: int, epoch: int, cut_id: str, purpose: str) -> random.Random:
    """A generator seeded by (seed, epoch, cut id, purpose); string seeds hash the same in every process."""
    return random.Random(f"unitok-speech/{seed}/{epoch}/{cut_id}/{purpose}")


class SeededReverb(ReverbWithImpulseResponse):
    """lhotse's reverb transform whose simulated rooms (no RIR recordings) are seeded from ``randgen``."""

    def __call__(self, cuts: CutSet) -> CutSet:
        if self.rir_recordings:
            return super().__call__(cuts)
        out = []
        for cut in cuts:
            if self.random.random() <= self.p:
                cut = cut.reverb_rir(normalize_output=self.normalize_output, early_only=self.early_only,
                                     affix_id=not self.preserve_id, rir_channels=self.rir_channels,
                                     room_rng_seed=self.random.randrange(2**31),
                                     source_rng_seed=self.random.randrange(2**31))  # fmt: skip
            out.append(cut)
        return CutSet.from_cuts(out)


def _load_rirs(path: str) -> RecordingSet:
    from lhotse.serialization import load_manifest

    manifest = load_manifest(path)
    if isinstance(manifest, CutSet):
        manifest = RecordingSet.from_recordings(c.recording for c in manifest)
    if not isinstance(manifest, RecordingSet) or len(manifest) == 0:
        raise ValueError(f"augment reverb: rir {path} must be a non-empty lhotse RecordingSet or CutSet manifest")
    return manifest


def build_transform(spec: dict[str, Any]):
    """One lhotse cut transform from ``{name, p, ...}`` (see module doc); ids are preserved."""
    spec = dict(spec)
    name, p = spec.pop("name", None), float(spec.pop("p", 0.5))
    allowed = {"speed": {"factors"}, "tempo": {"factors"}, "volume": {"scale_low", "scale_high"},
               "reverb": {"rir", "normalize_output", "early_only"}}  # fmt: skip
    if name not in allowed:
        raise ValueError(f"unknown speech augmentation {name!r} (known: {', '.join(allowed)})")
    unknown = set(spec) - allowed[name]
    if unknown:
        raise ValueError(
            f"unknown arguments {sorted(unknown)} for augmentation {name} (known: {sorted(allowed[name])})"
        )
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation {name}: p must be in [0, 1], got {p}")
    if name in ("speed", "tempo"):
        factors = spec.get("factors", [0.9, 1.1])
        cls = PerturbSpeed if name == "speed" else PerturbTempo
        return cls(factors=list(factors) if isinstance(factors, Sequence) else [factors], p=p, preserve_id=True)
    if name == "volume":
        return PerturbVolume(p=p, preserve_id=True, **spec)
    rir = spec.pop("rir", None)
    return SeededReverb(rir_recordings=_load_rirs(rir) if rir else None, p=p, preserve_id=True, **spec)


class CutAugmenter:
    """Applies configured lhotse transforms to one cut at a time, each re-seeded by (seed, epoch, cut id).

    Transforms are lazy (lhotse records them on the recording); load the audio under
    :func:`~unitok.engine.state.seeded_rng` of the cut, as the speech loader does, because lhotse's simulated
    rooms also draw from torch's global generator.

    Args:
        config: list of transform specs (module doc); empty = no augmentation.
    """

    def __init__(self, config: Sequence[dict[str, Any]] | None = None):
        self.transforms = [build_transform(spec) for spec in (config or [])]
        # lhotse's simulated rooms add reflections with duplicate indices (`rir[idx] += ...`), whose result depends
        # on torch's thread scheduling: load such audio with one thread to replay it exactly
        self.single_threaded = any(getattr(t, "rir_recordings", True) == [] for t in self.transforms)

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __call__(self, cut, seed: int, epoch: int):
        cut_id = cut.id
        for i, transform in enumerate(self.transforms):
            transform.random = cut_rng(seed, epoch, cut_id, f"augment{i}")
            cut = next(iter(transform(CutSet.from_cuts([cut]))))
        return cut


def crop_offset(num_samples: int, crop_samples: int, rng: random.Random) -> int:
    """A uniform start in [0, num_samples - crop_samples] (0 when the clip is not longer than the crop)."""
    return rng.randrange(num_samples - crop_samples + 1) if num_samples > crop_samples else 0


def random_crop(cut, seconds: float, seed: int, epoch: int, cut_id: str | None = None):
    """``cut`` truncated to a window of ``seconds`` at a seeded offset (the whole cut when it is shorter).

    The offset is a whole number of samples at the cut's sample rate, drawn from :func:`cut_rng` of
    (seed, epoch, cut id, "crop").
    """
    sr = cut.sampling_rate
    crop = round(seconds * sr)
    total = cut.num_samples if cut.num_samples is not None else round(cut.duration * sr)
    if total <= crop:
        return cut
    start = crop_offset(total, crop, cut_rng(seed, epoch, cut_id or cut.id, "crop"))
    return cut.truncate(offset=start / sr, duration=crop / sr, preserve_id=True)
