import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from unitok.modalities.image.adapter import IMAGENET_MEAN, IMAGENET_STD
from unitok.modalities.image.augment import (
    MultiCropAugmentation,
    adm_center_crop,
    collate_multicrop,
    reconstruction_transform,
)
from unitok.modalities.image.toy import ToyShapes


def test_multicrop_output_shapes_for_pil_and_uint8_tensor():
    aug = MultiCropAugmentation(global_size=48, local_size=16, n_local=3)
    pil = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    for image in (pil, torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)):
        out = aug(image)
        assert [tuple(c.shape) for c in out["global_crops"]] == [(3, 48, 48)] * 2
        assert [tuple(c.shape) for c in out["local_crops"]] == [(3, 16, 16)] * 3
        assert out["image"].shape == (3, 48, 48) and out["image"].dtype == torch.float32
    # the un-augmented view is deterministic; crops are random
    torch.testing.assert_close(aug(pil)["image"], reconstruction_transform(48)(pil))
    assert not torch.equal(aug(pil)["global_crops"][0], aug(pil)["global_crops"][0])
    bare = MultiCropAugmentation(32, 16, n_local=0, image_size=0)(pil)
    assert bare["local_crops"] == [] and "image" not in bare
    with pytest.raises(ValueError, match="blur_probabilities"):
        MultiCropAugmentation(blur_probabilities="paper")


def test_collate_multicrop_with_toy_shapes():
    ds = ToyShapes("val", size=32, num_samples=4, transform=MultiCropAugmentation(32, 16, n_local=2))
    batch = collate_multicrop([ds[i] for i in range(4)])
    assert [tuple(c.shape) for c in batch["global_crops"]] == [(4, 3, 32, 32)] * 2
    assert [tuple(c.shape) for c in batch["local_crops"]] == [(4, 3, 16, 16)] * 2
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].tolist() == [0, 1, 2, 3]
    assert len(batch["text"]) == 4
    with pytest.raises(ValueError, match="local_crops"):
        collate_multicrop([ds[0], {**ds[1], "local_crops": []}])


def test_crops_per_batch_makes_crops_for_the_first_samples_only_and_replays_them():
    from unitok.engine.state import EpochSeeded

    aug = MultiCropAugmentation(32, 16, n_local=2, image_size=0, crops_per_batch=3)
    ds = EpochSeeded(ToyShapes("train", size=32, num_samples=8, transform=aug), seed=1)
    samples = [ds[i] for i in range(8)]
    assert "global_crops" not in samples[0] and isinstance(samples[0]["crop_seed"], int)
    batch = aug.collate(samples)
    assert [tuple(c.shape) for c in batch["global_crops"]] == [(3, 3, 32, 32)] * 2
    assert [tuple(c.shape) for c in batch["local_crops"]] == [(3, 3, 16, 16)] * 2
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].tolist() == list(range(8))
    assert "crop_source" not in batch and "crop_seed" not in batch
    # the same samples give the same crops whatever ran before (seeded per sample, not by the caller's RNG)
    torch.manual_seed(123)
    again = aug.collate([ds[i] for i in range(8)])
    crops = zip(batch["global_crops"] + batch["local_crops"], again["global_crops"] + again["local_crops"], strict=True)
    for a, b in crops:
        assert torch.equal(a, b)
    # and they are the crops the eager augmentation makes for the same seed
    eager = MultiCropAugmentation(32, 16, n_local=2, image_size=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(samples[1]["crop_seed"])
        assert torch.equal(eager(samples[1]["crop_source"])["global_crops"][1], batch["global_crops"][1][1])
    with pytest.raises(ValueError, match="crops_per_batch"):
        MultiCropAugmentation(crops_per_batch=-1)


def _blur_and_solarize(pipeline: v2.Compose) -> tuple[float, float]:
    """Probability of GaussianBlur(9, (0.1, 2.0)) and of RandomSolarize(128) in a composed crop pipeline."""
    probs = {"blur": 0.0, "solarize": 0.0}
    for t in pipeline.transforms:
        p, inner = (t.p, t.transforms[0]) if isinstance(t, v2.RandomApply) else (1.0, t)
        if isinstance(inner, v2.GaussianBlur):
            assert tuple(inner.kernel_size) == (9, 9) and list(inner.sigma) == [0.1, 2.0]
            probs["blur"] = p
        if isinstance(inner, v2.RandomSolarize):
            assert inner.threshold == 128
            probs["solarize"] = p * inner.p
    return probs["blur"], probs["solarize"]


@pytest.mark.parametrize(
    "mode, expected",
    [("official", [(0.0, 0.0), (0.9, 0.2), (0.5, 0.0)]), ("intended", [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)])],
)
def test_composed_blur_and_solarize_probabilities(mode, expected):
    aug = MultiCropAugmentation(blur_probabilities=mode)
    got = [_blur_and_solarize(p) for p in (aug.global_1, aug.global_2, aug.local)]
    assert [p for pair in got for p in pair] == pytest.approx([p for pair in expected for p in pair])
    crop = aug.global_1.transforms[0]
    assert isinstance(crop, v2.RandomResizedCrop) and crop.interpolation == v2.InterpolationMode.BICUBIC
    assert list(crop.scale) == [0.32, 1.0] and list(aug.local.transforms[0].scale) == [0.05, 0.32]


