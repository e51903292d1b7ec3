"""Speech manifests: lhotse CutSets of local corpora, Shar export, and the ``prepare`` / ``shar`` command line.

Nothing is downloaded. Every manifest is a lazy-readable ``cuts_<split>.jsonl.gz`` (one MonoCut per recording,
cut id = recording id, with its supervision: text, speaker, language), written deterministically and atomically.

Corpora (:func:`prepare_corpus`):

- ``libritts``, ``librispeech``: lhotse's own recipes (``prepare_libritts``, ``prepare_librispeech``) on a local
  copy; splits are the corpus parts found (``train-clean-100``, ``test-clean``, ...).
- ``librispeech_pc``: lhotse 1.33 has no LibriSpeech-PC recipe, so the punctuated, cased transcripts are read from
  the released json manifests (one ``{"audio_filepath", "text", "duration"}`` object per line, a file per part,
  e.g. ``test-clean.json``) and put on the LibriSpeech recordings that lhotse's LibriSpeech recipe finds; the
  original upper-case transcript stays in ``supervision.custom["text_norm"]``. Utterances absent from the PC
  manifest (the release leaves some out) are dropped and counted.
- ``folder``: any folder of wav / flac files with side-by-side ``.txt`` transcripts (:func:`cuts_from_folder`).
- ``toy``: the embedded espeak-ng corpus (:mod:`unitok.modalities.speech.toy`).

Training data reads these manifests (or a Shar directory made by ``shar``) through
:mod:`unitok.modalities.speech.loader`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CORPORA = ("libritts", "librispeech", "librispeech_pc", "folder", "toy")
AUDIO_EXTENSIONS = (".wav", ".flac")
# part folders of each corpus and the transcript files that mark a real part folder
_LAYOUTS = {
    "librispeech": ("*.trans.txt", "<speaker>/<chapter>/<speaker>-<chapter>.trans.txt next to the .flac files"),
    "libritts": ("*.trans.tsv", "<speaker>/<chapter>/*.trans.tsv and *.book.tsv next to the .wav files"),
}


# ------------------------------------------------------------------------------------------------ manifests I/O
def make_cut(recording, supervisions: Sequence = ()):
    """A MonoCut spanning ``recording`` (channel 0) with ``supervisions``; its id is the recording id."""
    from lhotse import MonoCut

    return MonoCut(recording.id, start=0.0, duration=recording.duration, channel=0, recording=recording,
                   supervisions=list(supervisions))  # fmt: skip


def save_cuts(cuts: Iterable, path: str | os.PathLike) -> Path:
    """Write cuts as a ``.jsonl.gz`` manifest that lhotse reads; deterministic bytes (gzip mtime 0), atomic."""
    from unitok.engine.checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            for cut in cuts:
                f.write((json.dumps(cut.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))

    return atomic_write(path, write)


def load_mono(cut, sample_rate: int | None = None, max_seconds: float | None = None):
    """The (T,) float32 mono waveform of a cut; errors of unreadable audio propagate.

    Args:
        cut: a lhotse cut.
        sample_rate: resample to this rate (lhotse ``cut.resample``) when it differs (None: as stored).
        max_seconds: truncate a longer cut to this length, after resampling (None: the whole cut).

    Returns:
        The audio with its channels averaged.
    """
    import torch

    if sample_rate is not None and cut.sampling_rate != sample_rate:
        cut = cut.resample(sample_rate)
    if max_seconds is not None and cut.duration > max_seconds:
        cut = cut.truncate(duration=max_seconds)
    audio = torch.from_numpy(cut.load_audio()).float()
    return audio.reshape(-1, audio.shape[-1]).mean(0)


def load_cuts(paths: str | os.PathLike | Sequence[str | os.PathLike]):
    """A lazy CutSet over one or more ``.jsonl`` / ``.jsonl.gz`` manifests (in the given order)."""
    from lhotse import CutSet

    paths = [Path(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    if not paths:
        raise ValueError("no cut manifest given")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"cut manifest {p} does not exist")
        if not p.name.endswith((".jsonl", ".jsonl.gz")):
            raise ValueError(f"cut manifest {p} is not a .jsonl or .jsonl.gz file")
    return CutSet.from_jsonl_lazy(paths[0]) if len(paths) == 1 else CutSet.from_files(paths, shuffle_iters=False)


def _summary(name: str, written: dict[str, Path]) -> str:
    from lhotse import CutSet

    lines = [f"{name}: {len(written)} split(s)"]
    for split, path in written.items():
        durations = [c.duration for c in CutSet.from_jsonl_lazy(path)]
        lines.append(f"  {split}: {len(durations)} cuts, {sum(durations) / 3600:.2f} h -> {path}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ corpora
def _corpus_parts(name: str, root: Path, parts: str | Sequence[str]) -> list[str]:
    """The part folders of ``root`` to prepare, or an error that says what ``root`` should look like."""
    from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH
    from lhotse.recipes.libritts import LIBRITTS

    known = {"libritts": LIBRITTS, "librispeech": LIBRISPEECH + MINI_LIBRISPEECH}[name]
    pattern, layout = _LAYOUTS[name]
    if not root.is_dir():
        raise FileNotFoundError(f"{name} root {root} is not a directory")
    found = [p for p in known if (root / p).is_dir() and next((root / p).rglob(pattern), None) is not None]
    if not found:
        nested = [d.name for d in root.iterdir() if d.is_dir() and d.name.lower().startswith("libri")]
        hint = f" (did you mean {root / nested[0]}?)" if nested else ""
        raise ValueError(
            f"{root} does not look like {name}: expected part folders such as {', '.join(known[:3])} holding "
            f"{layout}; found none{hint}"
        )
    if parts == "auto":
        return found
    wanted = [p.strip() for p in parts.split(",")] if isinstance(parts, str) else list(parts)
    missing = [p for p in wanted if p not in found]
    if missing:
        raise ValueError(f"{name} parts {missing} are not under {root} (found: {', '.join(found)})")
    return wanted


def _recipe_cuts(manifests: dict[str, dict[str, Any]]) -> dict[str, list]:
    """lhotse recipe output {part: {recordings, supervisions}} -> {part: cuts sorted by id}."""
    out = {}
    for part, m in manifests.items():
        by_rec: dict[str, list] = {}
        for sup in m["supervisions"]:
            by_rec.setdefault(sup.recording_id, []).append(sup)
        out[part] = sorted((make_cut(r, by_rec.get(r.id, ())) for r in m["recordings"]), key=lambda c: c.id)
    return out


def _pc_manifest(pc_dir: Path, part: str) -> Path | None:
    """The LibriSpeech-PC json manifest of ``part`` in ``pc_dir`` (``test-clean.json``, any prefix)."""
    hits = sorted(p for ext in ("json", "jsonl") for p in pc_dir.glob(f"*{part}.{ext}"))
    return hits[0] if hits else None


def librispeech_pc_cuts(root: Path, pc_dir: Path, parts: str | Sequence[str] = "auto",
                        num_jobs: int = 1) -> dict[str, list]:  # fmt: skip
    """LibriSpeech recordings (lhotse recipe) with the LibriSpeech-PC transcripts of ``pc_dir`` (see module doc)."""
    from lhotse.recipes import prepare_librispeech

    if not pc_dir.is_dir():
        raise FileNotFoundError(f"LibriSpeech-PC manifest folder {pc_dir} is not a directory")
    available = _corpus_parts("librispeech", root, "auto")
    with_pc = [p for p in available if _pc_manifest(pc_dir, p) is not None]
    if not with_pc:
        raise ValueError(
            f"no LibriSpeech-PC manifest for the LibriSpeech parts under {root} ({', '.join(available)}) in {pc_dir}: "
            "expected the released json files, e.g. test-clean.json (unpack manifests.tar.gz of OpenSLR 145)"
        )
    parts = _corpus_parts("librispeech", root, with_pc if parts == "auto" else parts)
    cuts = _recipe_cuts(prepare_librispeech(root, dataset_parts=parts, num_jobs=num_jobs))
    for part in parts:
        manifest = _pc_manifest(pc_dir, part)
        if manifest is None:
            raise ValueError(f"no LibriSpeech-PC manifest for {part} in {pc_dir} (expected {part}.json)")
        texts = {}
        with open(manifest, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        entry = json.loads(line)
                        texts[Path(entry["audio_filepath"]).stem] = entry["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{manifest}:{n} is not a LibriSpeech-PC line with audio_filepath and "
                                         f"text ({e})") from None  # fmt: skip
        kept = []
        for cut in cuts[part]:
            if cut.id in texts:
                sup = cut.supervisions[0]
                sup.custom = {**(sup.custom or {}), "text_norm": sup.text}
                sup.text = texts[cut.id]
                kept.append(cut)
        if not kept:
            raise ValueError(f"none of the {len(texts)} entries of {manifest} match a recording of {root / part}")
        logger.info("librispeech_pc %s: %d cuts with PC text; %d LibriSpeech cuts without; %d PC entries without "
                    "audio", part, len(kept), len(cuts[part]) - len(kept), len(texts) - len(kept))  # fmt: skip
        cuts[part] = kept
    return cuts


def _read_speakers(path: Path) -> dict[str, str]:
    """``speakers.tsv``: ``<file stem or relative path without extension>\\t<speaker>`` per line."""
    table = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{n}: expected '<file>\\t<speaker>', got {line!r}")
            table[fields[0].strip()] = fields[1].strip()
    return table


def cuts_from_folder(folder: str | os.PathLike, speakers: str | os.PathLike = "auto", language: str | None = None,
                     require_text: bool = True, progress: bool = True,
                     transcript_suffixes: Sequence[str] = (".txt",)) -> list:  # fmt: skip
    """Cuts of every wav / flac file under ``folder`` (recursive) with the transcript of its side-by-side ``.txt``.

    Args:
        folder: the folder.
        speakers: ``"auto"`` (``folder/speakers.tsv`` if present, else the parent folder's name for files in
            subfolders), ``"parent"``, ``"none"``, or the path of a tsv (``<stem or relative path>\\t<speaker>``).
        language: recorded on every supervision.
        require_text: skip (and count) files without a transcript; else their text is "".
        progress: show a progress bar.
        transcript_suffixes: the transcript is the first existing ``<file stem><suffix>`` beside the audio, e.g.
            ``(".txt", ".normalized.txt", ".lab")``.

    Returns:
        Cuts sorted by id; the id is the path relative to ``folder`` without extension, ``/`` replaced by ``_``.
    """
    from lhotse import Recording, SupervisionSegment
    from tqdm.auto import tqdm

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"{root} holds no {' / '.join(AUDIO_EXTENSIONS)} files")
    table = None
    if speakers not in ("auto", "parent", "none"):
        table = _read_speakers(Path(speakers))
    elif speakers == "auto" and (root / "speakers.tsv").is_file():
        table = _read_speakers(root / "speakers.tsv")
    cuts, seen, skipped = [], {}, {"no_text": 0, "unreadable": 0}
    for path in tqdm(files, desc=f"scan {root.name}", unit="file", disable=not progress):
        rel = path.relative_to(root).with_suffix("")
        cut_id = rel.as_posix().replace("/", "_")
        if cut_id in seen:
            raise ValueError(f"{path} and {seen[cut_id]} map to the same cut id {cut_id!r}")
        seen[cut_id] = path
        txt = next((t for suffix in transcript_suffixes if (t := path.with_suffix(suffix)).is_file()), None)
        if txt is None and require_text:
            skipped["no_text"] += 1
            continue
        text = " ".join(txt.read_text(encoding="utf-8").split()) if txt is not None else ""
        try:
            rec = Recording.from_file(path, recording_id=cut_id)
        except Exception as e:  # a corrupt file in a large folder: skip and count
            logger.warning("skipping unreadable audio %s: %s", path, e)
            skipped["unreadable"] += 1
            continue
        if table is not None:
            speaker = table.get(rel.as_posix(), table.get(path.stem))
        elif speakers == "none" or (speakers == "auto" and rel.parent == Path(".")):
            speaker = None
        else:
            speaker = path.parent.name
        sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=rec.duration, channel=0,
                                 text=text, speaker=speaker, language=language)  # fmt: skip
        cuts.append(make_cut(rec, [sup]))
    if any(skipped.values()):
        logger.warning("%s: skipped %d files without a .txt transcript and %d unreadable files", root,
                       skipped["no_text"], skipped["unreadable"])  # fmt: skip
    if not cuts:
        raise ValueError(f"no usable audio in {root}: {skipped['no_text']} files lack a .txt transcript, "
                         f"{skipped['unreadable']} are unreadable")  # fmt: skip
    return cuts


def prepare_corpus(name: str, root: str | os.PathLike | None, out_dir: str | os.PathLike,
                   parts: str | Sequence[str] = "auto", num_jobs: int = 1,
                   pc_manifests: str | os.PathLike | None = None, **kwargs: Any) -> dict[str, Path]:  # fmt: skip
    """Write ``out_dir/cuts_<split>.jsonl.gz`` for a local corpus.

    Args:
        name: one of :data:`CORPORA`.
        root: the corpus folder (LibriSpeech / LibriTTS: the folder holding the part folders; ``folder``: the
            audio folder; ``toy``: unused).
        out_dir: where the manifests go.
        parts: corpus parts, ``"auto"`` = all found (comma-separated string or list).
        num_jobs: parallel readers in lhotse's recipes.
        pc_manifests: ``librispeech_pc``: folder of the LibriSpeech-PC json files (default ``root``).
        kwargs: ``folder``: arguments of :func:`cuts_from_folder` (split ``"all"``); ``toy``: of
            :func:`~unitok.modalities.speech.toy.write_toy_corpus` (writes its wavs into ``out_dir`` too).

    Returns:
        {split: manifest path}.
    """
    out = Path(out_dir)
    if name == "toy":
        from unitok.modalities.speech.toy import write_toy_corpus

        return write_toy_corpus(out, **kwargs)
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})")
    root = Path(root)
    if name == "folder":
        cuts = {"all": cuts_from_folder(root, **kwargs)}
    elif name == "librispeech_pc":
        cuts = librispeech_pc_cuts(root, Path(pc_manifests) if pc_manifests else root, parts, num_jobs)
    else:
        from lhotse.recipes import prepare_librispeech, prepare_libritts

        recipe = prepare_librispeech if name == "librispeech" else prepare_libritts
        found = _corpus_parts(name, root, parts)
        cuts = _recipe_cuts(recipe(root, dataset_parts=found, num_jobs=num_jobs))
    return {split: save_cuts(c, out / f"cuts_{split}.jsonl.gz") for split, c in cuts.items()}


# ------------------------------------------------------------------------------------------------ Shar
def shar_shards(folder: str | os.PathLike) -> dict[str, list[str]]:
    """{field: sorted shard paths} of a Shar directory (``cuts.NNNNNN.jsonl.gz`` + ``recording.NNNNNN.tar``)."""
    folder = Path(folder)
    cuts = sorted(str(p) for p in folder.glob("cuts.*.jsonl.gz"))
    if not cuts:
        raise FileNotFoundError(f"{folder} is not a Shar directory (no cuts.*.jsonl.gz; write one with "
                                "`python -m unitok.modalities.speech.data shar CUTS OUT`)")  # fmt: skip
    fields = {"cuts": cuts}
    for field in sorted({p.name.split(".")[0] for p in folder.glob("*.*.tar*")}):
        fields[field] = sorted(str(p) for p in folder.glob(f"{field}.*.tar*"))
        if len(fields[field]) != len(cuts):
            raise ValueError(f"{folder}: {len(fields[field])} {field} shards for {len(cuts)} cut shards")
    return fields


def export_shar(cuts: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                shard_size: int = 1000, audio_format: str = "flac",
                num_jobs: int = 1) -> dict[str, list[str]]:  # fmt: skip
    """Write manifests' cuts with their audio as Shar (lhotse ``to_shar``): ``cuts.*.jsonl.gz`` + ``recording.*.tar``.

    Args:
        cuts: manifest path(s).
        out_dir: Shar directory (created).
        shard_size: cuts per shard; a training run needs at least ranks x workers shards.
        audio_format: ``flac`` (lossless, smaller) or ``wav``.
        num_jobs: parallel shard writers.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return load_cuts(cuts).to_shar(out_dir, fields={"recording": audio_format}, shard_size=shard_size,
                                   num_jobs=num_jobs, verbose=True)  # fmt: skip


