"""``unitok-extract``: latents of a speech corpus for any speech tokenizer, as resumable safetensors shards.

Reads a lhotse CutSet (``.jsonl.gz`` manifest) or a folder of wav / flac files (transcripts from ``<name>.txt``,
``<name>.normalized.txt`` or ``<name>.lab`` beside each file), resamples to the tokenizer's rate, and encodes every
utterance through :class:`~.tokenizer.SpeechTokenizer` (a Semantic-VAE or acoustic-VAE directory, released folder,
``unitok-train`` run or train checkpoint, or any unitok speech model the tokenizer view accepts). For each
utterance it stores the posterior ``mean`` and the sample ``z = mean + std · eps`` (what upstream's
``extract_latent.py`` saves), ``eps`` drawn by ``tokenizer.utterance_noise`` from a generator seeded by
(``--seed``, the utterance's position in the manifest), as the ``speech.latent_stats`` evaluation suite draws it:
the same latents whatever the batch size, the number of processes or an interruption. Utterances go to shards of
``--shard-size`` in manifest order (layout: :mod:`.latent_shards`); shards already on disk are skipped, so
re-running the command resumes. Under ``torchrun`` each rank takes every world-size-th shard; rank 0 then writes
``index.json`` and the exact per-channel statistics of ``z`` and ``mean`` over valid frames (``latents_stats.pt``,
``latents_stats_mean.pt``).

Shape legend:
    B: batch, T: samples, N: latent frames, C: latent channels
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from unitok.latent_stats import LatentStatsAccumulator
from unitok.modalities.speech.data import cuts_from_folder, load_cuts, load_mono
from unitok.modalities.speech.latent_shards import (
    INDEX_NAME,
    STATS_FILES,
    fold_stats,
    read_shard_info,
    shard_name,
    write_index,
    write_shard,
)
from unitok.modalities.speech.tokenizer import SpeechTokenizer

EXAMPLES = """examples:
  unitok-extract --ckpt runs/semantic_vae_16k_d64/model --cuts data/libritts_train_cuts.jsonl.gz --out latents/svae
  unitok-extract --ckpt /weights/Semantic-VAE/semantic_vae --wavs /data/LibriTTS/test-clean --out latents/test
  torchrun --nproc-per-node 8 -m unitok.modalities.speech.extract --ckpt runs/acoustic_vae_16k_d64/model \\
      --cuts data/libritts_train_cuts.jsonl.gz --out latents/avae64 --batch-size 32 --num-workers 8
  (re-run the same command to resume; iterate the result with unitok.modalities.speech.latent_shards.iter_latents)
