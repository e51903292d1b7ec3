"""Speech data: manifests of local corpora, the espeak-ng toy corpus, crops, bucketing, augmentation, Shar, and
exact resume of the training data through the trainer."""

import gzip
import itertools
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from unitok.engine.checkpoint import latest_checkpoint, load_checkpoint
from unitok.modalities.speech.data import cuts_from_folder, export_shar, load_cuts, main, prepare_corpus, shar_shards
from unitok.modalities.speech.loader import CutBatch, SpeechCollate, SpeechCuts
from unitok.modalities.speech.toy import SENTENCES, toy_corpus, write_toy_corpus

REPO = Path(__file__).resolve().parents[3]
RECIPE = REPO / "recipes" / "debug" / "speech_ae_tiny.yaml"
TOY = {"num_train": 8, "num_val": 2}  # 50 utterances of the five voices


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech_toy")
    return root, toy_corpus(root, progress=False, **TOY)


def _tone(path: Path, seconds: float, sr: int = 16000, freq: float = 440.0) -> None:
    t = np.arange(int(seconds * sr)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), sr)


def _epoch_ids(stream, n):
    return [[c.id for c in next(stream).cuts] for _ in range(n)]


# ------------------------------------------------------------------------------------------------ manifests
def test_folder_of_audio_with_transcripts_becomes_cuts(tmp_path):
    _tone(tmp_path / "alice" / "a1.wav", 1.5)
    (tmp_path / "alice" / "a1.txt").write_text("  Hello   there.\n")
    _tone(tmp_path / "bob" / "b1.flac", 0.75)
    (tmp_path / "bob" / "b1.txt").write_text("Good morning.")
    _tone(tmp_path / "bob" / "untranscribed.wav", 0.5)
    cuts = {c.id: c for c in cuts_from_folder(tmp_path, progress=False)}
    assert set(cuts) == {"alice_a1", "bob_b1"}  # the file without a .txt is skipped
    assert cuts["alice_a1"].supervisions[0].text == "Hello there."
    assert cuts["alice_a1"].duration == pytest.approx(1.5) and cuts["bob_b1"].duration == pytest.approx(0.75)
    assert [cuts[k].supervisions[0].speaker for k in ("alice_a1", "bob_b1")] == ["alice", "bob"]
    (tmp_path / "speakers.tsv").write_text("a1\tspk7\nbob/b1\tspk8\n")
    cuts = {c.id: c for c in cuts_from_folder(tmp_path, progress=False)}
    assert [cuts[k].supervisions[0].speaker for k in ("alice_a1", "bob_b1")] == ["spk7", "spk8"]
    written = prepare_corpus("folder", tmp_path, tmp_path / "out", progress=False)
    assert [c.id for c in load_cuts(written["all"])] == ["alice_a1", "bob_b1"]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        cuts_from_folder(tmp_path / "missing")


def _librispeech_tree(root: Path) -> Path:
    """``LibriSpeech/{test-clean,dev-clean}/<spk>/<chapter>/*.flac + <spk>-<chapter>.trans.txt``."""
    ls = root / "LibriSpeech"
    for part, spk, lines in (("test-clean", "19", ["ONE SMALL STEP", "TWO BIRDS SANG"]), ("dev-clean", "84", ["HI"])):
        chapter = ls / part / spk / "198"
        for i, _ in enumerate(lines):
            _tone(chapter / f"{spk}-198-{i:04d}.flac", 0.5 + 0.25 * i)
        (chapter / f"{spk}-198.trans.txt").write_text("".join(f"{spk}-198-{i:04d} {t}\n" for i, t in enumerate(lines)))
    return ls


