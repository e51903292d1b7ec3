import io
import itertools
import json
import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from unitok.modalities.image.data import (
    ImageCaptionFolder,
    ImageDecodeError,
    WebDatasetShards,
    collate_image_text,
    decode_image,
    expand_braces,
    resolve_shards,
)
from unitok.testing import write_tar_shard


def encode(color=(200, 30, 30), fmt="JPEG", size=(24, 16), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


def good(key: str, fmt="JPEG", ext="jpg") -> tuple[str, dict[str, bytes]]:
    return key, {ext: encode(fmt=fmt), "txt": f"caption {key}".encode(), "json": json.dumps({"key": key}).encode()}


def to_tensor(im):
    return torch.from_numpy(__import__("numpy").asarray(im).copy()).permute(2, 0, 1).float() / 255


# --------------------------------------------------------------------------------------------------- decoding


def test_decode_image_converts_to_rgb_and_raises_a_clear_error():
    assert decode_image(encode(fmt="PNG", mode="L", color=7)).mode == "RGB"
    assert decode_image(encode(fmt="PNG", mode="RGBA", color=(1, 2, 3, 4))).getpixel((0, 0)) == (1, 2, 3)
    assert decode_image(encode(fmt="WEBP")).size == (24, 16)
    data = encode()
    for bad in (b"not an image", data[: len(data) // 2], b""):
        with pytest.raises(ImageDecodeError, match="cannot decode"):
            decode_image(bad)
    assert issubclass(ImageDecodeError, ValueError)


def test_brace_expansion_and_shard_resolution(tmp_path):
    assert expand_braces("s-{0008..0011}.tar") == ["s-0008.tar", "s-0009.tar", "s-0010.tar", "s-0011.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert expand_braces("{3..1}") == ["3", "2", "1"] and expand_braces("x{y}z") == ["x{y}z"]
    for i in range(3):
        write_tar_shard(tmp_path / f"shard-{i:05d}.tar", [good(f"{i}")])
    names = [str(tmp_path / f"shard-{i:05d}.tar") for i in range(3)]
    assert resolve_shards(str(tmp_path / "shard-{00000..00002}.tar")) == names
    assert resolve_shards(str(tmp_path / "shard-*.tar")) == names
    assert resolve_shards([tmp_path / "shard-00001.tar"]) == names[1:2]
    assert resolve_shards(f"{names[2]}::{names[0]}") == [names[2], names[0]]
    with pytest.raises(FileNotFoundError, match="1 of 4"):
        resolve_shards(str(tmp_path / "shard-{00000..00003}.tar"))
    with pytest.raises(ValueError, match="matches no file"):
        resolve_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="no shards"):
        resolve_shards([])


# --------------------------------------------------------------------------------------------------- shards


@pytest.fixture
def shards(tmp_path):
    """shard 0: 3 good (jpg, png, webp) + corrupt image + missing caption + caption-only; shard 1: 2 good;
    shard 2: 2 good then a third sample whose image is cut off (truncated shard)."""
    s0 = [good("a0"), good("a1", "PNG", "png"), good("a2", "WEBP", "webp")]
    s0 += [("a3", {"jpg": b"\xff\xd8 garbage", "txt": b"corrupt"}), ("a4", {"jpg": encode()}), ("a5", {"txt": b"x"})]
    write_tar_shard(tmp_path / "s-0.tar", s0)
    write_tar_shard(tmp_path / "s-1.tar", [good("b0"), good("b1")])
    offsets = write_tar_shard(tmp_path / "s-2.tar", [good("c0"), good("c1"), good("c2")])
    cut = dict(offsets)["c2.jpg"] + 100
    data = (tmp_path / "s-2.tar").read_bytes()
    (tmp_path / "s-2.tar").write_bytes(data[:cut])
    return str(tmp_path / "s-{0..2}.tar")


def test_reads_good_samples_and_counts_skips(shards, caplog):
    ds = WebDatasetShards(shards, shuffle_shards=False)
    with caplog.at_level(logging.INFO, logger="unitok.modalities.image"):
        samples = list(ds)
    assert [s["key"] for s in samples] == ["a0", "a1", "a2", "b0", "b1", "c0", "c1"]
    s = samples[1]
    assert s["text"] == "caption a1" and s["json"] == {"key": "a1"} and s["url"].endswith("s-0.tar")
    assert isinstance(s["image"], Image.Image) and s["image"].mode == "RGB"
    assert ds.stats["samples"] == 7 and ds.stats["skipped"] == 4
    assert ds.stats["skipped_decode"] == 1 and ds.stats["skipped_no_caption"] == 1
    assert ds.stats["skipped_no_image"] == 1 and ds.stats["skipped_truncated"] == 1
    assert ds.stats["shards"] == 3 and ds.stats["shard_errors"] == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "3 samples, 3 skipped" in lines[0] and "truncated" in lines[2]


@pytest.mark.parametrize("where", ["inside_image", "inside_caption", "after_caption", "inside_header", "one_block"])
def test_truncated_last_member_never_crashes(tmp_path, where):
    path = tmp_path / "t.tar"
    offsets = dict(write_tar_shard(path, [good("k0"), good("k1")]))
    data = path.read_bytes()
    cut = {
        "inside_image": offsets["k1.jpg"] + 50,
        "inside_caption": offsets["k1.txt"] + 3,
        "after_caption": offsets["k1.txt"] + 15,  # k1.txt (10 bytes) read fully, cut in its padding
        "inside_header": offsets["k1.jpg"] - 200,
        "one_block": 100,
    }[where]
    path.write_bytes(data[:cut])
    ds = WebDatasetShards([path], require_caption=True)
    keys = [s["key"] for s in ds]
    expected = {"inside_image": ["k0"], "inside_caption": ["k0"], "after_caption": ["k0", "k1"]}
    assert keys == expected.get(where, ["k0"] if where == "inside_header" else [])
    assert ds.stats["samples"] == len(keys) and ds.stats["shards"] == 1
    assert ds.stats["skipped"] == (1 if where in ("inside_image", "inside_caption") else 0)


def test_rank_and_worker_split_is_disjoint_complete_and_deterministic(tmp_path):
    for i in range(8):
        write_tar_shard(tmp_path / f"d-{i}.tar", [good(f"{i}-0"), good(f"{i}-1")])
    ds = WebDatasetShards(str(tmp_path / "d-{0..7}.tar"), seed=5)
    parts = [
        [s["key"] for s in ds.iterate(rank=r, world_size=2, worker_id=w, num_workers=2)] for r in (0, 1) for w in (0, 1)
    ]
    flat = [k for p in parts for k in p]
    assert sorted(flat) == sorted(f"{i}-{j}" for i in range(8) for j in (0, 1)) and len(set(flat)) == 16
    assert all(len(p) == 4 for p in parts)
    again = WebDatasetShards(str(tmp_path / "d-{0..7}.tar"), seed=5)
    assert [s["key"] for s in again.iterate(1, 2, 0, 2)] == parts[2]
    assert ds.shard_order(0) != ds.shard_order(1) and sorted(ds.shard_order(1)) == sorted(ds.shards)
    assert ds.shard_order(0) != WebDatasetShards(ds.shards, seed=6).shard_order(0)
    ds.set_epoch(1)
    epoch1 = [s["key"] for s in ds.iterate(1, 2, 0, 2)]
    assert epoch1 == [f"{p.rsplit('-', 1)[1][:-4]}-{j}" for p in ds.shard_order(1)[2::4] for j in (0, 1)]
    # explicit rank / world_size in the constructor are used by iter() (no process group, no workers here)
    ranked = WebDatasetShards(ds.shards, seed=5, rank=1, world_size=2)
    assert ranked.shards_for(0, 1, 2) == ranked.shard_order(0)[1::2]
    assert [s["key"] for s in ranked] == [
        f"{p.rsplit('-', 1)[1][:-4]}-{j}" for p in ds.shard_order(0)[1::2] for j in (0, 1)
    ]
    with pytest.raises(ValueError, match="consumer"):
        ds.shards_for(0, rank=2, world_size=2)


def test_real_dataloader_workers_read_each_sample_once(tmp_path):
    for i in range(4):
        write_tar_shard(tmp_path / f"w-{i}.tar", [good(f"{i}-{j}") for j in range(3)])
    ds = WebDatasetShards(str(tmp_path / "w-*.tar"), transform=to_tensor)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_image_text)
    batches = list(loader)
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == sorted(f"{i}-{j}" for i in range(4) for j in range(3))
    assert batches[0]["image"].shape == (4, 3, 16, 24) and isinstance(batches[0]["text"], list)


def test_shuffle_buffer_repeat_and_too_few_shards(tmp_path, caplog):
    write_tar_shard(tmp_path / "r-0.tar", [good(f"{j}") for j in range(10)])
    plain = [s["key"] for s in WebDatasetShards([tmp_path / "r-0.tar"])]
    shuffled = [s["key"] for s in WebDatasetShards([tmp_path / "r-0.tar"], shuffle_buffer=4, seed=1)]
    again = [s["key"] for s in WebDatasetShards([tmp_path / "r-0.tar"], shuffle_buffer=4, seed=1)]
    assert sorted(shuffled) == plain and shuffled != plain and shuffled == again
    endless = WebDatasetShards([tmp_path / "r-0.tar"], repeat=True)
    assert [s["key"] for s in itertools.islice(endless, 25)] == (plain * 3)[:25]
    with caplog.at_level(logging.WARNING):
        assert list(endless.iterate(rank=1, world_size=2)) == []
    assert "gets no shard" in caplog.text


# --------------------------------------------------------------------------------------------------- folder


@pytest.fixture
def folder(tmp_path):
    def put(rel, data, caption=None):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption)

    put("cats/a.jpg", encode(color=(10, 10, 10)), "a cat")
    put("cats/deep/b.png", encode(fmt="PNG", color=(20, 20, 20)), "another cat\n")
    put("dogs/bad.jpg", b"corrupt bytes", "broken")
    put("dogs/c.jpg", encode(color=(30, 30, 30)), "a dog")
    put("dogs/nocap.jpg", encode())
    put("top.jpg", encode(), "no class")
    return tmp_path


def test_folder_with_labels_skips_and_counts_corrupt_images(folder):
    ds = ImageCaptionFolder(folder, labels=True, transform=to_tensor)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 4
    assert ds.stats["no_caption"] == 1 and ds.stats["unlabelled"] == 1
    got = [ds[i] for i in range(len(ds))]
    assert [g["text"] for g in got] == ["a cat", "another cat", "a dog", "a dog"]  # bad.jpg -> next (c.jpg)
    assert [g["label"] for g in got] == [0, 0, 1, 1]
    assert ds.stats["skipped"] == 1 and ds.stats["samples"] == 4
    assert ds[2]["path"].endswith("c.jpg") and ds.stats["skipped"] == 2  # known-bad index still counted
    assert ds.stats["skipped_decode"] == 1  # ... but not decoded again
    batch = collate_image_text(got)
    assert batch["image"].shape == (4, 3, 16, 24) and batch["label"].tolist() == [0, 0, 1, 1]


def test_folder_without_labels_and_optional_captions(folder, tmp_path_factory):
    ds = ImageCaptionFolder(folder, require_caption=False)
    names = [p.rsplit("/", 1)[-1] for p, _, _ in ds.items]
    assert names == ["top.jpg", "a.jpg", "b.png", "bad.jpg", "c.jpg", "nocap.jpg"]
    assert ds[5]["text"] == "" and "label" not in ds[0] and isinstance(ds[0]["image"], Image.Image)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ValueError, match="no captioned images"):
        ImageCaptionFolder(empty)
    (empty / "x.jpg").write_bytes(b"junk")
    (empty / "x.txt").write_text("junk")
    with pytest.raises(RuntimeError, match="could be read"):
        ImageCaptionFolder(empty)[0]


def test_collate_image_text_rules():
    samples = [
        {"image": torch.zeros(3, 4, 4), "text": "a", "label": 1, "json": None},
        {"image": torch.ones(3, 4, 4), "text": "b", "label": 2},
    ]
    batch = collate_image_text(samples)
    assert batch["image"].shape == (2, 3, 4, 4) and batch["text"] == ["a", "b"]
    assert batch["label"].dtype == torch.long and batch["json"] == [None, None]
    with pytest.raises(TypeError, match="transform"):
        collate_image_text([{"image": Image.new("RGB", (4, 4)), "text": "a"}])
    with pytest.raises(ValueError, match="different shapes"):
        collate_image_text([{"image": torch.zeros(3, 4, 4), "text": "a"}, {"image": torch.zeros(3, 5, 4), "text": "b"}])
    with pytest.raises(ValueError, match="'text'"):
        collate_image_text([{"image": torch.zeros(3, 4, 4), "text": "a"}, {"image": torch.zeros(3, 4, 4)}])