# ------------------------------------------------------------------------------------------------ CLI
EXAMPLES = """examples:
  python -m unitok.modalities.speech.data prepare librispeech /data/LibriSpeech data/librispeech --parts test-clean
  python -m unitok.modalities.speech.data prepare libritts /data/LibriTTS data/libritts --num-jobs 8
  python -m unitok.modalities.speech.data prepare librispeech_pc /data/LibriSpeech data/ls_pc --pc-manifests /data/pc
  python -m unitok.modalities.speech.data prepare folder /data/my_wavs data/my_wavs --language English
  python -m unitok.modalities.speech.data prepare toy data/speech_toy
  python -m unitok.modalities.speech.data shar data/libritts/cuts_train-clean-100.jsonl.gz /data/shar --shard-size 1000
then train:  unitok-train recipes/debug/speech_ae_tiny.yaml data.name=speech_cuts \\
               data.params.cuts=data/libritts/cuts_train-clean-100.jsonl.gz
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unitok.modalities.speech.data", epilog=EXAMPLES,
                                description="Speech manifests (lhotse CutSets) of local corpora, and Shar export.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write OUT/cuts_<split>.jsonl.gz for a corpus", epilog=EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    prep.add_argument("corpus", choices=CORPORA)
    prep.add_argument("paths", nargs="+", metavar="ROOT OUT", help="corpus folder and output folder (toy: OUT only)")
    prep.add_argument("--parts", default="auto", help="comma-separated corpus parts (default: all found)")
    prep.add_argument("--num-jobs", type=int, default=1, help="parallel readers")
    prep.add_argument("--pc-manifests", help="librispeech_pc: folder of the LibriSpeech-PC json files")
    prep.add_argument("--speakers", default="auto", help="folder: auto | parent | none | path of a speakers tsv")
    prep.add_argument("--language", help="folder: language recorded on each supervision")
    prep.add_argument("--num-train", type=int, default=48, help="toy: training sentences")
    prep.add_argument("--num-val", type=int, default=12, help="toy: validation sentences")
    shar = sub.add_parser("shar", help="write manifests with their audio as Shar shards", epilog=EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    shar.add_argument("cuts", nargs="+", help="cut manifest(s) (.jsonl.gz)")
    shar.add_argument("out", help="Shar directory")
    shar.add_argument("--shard-size", type=int, default=1000, help="cuts per shard")
    shar.add_argument("--format", default="flac", choices=["flac", "wav"], help="audio encoding in the tars")
    shar.add_argument("--num-jobs", type=int, default=1, help="parallel shard writers")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "shar":
            fields = export_shar(args.cuts, args.out, args.shard_size, args.format, args.num_jobs)
            print(f"shar: {len(fields['cuts'])} shards of up to {args.shard_size} cuts in {args.out}")
            return
        need = 1 if args.corpus == "toy" else 2
        if len(args.paths) != need:
            raise ValueError(f"prepare {args.corpus} takes {'OUT' if need == 1 else 'ROOT OUT'}, got {args.paths}")
        root, out = (None, args.paths[0]) if need == 1 else args.paths
        extra: dict[str, Any] = {}
        if args.corpus == "folder":
            extra = {"speakers": args.speakers, "language": args.language}
        elif args.corpus == "toy":
            extra = {"num_train": args.num_train, "num_val": args.num_val}
        written = prepare_corpus(args.corpus, root, out, parts=args.parts, num_jobs=args.num_jobs,
                                 pc_manifests=args.pc_manifests, **extra)  # fmt: skip
        print(_summary(args.corpus, written))
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
