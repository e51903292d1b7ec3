import collections
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from unitok.modalities.image.adapter import ImageAdapter
from unitok.modalities.image.toy import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    ToyShapes,
    sample_images,
)


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha1(arr.tobytes()).hexdigest()


def test_default_class_set_is_24_and_configurable():
    ds = ToyShapes("train", num_samples=10)
    assert ds.num_classes == 24 == len(set(ds.classnames))
    assert ds.classnames[0] == "red circle"
    assert ToyShapes(colors=tuple(COLORS), num_samples=10).num_classes == 48
    assert ToyShapes(shapes=("circle", "square"), colors=("red",), num_samples=10).classnames == [
        "red circle",
        "red square",
    ]
    with pytest.raises(ValueError, match="magenta"):
        ToyShapes(colors=("magenta",))
    with pytest.raises(ValueError, match="split"):
        ToyShapes("test")
    assert [t.format("red circle") for t in ds.templates][0] == "a photo of a red circle."
    assert all("{}" in t for t in ds.templates)


def test_deterministic_and_independent_of_length_cache_and_order():
    a = ToyShapes("train", size=32, num_samples=50, seed=3, transform=None)
    b = ToyShapes("train", size=32, num_samples=500, seed=3, transform=None, cache=False)
    for i in (7, 0, 49, 7):  # repeated access hits a's cache
        sa, sb = a[i], b[i]
        assert sa["text"] == sb["text"] and sa["label"] == sb["label"]
        assert np.array_equal(np.asarray(sa["image"]), np.asarray(sb["image"]))
    c = ToyShapes("train", size=32, num_samples=50, seed=4)
    assert [a[i]["text"] for i in range(20)] != [c[i]["text"] for i in range(20)]


def test_val_split_is_fixed_and_disjoint_from_train():
    v0 = ToyShapes("val", size=32, num_samples=100, seed=0)
    v9 = ToyShapes("val", size=32, num_samples=100, seed=9)
    assert all(_digest(v0.pixels(i)) == _digest(v9.pixels(i)) for i in range(100))
    train = ToyShapes("train", size=32, num_samples=400, seed=0)
    train_digests = {_digest(train.pixels(i)) for i in range(400)}
    assert not train_digests & {_digest(v0.pixels(i)) for i in range(100)}
    assert len(ToyShapes("val")) == 1200 and len(ToyShapes("train")) == 10_000
    nuisance = lambda ds, n: {
        (s.size, s.position, s.texture, s.background) for s in (ds.sample(i).spec for i in range(n))
    }  # noqa: E731
    assert not nuisance(v0, 100) & nuisance(train, 400)  # held-out combinations, not just different draws


def test_labels_captions_and_pixels_agree():
    ds = ToyShapes("train", size=64, num_samples=240, seed=1, transform=None)
    assert collections.Counter(ds.labels) == dict.fromkeys(range(24), 10)  # balanced
    attrs = collections.defaultdict(set)
    for i in range(0, 240, 3):
        s = ds[i]
        color, shape = ds.classnames[s["label"]].split()
        words = s["text"]
        assert f" {shape} " in words and f" {color} " in words and s["label"] == ds.labels[i]
        spec = ds.sample(i).spec
        for name, table in (("size", SIZES), ("position", POSITIONS), ("background", BACKGROUNDS)):
            assert getattr(spec, name) in table and getattr(spec, name) in words
            attrs[name].add(getattr(spec, name))
        attrs["texture"].add(spec.texture)
        # the shape is really drawn in the class colour (solid part of any texture)
        px = np.asarray(s["image"]).reshape(-1, 3).astype(int)
        close = (np.abs(px - np.array(COLORS[color])).sum(1) < 10).sum()
        assert close >= 20, (i, s["text"], close)
    # non-class attributes vary freely
    assert attrs["size"] == set(SIZES) and attrs["position"] == set(POSITIONS)
    assert attrs["texture"] == set(TEXTURES) and attrs["background"] == set(BACKGROUNDS)
    assert {ds.sample(i).spec.shape for i in range(24)} == set(SHAPES)


def test_transform_modes():
    ds = ToyShapes("val", size=32, num_samples=5)
    x = ds[2]["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    pixels = torch.from_numpy(ds.pixels(2).copy()).permute(2, 0, 1).float()[None] / 255
    torch.testing.assert_close(x, ImageAdapter().normalize(pixels)[0])
    ds.transform = None
    assert isinstance(ds[2]["image"], Image.Image) and ds[2]["image"].size == (32, 32)
    ds.transform = lambda im: {"image": "view", "extra": im.size}
    s = ds[2]
    assert s["image"] == "view" and s["extra"] == (32, 32) and s["label"] == 2
    with pytest.raises(IndexError):
        ds[5]


def test_sample_images_still_works():
    images, captions = sample_images(3, size=32, seed=1)
    images2, captions2 = sample_images(3, size=32, seed=1)
    assert images.shape == (3, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, images2) and captions == captions2


def test_caption_dropout_keeps_the_class_and_follows_the_epoch_seed():
    from unitok.engine.state import EpochSeeded

    full = ToyShapes("train", size=32, num_samples=8, caption_dropout=1.0)
    spec = full.sample(3).spec
    assert full[3]["text"] == f"a {spec.color} {spec.shape}"
    seeded = EpochSeeded(ToyShapes("train", size=32, num_samples=64, caption_dropout=0.5), seed=1)
    first = [seeded[i]["text"] for i in range(64)]
    assert first == [seeded[i]["text"] for i in range(64)]  # the same (epoch, index) gives the same caption
    seeded.set_epoch(1)
    assert first != [seeded[i]["text"] for i in range(64)]
    specs = [seeded.dataset.sample(i).spec for i in range(64)]
    assert all(f"{s.color} " in t and s.shape in t for s, t in zip(specs, first, strict=True))
    with pytest.raises(ValueError, match="caption_dropout"):
        ToyShapes("train", caption_dropout=1.5)