def test_librispeech_layout_goes_through_lhotse_and_pc_transcripts_replace_the_text(tmp_path):
    ls = _librispeech_tree(tmp_path)
    written = prepare_corpus("librispeech", ls, tmp_path / "out")
    assert sorted(written) == ["dev-clean", "test-clean"]
    cuts = list(load_cuts(written["test-clean"]))
    assert [c.id for c in cuts] == ["19-198-0000", "19-198-0001"]
    assert [c.supervisions[0].text for c in cuts] == ["ONE SMALL STEP", "TWO BIRDS SANG"]
    assert {c.supervisions[0].speaker for c in cuts} == {"19"} and cuts[1].duration == pytest.approx(0.75)
    assert list(prepare_corpus("librispeech", ls, tmp_path / "one", parts="dev-clean")) == ["dev-clean"]
    with pytest.raises(ValueError, match=r"does not look like librispeech.*did you mean .*LibriSpeech"):
        prepare_corpus("librispeech", tmp_path, tmp_path / "bad")
    with pytest.raises(ValueError, match="not under"):
        prepare_corpus("librispeech", ls, tmp_path / "bad", parts="train-clean-100")
    pc = tmp_path / "pc"
    pc.mkdir()
    (pc / "test-clean.json").write_text(
        '{"audio_filepath": "test-clean/19/198/19-198-0001.flac", "duration": 0.75, "text": "Two birds sang."}\n'
    )
    written = prepare_corpus("librispeech_pc", ls, tmp_path / "pc_out", pc_manifests=pc)
    assert list(written) == ["test-clean"]  # dev-clean has no PC manifest
    (cut,) = load_cuts(written["test-clean"])
    assert cut.id == "19-198-0001" and cut.supervisions[0].text == "Two birds sang."
    assert cut.supervisions[0].custom["text_norm"] == "TWO BIRDS SANG"


