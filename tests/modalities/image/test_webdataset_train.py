"""Webdataset shards in the trainer: exact resume at any position, with and without workers; disjoint ranks;
corrupt samples skipped and counted; resampled shards; resuming with another number of ranks or workers; the
``webdataset`` builder's checks."""

import io
import itertools
import json
import logging
import pickle
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import unitok.modalities.image.shard_stream as stream_module
from unitok.engine.stream import StreamBatches
from unitok.modalities.image.builders import build_webdataset_dataset
from unitok.modalities.image.data import WebDatasetShards, collate_image_text
from unitok.testing import write_tar_shard
from unitok.train import build_run, load_run_config

REPO = Path(__file__).resolve().parents[3]
N_SHARDS, PER_SHARD = 6, 6


def write_img2dataset_shards(root: Path, n_shards: int = N_SHARDS, per_shard: int = PER_SHARD) -> str:
    """img2dataset layout (``{shard:05d}{i:04d}.jpg|png`` + ``.txt`` + ``.json``); shard 2 holds a corrupt image,
    shard 4 a sample without caption. Returns the brace pattern of the shards."""
    for s in range(n_shards):
        groups = []
        for i in range(per_shard):
            key, fmt = f"{s:05d}{i:04d}", ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            buf = io.BytesIO()
            Image.new("RGB", (24, 16), ((40 * s) % 256, (30 * i) % 256, 90)).save(buf, fmt[0])
            groups.append((key, {fmt[1]: buf.getvalue(), "txt": f"shard {s} sample {i}".encode(),
                                 "json": json.dumps({"key": key}).encode()}))  # fmt: skip
        if s == 2:
            groups[3] = (groups[3][0], {"jpg": b"\xff\xd8 not a jpeg", "txt": b"corrupt"})
        if s == 4:
            del groups[1][1]["txt"]
        write_tar_shard(root / f"{s:05d}.tar", groups)
    return str(root / f"{{00000..{n_shards - 1:05d}}}.tar")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster (no spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shards(tmp_path) -> str:
    (tmp_path / "shards").mkdir()
    return write_img2dataset_shards(tmp_path / "shards")


def _valid_keys(shard_paths: list[str]) -> set[str]:
    keys = set()
    for path in shard_paths:
        s = int(Path(path).stem)
        keys |= {f"{s:05d}{i:04d}" for i in range(PER_SHARD) if (s, i) not in ((2, 3), (4, 1))}
    return keys


@pytest.mark.parametrize("buffer", [0, 5])
def test_stream_resumes_exactly_at_every_position(shards, buffer):
    ds = WebDatasetShards(shards, shuffle_buffer=buffer)
    ref = [s["key"] for s in itertools.islice(ds.stream(1, 2, seed=3), 40)]  # two epochs and a bit
    first_epoch = ref[: len(_valid_keys(ds.consumer_shards(0, 1, 2, seed=3)))]
    assert set(first_epoch) == _valid_keys(ds.consumer_shards(0, 1, 2, seed=3))  # each sample once per epoch
    if buffer:
        assert first_epoch != sorted(first_epoch)
    for k in range(len(ref) + 1):
        stream = ds.stream(1, 2, seed=3)
        head = [s["key"] for s in itertools.islice(stream, k)]
        state = pickle.loads(pickle.dumps(stream.state_dict()))
        tail = [s["key"] for s in itertools.islice(ds.stream(1, 2, seed=3, state=state), len(ref) - k)]
        assert head + tail == ref, k


def test_resume_opens_no_shard_before_the_position(shards, monkeypatch):
    ds = WebDatasetShards(shards, shuffle_shards=False, shuffle_buffer=3)
    stream = ds.stream(0, 1, seed=0)
    consumed = [s["key"] for s in itertools.islice(stream, 16)]  # shards 0, 1 and most of 2 (one corrupt)
    opened = []
    original = stream_module.read_groups
    monkeypatch.setattr(stream_module, "read_groups", lambda url, rep: (opened.append(url), original(url, rep))[1])
    resumed = ds.stream(0, 1, seed=0, state=stream.state_dict())
    assert not set(consumed) & {s["key"] for s in itertools.islice(resumed, 10)}
    assert [Path(u).name for u in opened[:2]] == ["00002.tar", "00003.tar"]


def _to_tensor(im):
    import numpy as np

    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255 + torch.rand(())  # random "augment"


def test_two_ranks_read_disjoint_samples_and_share_one_checkpoint(shards):
    ds = WebDatasetShards(shards, transform=_to_tensor, shuffle_buffer=2)
    ranks = [StreamBatches(ds, collate_image_text, 2, num_workers=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    keys = [[k for b in itertools.islice(iter(r), 3) for k in b["key"]] for r in ranks]
    assert len(keys[0]) == len(keys[1]) == 6 and not set(keys[0]) & set(keys[1])
    for r, got in enumerate(keys):
        mine = [path for c in (2 * r, 2 * r + 1) for path in ds.consumer_shards(0, c, 4, seed=1)]
        assert set(got) <= _valid_keys(mine)
    merged = ranks[0].state_dict()  # without a process group each rank holds its own consumers ...
    merged["consumers"].update(ranks[1].state_dict()["consumers"])  # ... all_gather_object merges them
    again = StreamBatches(ds, collate_image_text, 2, num_workers=2, seed=1, rank=1, world_size=2)
    again.load_state_dict(merged)
    assert sorted(again.consumers) == [2, 3]
    # 2 ranks x 2 workers -> 4 x 1: the same 4 consumers, each going on exactly where it stopped
    for r in range(4):
        four = StreamBatches(ds, collate_image_text, 2, seed=1, rank=r, world_size=4)
        four.load_state_dict(merged)
        expected = itertools.islice(ds.stream(r, 4, seed=1, state=merged["consumers"][r]["stream"]), 2)
        assert next(iter(four))["key"] == [s["key"] for s in expected]
    # 2 x 2 -> 3 x 1: positions re-mapped; nothing consumed comes again
    three = [StreamBatches(ds, collate_image_text, 2, seed=1, rank=r, world_size=3) for r in range(3)]
    for r in three:
        r.load_state_dict(merged)
    later = [k for r in three for b in itertools.islice(iter(r), 2) for k in b["key"]]
    assert len(set(later)) == 12 and not set(later) & set(keys[0] + keys[1])
    assert three[2].state_dict() == {"world_size": 3, "workers": 1, "batches": 2, "consumers": three[2].consumers}


def _recipe(tmp_path: Path, shards: str, workers: int, *extra: str):
    overrides = [
        f"run_dir={tmp_path}", "data.name=webdataset", "data.params.num_samples=null", "data.params.size=32",
        f"data.params.shards={shards}", "data.params.shuffle_buffer=4", f"train.num_workers={workers}",
        "train.batch_size=6", "train.steps=6", "train.ckpt_every=3", "train.progress=false",
        "model.overrides.encoder.depth=1", "model.overrides.decoder.depth=1", *extra,
    ]  # fmt: skip
    return load_run_config(REPO / "recipes" / "debug" / "ae_tiny.yaml", overrides)


def _recording_run(cfg, until=None):
    trainer, task = build_run(cfg)
    seen, forward = [], task.training_forward

    def record(batch, step):
        seen.append((batch["text"], float(batch["image"].sum())))
        return forward(batch, step)

    task.training_forward = record
    trainer.fit(until=until)
    return trainer, seen


@pytest.mark.parametrize("workers, resampled", [(0, False), (2, False), (2, True)])
def test_trainer_resumed_between_checkpoints_sees_the_uninterrupted_batches(tmp_path, shards, workers, resampled):
    extra = f"data.params.resampled={str(resampled).lower()}"
    ref_trainer, ref = _recording_run(_recipe(tmp_path / "ref", shards, workers, extra))
    assert ref_trainer.stream.dataset.resampled == resampled
    cfg = _recipe(tmp_path / "cut", shards, workers, extra)
    _, head = _recording_run(cfg, until=4)  # checkpoints at steps 3 and 4 ...
    (tmp_path / "cut" / "checkpoints" / "step_00000004.pt").unlink()  # ... killed before step 4's was written
    resumed, tail = _recording_run(cfg)  # resumes at step 3: batch 3 (an odd worker offset) onwards
    assert head[:3] + tail == ref and len(ref) == 6
    for a, b in zip(ref_trainer.export_state_dict().values(), resumed.export_state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if workers == 0:  # 36 samples > one epoch: the corrupt image and the caption-less sample were met, and counted
        stats = ref_trainer.stream.dataset.stats
        assert stats["skipped_decode"] >= 1 and stats["skipped_no_caption"] >= 1 and stats["samples"] >= 18


def test_trainer_resumes_with_fewer_workers_without_repeating_samples(tmp_path, shards, caplog):
    cfg = _recipe(tmp_path, shards, 2, "train.batch_size=4")
    _, head = _recording_run(cfg, until=4)
    (tmp_path / "checkpoints" / "step_00000004.pt").unlink()
    with caplog.at_level(logging.WARNING):
        _, tail = _recording_run(_recipe(tmp_path, shards, 0, "train.batch_size=4"))  # 2 consumers -> 1
    assert "re-mapping 2 data consumers to 1" in caplog.text and len(tail) == 3
    texts = [t for texts, _ in head[:3] + tail for t in texts]  # 24 of the epoch's 34 samples
    assert len(set(texts)) == 24


# --------------------------------------------------------------------------------------------------- resampled


def _keys(stream, n: int) -> list[str]:
    return [s["key"] for s in itertools.islice(stream, n)]


@pytest.mark.parametrize("buffer", [0, 5])
def test_resampled_stream_is_deterministic_and_resumes_exactly(shards, buffer):
    ds = WebDatasetShards(shards, shuffle_buffer=buffer, resampled=True)
    ref = _keys(ds.stream(1, 2, seed=3), 80)  # ~16 draws: more than the 6 shards
    assert ref == _keys(WebDatasetShards(shards, shuffle_buffer=buffer, resampled=True).stream(1, 2, seed=3), 80)
    assert ref != _keys(ds.stream(0, 2, seed=3), 80) and ref != _keys(ds.stream(1, 2, seed=4), 80)
    for k in range(0, 81, 5):
        stream = ds.stream(1, 2, seed=3)
        head = _keys(stream, k)
        state = pickle.loads(pickle.dumps(stream.state_dict()))
        if k:  # the position is the draw count and the sizes of the shards from the oldest one still needed on
            low, sizes = min([*state["buffer"], state["next_id"]]), state["sizes"]
            assert state["resampled"] == 0 and state["first_id"] <= low < state["first_id"] + (sizes or [99])[0]
        assert head + _keys(ds.stream(1, 2, seed=3, state=state), 80 - k) == ref, k
    assert state["first"] > 8  # after 80 samples: the earlier draws are forgotten


def _draws(ds: WebDatasetShards, consumer: int, num_consumers: int, n: int) -> list[str]:
    """The shards drawn, from the samples (no shuffle buffer): a new draw starts where the url or key order breaks."""
    draws, prev = [], None
    for s in itertools.islice(ds.stream(consumer, num_consumers, seed=0), n):
        if prev is None or s["url"] != prev["url"] or s["key"] <= prev["key"]:
            draws.append(Path(s["url"]).name)
        prev = s
    return draws


def test_resampled_draws_cover_the_shards_with_replacement(shards, tmp_path):
    ds = WebDatasetShards(shards, resampled=True)
    a, b = _draws(ds, 0, 8, 300), _draws(ds, 7, 8, 300)  # more consumers than shards: each draws from all
    assert len(a) >= 50 and a != b and set(a) == set(b) == {Path(p).name for p in ds.shards}
    assert any(len(set(a[i : i + 6])) < 6 for i in range(0, len(a) - 6, 6))  # not epochs: repeats within 6 draws
    assert max(Counter(a).values()) > min(Counter(a).values())
    assert _keys(iter(ds), 50) == _keys(ds.stream(0, 1, seed=0), 50)  # iter(): the endless stream of consumer 0
    write_tar_shard(tmp_path / "bad.tar", [("k", {"jpg": b"not a jpeg", "txt": b"x"})])
    with pytest.raises(RuntimeError, match="no valid sample in 121 shards drawn from 1"):
        next(WebDatasetShards(tmp_path / "bad.tar", resampled=True).stream(0, 1, seed=0))


def test_resampled_positions_draw_afresh_for_another_consumer_count(shards, caplog):
    ds = WebDatasetShards(shards, shuffle_buffer=3, resampled=True)
    streams = [ds.stream(c, 2, seed=1) for c in range(2)]
    states = {c: (_keys(s, 9), s.state_dict())[1] for c, s in enumerate(streams)}
    with caplog.at_level(logging.WARNING):
        new = ds.remap_positions(states, 2, 3, seed=1)
    assert "fresh RNG (restart 1)" in caplog.text and new == ds.remap_positions(states, 2, 3, seed=1)
    fresh = [_keys(ds.stream(c, 3, seed=1, state=new[c]), 12) for c in range(3)]
    assert fresh[0] != _keys(ds.stream(0, 3, seed=1), 12)  # not a replay of the first run's draws
    assert ds.remap_positions({0: ds.stream(0, 3, seed=1, state=new[0]).state_dict()}, 3, 2, 1)[0]["resampled"] == 2
    with pytest.raises(ValueError, match="for resampled shards, this data set reads epochs"):
        WebDatasetShards(shards).stream(0, 2, seed=1, state=states[0])


# ------------------------------------------------------------------------------------- another consumer count


def _plan_keys(ds: WebDatasetShards, state, consumer: int, num_consumers: int) -> list[str]:
    """What a re-mapped consumer reads of the epochs under way: its samples until it leaves its plan."""
    stream, keys = ds.stream(consumer, num_consumers, seed=3, state=state), []
    for s in stream:
        if "plan" not in stream.state_dict():
            return keys
        keys.append(s["key"])


@pytest.mark.parametrize("buffer", [0, 4])
@pytest.mark.parametrize("new", [3, 1])
def test_another_consumer_count_reads_the_rest_of_the_epoch_once(shards, buffer, new, caplog):
    ds = WebDatasetShards(shards, shuffle_buffer=buffer)
    streams = [ds.stream(c, 2, seed=3) for c in range(2)]
    before = _keys(streams[0], 7) + _keys(streams[1], 11)  # both inside a shard (and with full buffers)
    states = {c: pickle.loads(pickle.dumps(s.state_dict())) for c, s in enumerate(streams)}
    with caplog.at_level(logging.WARNING):
        plans = ds.remap_positions(states, 2, new, seed=3)
    assert "re-mapped to" in caplog.text and "lost or repeated" in caplog.text
    assert all(plans[c]["then"] == 1 for c in range(new)) and sum(len(plans[c]["plan"]) for c in range(new)) >= 4
    after = [k for c in range(new) for k in _plan_keys(ds, plans[c], c, new)]
    assert sorted(before + after) == sorted(_valid_keys(ds.shards))  # the epoch: every sample once


def test_remapped_positions_resume_exactly_and_remap_again(shards):
    ds = WebDatasetShards(shards, shuffle_buffer=4)
    first = [ds.stream(c, 2, seed=3) for c in range(2)]
    before = _keys(first[0], 5) + _keys(first[1], 9)
    plans = ds.remap_positions({c: s.state_dict() for c, s in enumerate(first)}, 2, 3, seed=3)
    ref = _plan_keys(ds, plans[1], 1, 3)
    stream = ds.stream(1, 3, seed=3, state=plans[1])
    head = _keys(stream, 4)
    assert len(ref) > 4 and head + _plan_keys(ds, stream.state_dict(), 1, 3) == ref  # a plan resumes exactly
    mid = [ds.stream(c, 3, seed=3, state=plans[c]) for c in range(2)]  # consumer 2 has not started
    middle = _keys(mid[0], 3) + _keys(mid[1], 4)
    states = {0: mid[0].state_dict(), 1: mid[1].state_dict(), 2: plans[2]}
    assert all("plan" in state for state in states.values())
    again = ds.remap_positions(states, 3, 2, seed=3)  # 3 -> 2 while the consumers are in their plans
    after = [k for c in range(2) for k in _plan_keys(ds, again[c], c, 2)]
    assert sorted(before + middle + after) == sorted(_valid_keys(ds.shards))


def test_remap_when_consumers_are_in_different_epochs(shards):
    ds = WebDatasetShards(shards, shuffle_buffer=3)
    streams = [ds.stream(c, 2, seed=3) for c in range(2)]
    share = len(_valid_keys(ds.consumer_shards(0, 0, 2, seed=3)))
    before = _keys(streams[0], share + 5) + _keys(streams[1], 4)  # consumer 0 is 5 samples into epoch 1
    states = {c: s.state_dict() for c, s in enumerate(streams)}
    assert (states[0]["epoch"], states[1]["epoch"]) == (1, 0)
    plans = ds.remap_positions(states, 2, 3, seed=3)
    assert {p[0] for c in range(3) for p in plans[c]["plan"]} == {0, 1} and plans[0]["then"] == 2
    after = [k for c in range(3) for k in _plan_keys(ds, plans[c], c, 3)]
    assert Counter(before + after) == Counter({k: 2 for k in _valid_keys(ds.shards)})  # epochs 0 and 1, once each


def test_webdataset_builder_names_bad_params(shards, tmp_path):
    ds, collate = build_webdataset_dataset({"shards": str(Path(shards).parent), "size": 32, "root": None})
    assert len(ds.shards) == N_SHARDS and ds.shuffle_buffer == 5000 and collate is collate_image_text
    assert not ds.resampled and build_webdataset_dataset({"shards": shards, "resampled": True})[0].resampled
    with pytest.raises(ValueError, match="data.params.shards"):
        build_webdataset_dataset({"size": 32})
    with pytest.raises(ValueError, match=r"\['shard_pattern'\]"):
        build_webdataset_dataset({"shards": shards, "shard_pattern": "x"})
    with pytest.raises(FileNotFoundError, match="00007.tar"):
        build_webdataset_dataset({"shards": shards.replace("00005", "00007")})
    with pytest.raises(ValueError, match="6 shards for 8 data consumers"):
        ds.stream(0, 8, seed=0)
    stream = ds.stream(0, 2, seed=0)
    next(stream)
    fewer = WebDatasetShards(ds.shards[:4])
    with pytest.raises(ValueError, match="for 6 shards, this data set has 4"):
        fewer.stream(0, 2, seed=0, state=stream.state_dict())
