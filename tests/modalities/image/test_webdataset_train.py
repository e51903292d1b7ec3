"""Webdataset shards in the trainer: exact resume at any position, with and without workers; disjoint ranks;
corrupt samples skipped and counted; the ``webdataset`` builder's checks."""

import io
import itertools
import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

import unitok.modalities.image.data as data_module
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
    original = data_module.read_groups
    monkeypatch.setattr(data_module, "read_groups", lambda url, report: (opened.append(url), original(url, report))[1])
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
    with pytest.raises(ValueError, match="world_size 2 x 2 workers"):
        StreamBatches(ds, collate_image_text, 2, num_workers=3, seed=1, rank=1, world_size=2).load_state_dict(merged)


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


@pytest.mark.parametrize("workers", [0, 2])
def test_trainer_resumed_between_checkpoints_sees_the_uninterrupted_batches(tmp_path, shards, workers):
    ref_trainer, ref = _recording_run(_recipe(tmp_path / "ref", shards, workers))
    cfg = _recipe(tmp_path / "cut", shards, workers)
    _, head = _recording_run(cfg, until=4)  # checkpoints at steps 3 and 4 ...
    (tmp_path / "cut" / "checkpoints" / "step_00000004.pt").unlink()  # ... killed before step 4's was written
    resumed, tail = _recording_run(cfg)  # resumes at step 3: batch 3 (an odd worker offset) onwards
    assert head[:3] + tail == ref and len(ref) == 6
    for a, b in zip(ref_trainer.export_state_dict().values(), resumed.export_state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if workers == 0:  # 36 samples > one epoch: the corrupt image and the caption-less sample were met, and counted
        stats = ref_trainer.stream.dataset.stats
        assert stats["skipped_decode"] >= 1 and stats["skipped_no_caption"] >= 1 and stats["samples"] >= 18


def test_webdataset_builder_names_bad_params(shards, tmp_path):
    ds, collate = build_webdataset_dataset({"shards": str(Path(shards).parent), "size": 32, "root": None})
    assert len(ds.shards) == N_SHARDS and ds.shuffle_buffer == 5000 and collate is collate_image_text
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