def _neighbour_correlation(x: torch.Tensor) -> float:
    """Mean lag-1 horizontal correlation over channels of a (3, H, W) image (about 0 for white noise)."""
    a, b = x[:, :, :-1].flatten(1), x[:, :, 1:].flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)
    return corr.mean().item()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions are slower with threads on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["official", "intended"])
def test_blur_rates_measured_on_white_noise(mode, one_thread):
    """Crops of white noise stay uncorrelated unless blurred (colour ops are per pixel, scale (1, 1) keeps the
    full image at its size). sigma ~ U(0.1, 2) is visible (correlation > 0.2) for about 3/4 of the draws."""
    torch.manual_seed(0)
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    aug = MultiCropAugmentation(32, 16, n_local=0, global_scale=(1.0, 1.0), blur_probabilities=mode, image_size=0)
    draws = 150
    rates = [
        sum(_neighbour_correlation(p(noise)) > 0.2 for _ in range(draws)) / draws for p in (aug.global_1, aug.global_2)
    ]
    if mode == "official":
        assert rates[0] == 0.0 and 0.5 < rates[1] < 0.85
    else:
        assert 0.55 < rates[0] < 0.9 and rates[1] < 0.2


def test_reconstruction_transform_resizes_crops_and_normalises():
    image = Image.new("RGB", (100, 50), (255, 128, 0))
    x = reconstruction_transform(32)(image)
    assert x.shape == (3, 32, 32)
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x.mean((1, 2)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("w, h, size", [(500, 375, 256), (1024, 768, 256), (300, 200, 64), (50, 100, 64), (64, 64, 64)])
def test_adm_center_crop_size(w, h, size):
    out = adm_center_crop(Image.new("RGB", (w, h), (1, 2, 3)), size)
    assert out.size == (size, size) and out.mode == "RGB" and out.getpixel((size // 2, size // 2)) == (1, 2, 3)


def test_adm_center_crop_box_halving_boundary_and_centering():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (128, 160, 3), dtype=np.uint8))
    # short side 128 >= 2 * 64: one BOX halving to 80x64, then the bicubic resize is the identity
    expected = np.asarray(img.resize((80, 64), Image.BOX))[:, 8:72]
    assert np.array_equal(np.asarray(adm_center_crop(img, 64)), expected)
    # short side 127 < 2 * 64: no halving, bicubic straight to 64 (short side) with rounding: 160*64/127 -> 81
    small = img.crop((0, 0, 160, 127))
    expected = np.asarray(small.resize((81, 64), Image.BICUBIC))[:, 8:72]
    assert np.array_equal(np.asarray(adm_center_crop(small, 64)), expected)
    # centering on a horizontal ramp: 300x200 -> halved 150x100 -> 96x64 -> columns 16..79 of 96
    ramp = np.tile(np.linspace(0, 255, 300, dtype=np.float32), (200, 1))
    out = np.asarray(adm_center_crop(Image.fromarray(ramp.round().astype(np.uint8)).convert("RGB"), 64))[..., 0]
    left, right = out[:, 0].mean(), out[:, -1].mean()
    assert abs(left - 255 * (16.5 / 96 * 300 - 0.5) / 299) < 3 and abs(right - 255 * (79.5 / 96 * 300 - 0.5) / 299) < 3