def test_libritts_layout_goes_through_lhotse(tmp_path):
    chapter = tmp_path / "LibriTTS" / "dev-clean" / "84" / "121123"
    rows = [
        ("84_121123_000007_000001", "Maximilian.", "Maximilian."),
        ("84_121123_000008_000000", "Yes, 1.", "Yes, one."),
    ]
    for i, (utt, _, _) in enumerate(rows):
        _tone(chapter / f"{utt}.wav", 0.5 + 0.5 * i, sr=24000)
    (chapter / "84_121123.trans.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    (chapter / "84_121123.book.tsv").write_text("".join("\t".join(r) + "\t12.5\n" for r in rows))
    written = prepare_corpus("libritts", tmp_path / "LibriTTS", tmp_path / "out")
    cuts = list(load_cuts(written["dev-clean"]))
    assert [c.supervisions[0].text for c in cuts] == ["Maximilian.", "Yes, one."]
    assert cuts[1].sampling_rate == 24000 and cuts[1].duration == pytest.approx(1.0)
    assert cuts[0].supervisions[0].speaker == "84" and cuts[1].supervisions[0].custom["orig_text"] == "Yes, 1."
    batch = SpeechCollate(sample_rate=16000)(CutBatch(cuts, 0, 0))  # 24 kHz resampled on loading
    assert batch["audio_lens"].tolist() == [8000, 16000]
    with pytest.raises(ValueError, match="does not look like libritts"):
        prepare_corpus("libritts", chapter, tmp_path / "bad")


# ------------------------------------------------------------------------------------------------ toy corpus
def test_toy_corpus_is_deterministic_split_by_sentence_at_16k(tmp_path):
    voices = ["en-us+f3", "en-029+m3"]
    a = write_toy_corpus(tmp_path / "a", num_train=3, num_val=2, voices=voices, progress=False)
    b = write_toy_corpus(tmp_path / "b", num_train=3, num_val=2, voices=voices, progress=False)
    wavs = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.wav"))
    assert len(wavs) == 10
    for rel in wavs:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for split in ("train", "val"):
        text_a = gzip.decompress(a[split].read_bytes()).decode().replace(str(tmp_path / "a"), "ROOT")
        assert text_a == gzip.decompress(b[split].read_bytes()).decode().replace(str(tmp_path / "b"), "ROOT")
    train, val = (list(load_cuts(a[s])) for s in ("train", "val"))
    texts = {s: {c.supervisions[0].text for c in cuts} for s, cuts in (("train", train), ("val", val))}
    assert texts["train"] == set(SENTENCES[:3]) and texts["val"] == set(SENTENCES[-2:])
    assert not texts["train"] & texts["val"]
    assert {c.supervisions[0].speaker for c in train} == set(voices)
    for cut in train[:2]:
        audio = cut.load_audio()
        assert cut.sampling_rate == 16000 and audio.shape == (1, cut.num_samples) and 0.05 < np.abs(audio).max() <= 1
    first = {c.supervisions[0].speaker: c.load_audio() for c in train if c.supervisions[0].text == SENTENCES[0]}
    assert not np.array_equal(*first.values())  # voices sound different


def test_missing_espeak_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(ImportError, match="espeakng-loader"):
        write_toy_corpus(tmp_path, num_train=1, num_val=0, progress=False)


# ------------------------------------------------------------------------------------------------ batches
def test_bucketing_respects_max_duration_and_covers_the_epoch_once(toy):
    _, manifests = toy
    all_ids = sorted(c.id for c in load_cuts(manifests["train"]))
    ds = SpeechCuts(manifests["train"], max_duration=6.0, num_buckets=3)
    stream = ds.stream(0, 1, seed=1)
    epoch = []
    while True:
        item = next(stream)
        if item.epoch > 0:
            break
        assert sum(c.duration for c in item.cuts) <= 6.0
        epoch += [c.id for c in item.cuts]
    assert sorted(epoch) == all_ids  # every cut once per epoch
    halves = [{i for b in _epoch_ids(ds.stream(c, 2, seed=1), 4) for i in b} for c in (0, 1)]
    assert halves[0] and halves[1] and not halves[0] & halves[1]  # consumers read disjoint cuts


def test_crops_are_fixed_length_recorded_and_replay_per_seed_epoch_cut(toy):
    _, manifests = toy
    cuts = list(load_cuts(manifests["train"]))[:4]
    collate = SpeechCollate(crop_seconds=1.0)
    batch = collate(CutBatch(cuts, seed=3, epoch=0))
    assert batch["audio"].shape == (4, 16000) and batch["audio_lens"].tolist() == [16000] * 4
    assert batch["cut_id"] == [c.id for c in cuts] and batch["text"][0] == cuts[0].supervisions[0].text
    again = collate(CutBatch(cuts[::-1], seed=3, epoch=0))  # another batch composition, same crops
    assert torch.equal(again["audio"].flip(0), batch["audio"])
    other_epoch = collate(CutBatch(cuts, seed=3, epoch=1))
    assert not torch.equal(other_epoch["audio"], batch["audio"])
    long = SpeechCollate(crop_seconds=4.0)(CutBatch(cuts, seed=3, epoch=0))  # clips of ~2-3 s: padded
    lens = long["audio_lens"]
    assert long["audio"].shape == (4, 64000) and bool((lens < 64000).all())
    assert lens.tolist() == [c.num_samples for c in cuts]
    assert all(bool((long["audio"][i, n:] == 0).all()) for i, n in enumerate(lens.tolist()))


def test_unreadable_audio_is_skipped_and_counted(toy, tmp_path):
    from lhotse.utils import fastcopy

    _, manifests = toy
    cuts = list(load_cuts(manifests["train"]))[:3]
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    source = fastcopy(cuts[1].recording.sources[0], source=str(tmp_path / "broken.wav"))
    cuts[1] = fastcopy(cuts[1], recording=fastcopy(cuts[1].recording, sources=[source]))
    collate = SpeechCollate()
    batch = collate(CutBatch(cuts, 0, 0))
    assert batch["cut_id"] == [cuts[0].id, cuts[2].id] and collate.skipped == 1
    with pytest.raises(RuntimeError, match="no cut of a batch could be loaded"):
        collate(CutBatch(cuts[1:2], 0, 0))


def test_augmentations_apply_and_replay(toy):
    _, manifests = toy
    cuts = list(load_cuts(manifests["train"]))[:3]
    plain = SpeechCollate()(CutBatch(cuts, 0, 0))
    slow = SpeechCollate(augment=[{"name": "speed", "p": 1.0, "factors": [0.8]}])
    out = slow(CutBatch(cuts, 0, 0))
    ratio = out["audio_lens"].double() / plain["audio_lens"].double()
    assert torch.allclose(ratio, torch.full_like(ratio, 1.25), atol=1e-3)
    assert out["cut_id"] == plain["cut_id"]  # ids preserved
    louder = SpeechCollate(augment=[{"name": "volume", "p": 1.0, "scale_low": 2.0, "scale_high": 2.0}])
    assert torch.allclose(louder(CutBatch(cuts, 0, 0))["audio"], 2 * plain["audio"], atol=1e-4)
    reverb = SpeechCollate(augment=[{"name": "reverb", "p": 1.0}])
    wet = reverb(CutBatch(cuts, 0, 0))["audio"]
    assert torch.equal(wet, reverb(CutBatch(cuts, 0, 0))["audio"]) and not torch.equal(wet, plain["audio"])
    with pytest.raises(ValueError, match="unknown speech augmentation 'pitch'"):
        SpeechCollate(augment=[{"name": "pitch"}])


def test_stream_position_resumes_exactly_across_epochs(toy):
    _, manifests = toy
    ds = SpeechCuts(manifests["train"], max_duration=6.0, num_buckets=3)
    for consumers in (1, 2):
        ref = _epoch_ids(ds.stream(0, consumers, seed=5), 30)  # several epochs
        got, state = [], None
        for n in (7, 11, 12):
            stream = ds.stream(0, consumers, seed=5, state=state)
            got += _epoch_ids(stream, n)
            state = pickle.loads(pickle.dumps(stream.state_dict()))
        assert got == ref, consumers
        assert state["epoch"] >= 1 and "diagnostics" in state["sampler"]
    assert ref[:5] != _epoch_ids(ds.stream(0, 1, seed=6), 5)  # the seed changes the order


def test_shar_round_trip(toy, tmp_path):
    _, manifests = toy
    cuts = {c.id: c for c in load_cuts(manifests["train"])}
    export_shar(manifests["train"], tmp_path / "shar", shard_size=12)
    fields = shar_shards(tmp_path / "shar")
    assert len(fields["cuts"]) == len(fields["recording"]) == 4
    ds = SpeechCuts(tmp_path / "shar", max_duration=6.0, num_buckets=3)
    parts = []
    for consumer in (0, 1):
        stream, ids = ds.stream(consumer, 2, seed=0), []
        while (item := next(stream)).epoch == 0:
            ids += [c.id for c in item.cuts]
        parts.append(ids)
    assert sorted(parts[0] + parts[1]) == sorted(cuts)  # consumers split the shards, together read everything
    item = next(ds.stream(0, 1, seed=0))
    wave = SpeechCollate()(item)
    for i, cut_id in enumerate(wave["cut_id"]):
        reference = torch.from_numpy(cuts[cut_id].load_audio()[0])
        assert torch.allclose(wave["audio"][i, : reference.numel()], reference, atol=1e-4)
    ref = _epoch_ids(ds.stream(1, 2, seed=2), 9)
    first = ds.stream(1, 2, seed=2)
    head = _epoch_ids(first, 4)
    assert head + _epoch_ids(ds.stream(1, 2, seed=2, state=first.state_dict()), 5) == ref
    with pytest.raises(ValueError, match="4 shards for 5 consumers"):
        ds.stream(0, 5, seed=0)


# ------------------------------------------------------------------------------------------------ trainer
def _speech_run(run_dir: Path, root: Path, *extra: str):
    from unitok.train import build_run, load_run_config

    overrides = [f"run_dir={run_dir}", f"data.params.root={root}", "data.params.num_train=8",
                 "data.params.num_val=2", "data.params.max_duration=4.0", "data.params.drop_last=true",
                 "train.steps=9", "train.ckpt_every=3", "train.progress=false", "model.overrides.encoder.depth=1",
                 "model.overrides.decoder.depth=1", *extra]  # fmt: skip
    trainer, task = build_run(load_run_config(RECIPE, overrides))
    seen = []
    forward = task.training_forward

    def recording(batch, step):
        seen.append((step, tuple(batch["cut_id"]), float(batch["audio"].sum())))
        return forward(batch, step)

    task.training_forward = recording
    return trainer, seen


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_run_resumes_to_the_same_batches_and_weights(toy, tmp_path, workers):
    root, _ = toy
    extra = [f"train.num_workers={workers}"]
    ref, ref_seen = _speech_run(tmp_path / "ref", root, *extra)
    ref.fit()
    first, seen = _speech_run(tmp_path / "stopped", root, *extra)
    first.fit(until=3)  # stops after step 3 (checkpointed), like a killed run after its last checkpoint
    assert len(seen) == 3  # with 2 workers, consumer 1 resumes in worker 0
    resumed, seen_after = _speech_run(tmp_path / "stopped", root, *extra)
    resumed.fit()
    assert seen + seen_after == ref_seen
    assert {len(ids) for _, ids, _ in ref_seen} == {4}  # max_duration 4 / 1 s crops
    # an epoch of 40 cuts in 4 buckets keeps >= 28 (drop_last): the first 5 batches are distinct cuts, also when
    # 2 workers replicate the distributed sampler
    assert len({i for _, ids, _ in ref_seen[:5] for i in ids}) == 20
    a, b = ref.export_state_dict(), resumed.export_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    data = load_checkpoint(latest_checkpoint(tmp_path / "stopped" / "checkpoints"))["data"]
    assert data["batches"] == 9 and len(data["consumers"]) == max(workers, 1)
    assert all("diagnostics" in c["stream"]["sampler"] for c in data["consumers"].values())  # lhotse's state_dict


def test_unitok_train_runs_the_speech_recipe(toy, tmp_path):
    root, _ = toy
    cmd = [sys.executable, "-m", "unitok.train", str(RECIPE), f"run_dir={tmp_path / 'run'}", f"data.params.root={root}",
           "data.params.num_train=8", "data.params.num_val=2", "train.steps=3", "train.log_every=1",
           "train.progress=false"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done: step 3" in out.stdout and (tmp_path / "run" / "model" / "config.json").is_file()
    assert "espeak-ng corpus" not in out.stderr  # the cached corpus was reused


def test_cli_prepares_a_folder_and_shows_examples(tmp_path, capsys):
    _tone(tmp_path / "in" / "spk" / "x.wav", 0.5)
    (tmp_path / "in" / "spk" / "x.txt").write_text("hello")
    main(["prepare", "folder", str(tmp_path / "in"), str(tmp_path / "out")])
    assert "all: 1 cuts" in capsys.readouterr().out
    assert (tmp_path / "out" / "cuts_all.jsonl.gz").is_file()
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2"):
        main(["prepare", "librispeech", str(tmp_path / "in"), str(tmp_path / "o2")])
    assert "does not look like librispeech" in capsys.readouterr().err


def test_registry_builders_check_params(toy):
    from unitok.registry import DATASETS

    root, manifests = toy
    dataset, collate = DATASETS.get("speech_toy")({"root": str(root), **TOY, "crop_seconds": 0.5}, split="val")
    batch = collate(next(dataset.stream(0, 1, seed=0)))
    assert batch["audio"].shape[1] == 8000 and set(batch["text"]) <= set(SENTENCES[-2:])
    with pytest.raises(ValueError, match="unknown data.params for speech_cuts"):
        DATASETS.get("speech_cuts")({"cuts": str(manifests["train"]), "batch_size": 4})
    with pytest.raises(ValueError, match="data.params.cuts"):
        DATASETS.get("speech_cuts")({})
    pattern = str(manifests["train"]).replace("cuts_train", "cuts_{split}")
    dataset, _ = DATASETS.get("speech_cuts")({"cuts": pattern}, "val")
    stream = dataset.stream(0, 1, seed=0)
    ids = {c.id for c in itertools.chain.from_iterable(next(stream).cuts for _ in range(3))}
    assert {int(i.rsplit("_", 1)[1]) for i in ids} == {58, 59}  # the validation manifest's sentences
