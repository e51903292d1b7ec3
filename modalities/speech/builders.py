"""Speech data-set builders for the training registry (``unitok.registry.DATASETS``).

Both return a streaming :class:`~unitok.modalities.speech.loader.SpeechCuts` that yields whole batches (run with
``train.batch_size: 0``) and its :class:`~unitok.modalities.speech.loader.SpeechCollate`. Common ``params``:

- ``max_duration`` (seconds of audio per batch, default 60), ``max_cuts``, ``num_buckets`` (10), ``shuffle``
  (true), ``drop_last`` (false), ``buffer_size`` (20000), ``num_cuts_for_bins_estimate`` (10000),
  ``min_seconds`` / ``max_seconds`` (cut duration filter): lhotse's DynamicBucketingSampler;
- ``crop_seconds``: random crops of this length (e.g. 3.0 as Semantic-VAE), batches of
  ``floor(max_duration / crop_seconds)`` crops unless ``max_cuts`` is set;
- ``sample_rate`` (16000): cuts of another rate are resampled;
- ``augment``: list of lhotse cut transforms (:mod:`unitok.modalities.speech.augment`), training split only.

Other splits than ``train`` are read in order (no shuffle) and without augmentation. Null values are unset.
"""

from __future__ import annotations

from typing import Any

_COMMON = {
    "max_duration": 60.0, "max_cuts": None, "crop_seconds": None, "num_buckets": 10, "shuffle": True,
    "drop_last": False, "buffer_size": 20000, "num_cuts_for_bins_estimate": 10000, "min_seconds": None,
    "max_seconds": None, "sample_rate": 16000, "augment": None,
}  # fmt: skip


def _params(name: str, params: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``params`` over the defaults (common + ``own``); unknown keys are an error, null means the default."""
    defaults = {**_COMMON, **own}
    params = {k: v for k, v in params.items() if v is not None}
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"unknown data.params for {name}: {sorted(unknown)} (known: {sorted(defaults)})")
    return {**defaults, **params}


def _build(cuts, p: dict[str, Any], split: str):
    from unitok.modalities.speech.loader import SpeechCollate, SpeechCuts

    train = split == "train"
    dataset = SpeechCuts(cuts, max_duration=p["max_duration"], max_cuts=p["max_cuts"], crop_seconds=p["crop_seconds"],
                         num_buckets=p["num_buckets"], shuffle=p["shuffle"] and train, drop_last=p["drop_last"],
                         buffer_size=p["buffer_size"], num_cuts_for_bins_estimate=p["num_cuts_for_bins_estimate"],
                         min_seconds=p["min_seconds"], max_seconds=p["max_seconds"])  # fmt: skip
    collate = SpeechCollate(p["sample_rate"], p["crop_seconds"], p["augment"] if train else None)
    return dataset, collate


def build_speech_cuts_dataset(params: dict[str, Any], split: str = "train"):
    """lhotse manifests or a Shar directory: ``params["cuts"]`` (required) is a ``.jsonl.gz`` path, a list of
    them, or a Shar directory; ``{split}`` in it is replaced by the split name (``data/cuts_{split}.jsonl.gz``).
    """
    p = _params("speech_cuts", params, {"cuts": None})
    cuts = p.pop("cuts")
    if cuts is None:
        raise ValueError("data.params.cuts (cut manifest path(s) or a Shar directory) is required for speech_cuts")
    cuts = (
        [str(c).format(split=split) for c in cuts] if isinstance(cuts, list | tuple) else str(cuts).format(split=split)
    )
    return _build(cuts, p, split)


def build_speech_toy_dataset(params: dict[str, Any], split: str = "train"):
    """The embedded espeak-ng corpus (:mod:`unitok.modalities.speech.toy`), built on first use and cached.

    ``params``: ``root`` (cache folder, default ``~/.cache/unitok/speech_toy``), ``num_train`` (48) and
    ``num_val`` (12) sentences, ``voices`` (names, default the five built-in voices), plus the common ones.
    Splits: ``train``, ``val`` (or ``validation``).
    """
    from unitok.modalities.speech.toy import VOICES, toy_corpus

    p = _params("speech_toy", params, {"root": None, "num_train": 48, "num_val": 12, "voices": None})
    name = {"validation": "val"}.get(split, split)
    if name not in ("train", "val"):
        raise ValueError(f"speech_toy has the splits 'train' and 'val', not {split!r}")
    voices = p.pop("voices") or VOICES
    manifests = toy_corpus(p.pop("root"), p.pop("num_train"), p.pop("num_val"), voices)
    return _build(manifests[name], p, split)
