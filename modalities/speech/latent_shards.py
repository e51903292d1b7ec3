"""Latent shards written by ``unitok-extract``: safetensors files of N utterances, a JSON index, channel statistics.

Layout of an output folder:

- ``shard-00000.safetensors`` ...: per utterance ``z.{i}`` (the sampled latent ``mean + std · eps``, as upstream's
  ``extract_latent.py`` saves) and ``mean.{i}`` (the posterior mean), each (N_i, C) float32 frames-first, ``i`` the
  utterance's position in the shard; ``stats.{z,mean}.{count,mean,m2}`` (C,) float64, the shard's exact per-channel
  moments over valid frames; metadata ``utterances`` (JSON list of ``{id, text, frames, num_samples, duration}``)
  and ``failed`` (JSON object: id -> error, for utterances whose audio could not be read). Each file is written
  atomically, so a shard that exists is complete: a resumed extraction skips it.
- ``index.json``: the model and sampling settings, and per shard its file name and utterances.
- ``latents_stats.pt`` (statistics of ``z``) and ``latents_stats_mean.pt`` (of ``mean``): LightningDiT's
  ``{'mean', 'std'}`` (1, C, 1, 1) format (:mod:`unitok.latent_stats`), folded exactly from the shards' moments.

Shape legend:
    N: latent frames of an utterance, C: latent channels
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from unitok.engine.checkpoint import atomic_write, atomic_write_text
from unitok.latent_stats import LatentStats, LatentStatsAccumulator

FORMAT = "unitok-latents-v1"
INDEX_NAME = "index.json"
STATS_FILES = {"z": "latents_stats.pt", "mean": "latents_stats_mean.pt"}
MOMENTS = ("count", "mean", "m2")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def write_shard(
    path: Path,
    utterances: list[dict[str, Any]],
    latents: dict[str, list[torch.Tensor]],
    stats: dict[str, LatentStatsAccumulator],
    failed: dict[str, str],
) -> None:
    """Write one shard atomically (temp file + rename).

    Args:
        path: the shard file.
        utterances: ``{id, text, frames, num_samples, duration}`` per stored utterance, in shard order.
        latents: ``{"z": [(N_i, C)], "mean": [(N_i, C)]}`` in the same order.
        stats: the shard's accumulators for ``z`` and ``mean``.
        failed: id -> error of each utterance whose audio could not be read (not stored).
    """
    from safetensors.torch import save_file

    tensors = {f"{kind}.{i}": t.float().contiguous() for kind, items in latents.items() for i, t in enumerate(items)}
    for kind, acc in stats.items():
        tensors.update({f"stats.{kind}.{m}": getattr(acc, m).clone() for m in MOMENTS})
    metadata = {"format": FORMAT, "utterances": json.dumps(utterances), "failed": json.dumps(failed)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_shard_info(path: Path) -> dict[str, Any]:
    """A shard's metadata (``utterances``, ``failed``) and moments, without reading its latents."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a {FORMAT} shard (format {meta.get('format')!r})")
            moments = {kind: {m: f.get_tensor(f"stats.{kind}.{m}") for m in MOMENTS} for kind in STATS_FILES}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read latent shard {path}: {e}") from None
    return {"utterances": json.loads(meta["utterances"]), "failed": json.loads(meta["failed"]), "moments": moments}


def fold_stats(infos: list[dict[str, Any]], num_channels: int) -> dict[str, LatentStats]:
    """Exact statistics of ``z`` and ``mean`` over every shard (their moments merged in shard order)."""
    out = {}
    for kind in STATS_FILES:
        acc = LatentStatsAccumulator(num_channels, channel_dim=-1)
        for info in infos:
            acc.add_moments(*(info["moments"][kind][m] for m in MOMENTS))
        out[kind] = acc.compute()
    return out


def write_index(out: Path, header: dict[str, Any], infos: list[tuple[str, dict[str, Any]]]) -> Path:
    """Write ``index.json`` atomically: ``header`` plus, per shard, its file and utterances."""
    index = {**header, "format": FORMAT, "shards": [{"file": f, "utterances": i["utterances"], "failed": i["failed"]}
                                                    for f, i in infos]}  # fmt: skip
    index["num_utterances"] = sum(len(s["utterances"]) for s in index["shards"])
    index["num_failed"] = sum(len(s["failed"]) for s in index["shards"])
    return atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1) + "\n")


def iter_latents(folder: str | os.PathLike, kind: str = "z") -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """(utterance record, (N, C) latent) of every utterance of an extraction, in index order.

    Args:
        folder: an ``unitok-extract`` output folder.
        kind: 'z' (sampled) or 'mean'.
    """
    from safetensors import safe_open

    root = Path(folder)
    if kind not in STATS_FILES:
        raise ValueError(f"kind must be one of {list(STATS_FILES)}, got {kind!r}")
    index_file = root / INDEX_NAME
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} is missing: not a finished unitok-extract output folder")
    index = json.loads(index_file.read_text())
    for shard in index["shards"]:
        with safe_open(str(root / shard["file"]), framework="pt") as f:
            for i, utt in enumerate(shard["utterances"]):
                yield utt, f.get_tensor(f"{kind}.{i}")