"""
TRANSCRIPT_SUFFIXES = (".txt", ".normalized.txt", ".lab")
SETTINGS_NAME = "settings.json"


@dataclass
class Utterance:
    """One input: its id, transcript, lhotse cut and position in the corpus (the seed of its noise)."""

    id: str
    text: str
    cut: Any
    index: int = 0


def load_corpus(cuts: str | None = None, wavs: str | None = None) -> list[Utterance]:
    """The utterances of a CutSet manifest or of a folder of wav / flac files, in order (ids must be unique).

    A folder is read by :func:`~.data.cuts_from_folder` (unreadable files are skipped and logged); an utterance's
    id is its path relative to the folder without extension, its text the first of ``TRANSCRIPT_SUFFIXES`` found.
    """
    if (cuts is None) == (wavs is None):
        raise ValueError(
            "give exactly one of --cuts (a lhotse CutSet manifest) and --wavs (a folder of .wav / .flac files)"
        )
    if cuts is not None:
        items = [Utterance(c.id, " ".join(s.text for s in c.supervisions if s.text), c) for c in load_cuts(cuts)]
    else:
        folder = Path(wavs)
        if not folder.is_dir():
            raise FileNotFoundError(f"wav folder {wavs} does not exist")
        found = cuts_from_folder(folder, speakers="none", require_text=False, progress=False,
                                 transcript_suffixes=TRANSCRIPT_SUFFIXES)  # fmt: skip
        # id: the relative path without extension ("spk/utt1"); every channel of the recording (load_mono averages)
        items = [Utterance(Path(c.recording.sources[0].source).relative_to(folder).with_suffix("").as_posix(),
                           c.supervisions[0].text, c.recording.to_cut()) for c in found]  # fmt: skip
    for index, utt in enumerate(items):
        utt.index = index
    ids = [u.id for u in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"utterance ids must be unique: {len(ids) - len(set(ids))} duplicates in {cuts or wavs}")
    return items


def load_tokenizer(ckpt: str, device: torch.device) -> SpeechTokenizer:
    """The tokenizer of a pretrained directory, a released folder, a ``unitok-train`` run directory (its ``model/``,
    else its latest checkpoint) or a run's ``checkpoints/step_*.pt`` file (the EMA weights when the run kept them).

    Raises:
        FileNotFoundError, ValueError: naming the path, when it is no such checkpoint or holds no speech tokenizer.
    """
    from unitok.eval.checkpoints import load_checkpoint_for_eval

    model = load_checkpoint_for_eval(ckpt).model.eval().requires_grad_(False)
    return SpeechTokenizer(model).to(device)


class _Audio(Dataset):
    """(position, mono audio (T,) at ``sample_rate`` or None, error) of each utterance."""

    def __init__(self, items: list[Utterance], sample_rate: int):
        self.items, self.sample_rate = items, sample_rate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            audio = load_mono(self.items[i].cut, self.sample_rate)
            if audio.numel() == 0:
                raise ValueError("empty audio")
            return i, audio, None
        except Exception as e:  # corrupt or missing audio: counted and reported, the rest goes on
            return i, None, f"{type(e).__name__}: {e}"


def _collate(samples):
    ok = [(i, a) for i, a, _ in samples if a is not None]
    failed = [(i, err) for i, a, err in samples if a is None]
    lengths = torch.tensor([a.numel() for _, a in ok], dtype=torch.long)
    audio = pad_sequence([a for _, a in ok], batch_first=True) if ok else torch.zeros(0, 0)  # (B, T)
    return [i for i, _ in ok], audio, lengths, failed


def _batches(shards: list[list[Utterance]], batch_size: int) -> tuple[list[Utterance], list[list[int]], list[int]]:
    """(the shards' utterances in one list, batches of indices into it, the shard of each batch): each shard sorted
    by duration (longest first) and cut into batches that never cross into the next shard."""
    flat, batches, owner = [], [], []
    for s, items in enumerate(shards):
        order = sorted(range(len(items)), key=lambda i: -items[i].cut.duration)
        order = [len(flat) + i for i in order]
        batches += [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        owner += [s] * -(-len(order) // batch_size)
        flat += items
    return flat, batches, owner


def _shard_result(tok: SpeechTokenizer, items: list[Utterance], z: dict, mean: dict, samples: dict,
                  failed: dict) -> dict:  # fmt: skip
    """Records, latents, statistics and failures of one shard from its utterances' outputs (keyed by position)."""
    kept = [i for i in range(len(items)) if i in z]
    stats = {kind: LatentStatsAccumulator(tok.latent_dim, channel_dim=-1) for kind in STATS_FILES}
    for i in kept:
        stats["z"].update(z[i])
        stats["mean"].update(mean[i])
    records = [{"id": items[i].id, "text": items[i].text, "frames": int(z[i].shape[0]),
                "num_samples": samples[i], "duration": samples[i] / tok.sample_rate}
               for i in kept]  # fmt: skip
    return {"utterances": records, "latents": {"z": [z[i] for i in kept], "mean": [mean[i] for i in kept]},
            "stats": stats, "failed": {items[i].id: err for i, err in sorted(failed.items())}}  # fmt: skip


def encode_shards(tok: SpeechTokenizer, shards: list[list[Utterance]], args, device: torch.device,
                  bar=None) -> Iterator[tuple[int, dict]]:  # fmt: skip
    """(position in ``shards``, result) of each shard as its last batch completes, in order; one DataLoader (and
    one set of workers) for all of them. A result holds the shard's latents, records, statistics and failures."""
    flat, batches, owner = _batches(shards, args.batch_size)
    remaining = [owner.count(s) for s in range(len(shards))]
    loader = DataLoader(_Audio(flat, tok.sample_rate), batch_sampler=batches, num_workers=args.num_workers,
                        collate_fn=_collate)  # fmt: skip
    z, mean, samples, failed = {}, {}, {}, {}  # by index into flat
    for b, (positions, audio, lengths, bad) in enumerate(loader):
        failed.update({i: err for i, err in bad})
        if positions:
            with torch.inference_mode():
                out = tok.encode(audio.to(device), lengths.to(device), [flat[i].index for i in positions], args.seed)
            for row, i in enumerate(positions):
                n = int(out["frames"][row])
                mean[i], z[i] = out["mean"][row, :n].float().cpu(), out["z"][row, :n].float().cpu()
                samples[i] = int(lengths[row])
        if bar is not None:
            bar.update(len(positions) + len(bad))
        s = owner[b]
        remaining[s] -= 1
        if remaining[s] == 0:
            start = sum(len(items) for items in shards[:s])
            mine = range(start, start + len(shards[s]))
            local = [{i - start: d.pop(i) for i in mine if i in d} for d in (z, mean, samples, failed)]
            yield s, _shard_result(tok, shards[s], *local)


def encode_shard(tok: SpeechTokenizer, items: list[Utterance], args, device: torch.device, bar=None) -> dict:
    """Latents, records, statistics and failures of one shard's utterances (batched by duration)."""
    return next(encode_shards(tok, [items], args, device, bar))[1]


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Write the run's settings, or check that a resumed run uses the same ones."""
    path = out / SETTINGS_NAME
    if path.is_file():
        before = json.loads(path.read_text())
        diff = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if diff:
            raise ValueError(f"{out} was started with other settings {diff} (before, now); use a new --out")
    else:
        path.write_text(json.dumps(settings, indent=1) + "\n")


def _finished(path: Path, expected: list[str]) -> bool:
    """Whether a shard file exists for exactly these utterance ids (an error if it holds others)."""
    if not path.is_file():
        return False
    info = read_shard_info(path)
    have = [u["id"] for u in info["utterances"]] + list(info["failed"])
    if sorted(have) != sorted(expected):
        raise ValueError(f"{path} holds other utterances than this input's shard: a different --cuts/--wavs? "
                         "use a new --out")  # fmt: skip
    return True


def _shard_items(items: list[Utterance], shard_size: int) -> list[list[Utterance]]:
    return [items[k : k + shard_size] for k in range(0, len(items), shard_size)]


def _header(args, tok: SpeechTokenizer, source: str) -> dict[str, Any]:
    return {"ckpt": str(Path(args.ckpt).resolve()), "source": source, "model": type(tok.model).__name__,
            "seed": args.seed, "shard_size": args.shard_size, **tok.describe(),
            "layout": "per utterance z.{i} and mean.{i}: (frames, channels) float32",
            "noise": "z = mean + std * eps, eps = utterance_noise((1, frames, C), seed, input position)"}  # fmt: skip


def _finish(out: Path, header: dict[str, Any], num_shards: int, latent_dim: int) -> dict[str, Any]:
    """Rank 0, after every shard exists: the index and the exact statistics of z and mean."""
    infos = [(shard_name(k), read_shard_info(out / shard_name(k))) for k in range(num_shards)]
    write_index(out, header, infos)
    stats = fold_stats([info for _, info in infos], latent_dim)
    for kind, stat in stats.items():
        stat.save(out / STATS_FILES[kind])
    return {"stats": stats, "failed": {k: v for _, i in infos for k, v in i["failed"].items()},
            "utterances": [u for _, i in infos for u in i["utterances"]]}  # fmt: skip


def run(args) -> dict[str, Any]:
    """Extract (this rank's shards), then, on rank 0, index and statistics; returns a summary."""
    from tqdm.auto import tqdm

    from unitok.engine.distributed import init_distributed

    info = init_distributed(args.device)
    out = Path(args.out)
    items = load_corpus(args.cuts, args.wavs)
    tok = load_tokenizer(args.ckpt, info.device)
    source = str(Path(args.cuts or args.wavs).resolve())
    header = _header(args, tok, source)
    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        _check_settings(out, {**{k: header[k] for k in ("ckpt", "source", "seed", "shard_size")}, "count": len(items)})
    shards = _shard_items(items, args.shard_size)
    mine = [k for k in range(len(shards)) if k % info.world_size == info.rank]
    todo = [k for k in mine if not _finished(out / shard_name(k), [u.id for u in shards[k]])]
    bar = tqdm(total=sum(len(shards[k]) for k in todo), desc="extract", unit="utt", disable=not (info.is_main and todo))
    for s, result in encode_shards(tok, [shards[k] for k in todo], args, info.device, bar) if todo else ():
        k = todo[s]
        write_shard(out / shard_name(k), result["utterances"], result["latents"], result["stats"], result["failed"])
    bar.close()
    if info.enabled:
        torch.distributed.barrier()
    summary = {"skipped_shards": len(mine) - len(todo), "written_shards": len(todo), "num_shards": len(shards)}
    if info.is_main:
        summary.update(_finish(out, header, len(shards), tok.latent_dim))
    return summary


def _report(args, summary: dict[str, Any]) -> None:
    utts = summary["utterances"]
    hours = sum(u["duration"] for u in utts) / 3600
    z = summary["stats"]["z"]
    print(f"unitok-extract: {len(utts)} utterances ({hours:.3g} h, {sum(u['frames'] for u in utts)} frames) in "
          f"{summary['num_shards']} shards -> {args.out} ({summary['written_shards']} written, "
          f"{summary['skipped_shards']} already done); {len(summary['failed'])} unreadable")  # fmt: skip
    for uid, err in list(summary["failed"].items())[:5]:
        print(f"  unreadable: {uid}: {err}")
    print(f"  z channel mean {z.mean.mean():.4f}, std {z.std.mean():.4f} (averaged over channels); "
          f"{INDEX_NAME}, {', '.join(STATS_FILES.values())}")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="unitok-extract", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--ckpt",
        required=True,
        help="tokenizer: pretrained dir, released folder, unitok-train run dir or checkpoints/step_*.pt",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cuts", help="lhotse CutSet manifest (.jsonl.gz)")
    src.add_argument("--wavs", help="folder of .wav / .flac files (recursive; transcripts in .txt beside them)")
    p.add_argument("--out", required=True, help="output folder (shards, index.json, latents_stats*.pt)")
    p.add_argument("--shard-size", type=int, default=1000, help="utterances per shard (default 1000)")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per forward pass (default 16)")
    p.add_argument("--num-workers", type=int, default=2, help="audio loading workers (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-utterance sampling noise (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    if args.shard_size < 1 or args.batch_size < 1:
        p.error("--shard-size and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"unitok-extract: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        from unitok.engine.distributed import cleanup

        cleanup()
    if "stats" in summary:
        _report(args, summary)


if __name__ == "__main__":
    main()
