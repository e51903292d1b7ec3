"""Per-channel latent statistics: LightningDiT's formula and file format, exact streaming / merged / distributed
accumulation, and storage beside a pretrained checkpoint."""

import json

import pytest
import torch

import unitok
from unitok.latent_stats import (
    LATENT_STATS_FILE,
    LatentStats,
    LatentStatsAccumulator,
    load_from_checkpoint,
    save_to_checkpoint,
    stats_for,
)
from unitok.testing import init_gloo, run_distributed


def _stats(c: int = 3, multiplier: float = 1.0) -> LatentStats:
    return LatentStats(torch.arange(c, dtype=torch.float32) - 1.0, torch.arange(1, c + 1) * 0.5, multiplier)


def _reference(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased std over every dim but 1, in float64."""
    flat = z.double().movedim(1, -1).reshape(-1, z.shape[1])
    return flat.mean(0), flat.std(0, unbiased=True)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 7)], ids=["image_4d", "speech_3d"])
def test_normalize_is_the_lightningdit_formula_and_denormalize_inverts_it(shape):
    stats = _stats(3, multiplier=0.7)
    z = torch.randn(shape, dtype=torch.float64) * 3 + 2
    x = stats.normalize(z)
    assert x.dtype == torch.float64 and x.shape == z.shape
    mean = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).reshape((1, 3) + (1,) * (len(shape) - 2))
    std = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64).reshape(mean.shape)
    assert torch.allclose(x, (z - mean) / std * 0.7, rtol=0, atol=1e-12)
    assert torch.allclose(stats.denormalize(x), z, rtol=0, atol=1e-12)
    assert torch.allclose(stats.denormalize(z), z * std / 0.7 + mean, rtol=0, atol=1e-12)
    assert stats.num_channels == 3 and stats.mean.shape == (1, 3, 1, 1)


def test_normalize_names_both_channel_counts():
    with pytest.raises(ValueError, match=r"4 channels.*statistics have 3"):
        _stats(3).normalize(torch.zeros(2, 4, 5, 5))


def test_invalid_stats_are_refused():
    with pytest.raises(ValueError, match="positive"):
        LatentStats(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="one value per channel"):
        LatentStats(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="multiplier"):
        LatentStats(torch.zeros(2), torch.ones(2), multiplier=0.0)


def test_to_dict_is_json_friendly():
    d = _stats(2, multiplier=1.5).to_dict()
    assert json.loads(json.dumps(d)) == {"mean": [-1.0, 0.0], "std": [0.5, 1.0], "multiplier": 1.5}


def _uneven_batches(z: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    assert sum(sizes) == z.shape[0]
    return list(z.split(sizes))


def test_accumulator_over_uneven_batches_equals_torch_std_of_all_data():
    z = torch.randn(11, 4, 3, 5, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.1, 5.0]).reshape(1, 4, 1, 1)
    acc = LatentStatsAccumulator(4)
    for part in _uneven_batches(z, [1, 5, 2, 3]):
        acc.update(part)
    mean, std = _reference(z)
    assert torch.allclose(acc.mean, mean, rtol=1e-12, atol=0) and torch.allclose(acc.std(), std, rtol=1e-12, atol=0)
    assert acc.count.tolist() == [11 * 15] * 4
    stats = acc.compute(multiplier=2.0)
    assert stats.mean.dtype == torch.float32 and stats.mean.shape == (1, 4, 1, 1) and stats.multiplier == 2.0
    assert torch.allclose(stats.std.flatten().double(), std, rtol=1e-6)


def test_accumulator_keeps_precision_for_a_large_channel_offset():
    torch.manual_seed(1)
    z = 1e4 + torch.randn(64, 2, 8, 8, dtype=torch.float64)
    acc = LatentStatsAccumulator(2)
    for part in z.split(7):
        acc.update(part)
    mean, std = _reference(z)
    assert torch.allclose(acc.std(), std, rtol=1e-9, atol=0)
    assert torch.allclose(acc.mean, mean, rtol=1e-12, atol=0)
    # hard enough data: a naive float64 sum / sum-of-squares misses 1e-9 here; the (count, mean, M2) merge does not
    n = z.numel() / 2
    flat = z.movedim(1, -1).reshape(-1, 2)
    naive = ((flat.square().sum(0) - flat.sum(0).square() / n) / (n - 1)).sqrt()
    assert ((naive - std).abs() / std).max() > 1e-9


def test_channel_last_token_latents_and_mask():
    z = torch.randn(3, 10, 4, dtype=torch.float64)  # (B, N, C)
    mask = torch.rand(3, 10) > 0.3
    acc = LatentStatsAccumulator(4, channel_dim=-1)
    acc.update(z, mask=mask)
    kept = z[mask]
    assert torch.allclose(acc.mean, kept.mean(0), rtol=1e-12) and torch.allclose(acc.std(), kept.std(0), rtol=1e-12)
    with pytest.raises(ValueError, match="mask of shape"):
        acc.update(z, mask=mask[:, :5])
    with pytest.raises(ValueError, match="4 channels in dim -1"):
        acc.update(torch.zeros(2, 4, 3))


def test_merge_and_state_dict_round_trip_equal_one_pass():
    z = torch.randn(9, 3, 4, 4, dtype=torch.float64) + torch.tensor([0.0, 50.0, -3.0]).reshape(1, 3, 1, 1)
    a, b, whole = LatentStatsAccumulator(3), LatentStatsAccumulator(3), LatentStatsAccumulator(3)
    a.update(z[:2])
    b.update(z[2:])
    whole.update(z)
    a.merge(b)
    assert torch.allclose(a.mean, whole.mean, rtol=1e-12) and torch.allclose(a.std(), whole.std(), rtol=1e-12)
    # resume a partial pass from its saved state
    part = LatentStatsAccumulator(3)
    part.update(z[:4])
    resumed = LatentStatsAccumulator(3)
    resumed.load_state_dict(part.state_dict())
    resumed.update(z[4:])
    assert torch.allclose(resumed.std(), whole.std(), rtol=1e-12) and torch.equal(resumed.count, whole.count)
    with pytest.raises(ValueError, match="expected \\(5,\\)"):
        LatentStatsAccumulator(5).load_state_dict(part.state_dict())
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(LatentStatsAccumulator(2))


def test_add_moments_of_per_image_groups_equals_one_pass():
    z = torch.randn(7, 3, 4, 4, dtype=torch.float64) * 0.2 + torch.tensor([0.0, 1e3, -3.0]).reshape(1, 3, 1, 1)
    flat = z.movedim(1, -1).reshape(7, -1, 3)  # per-image groups of 16 values per channel
    mean = flat.mean(1)
    m2 = (flat - mean[:, None]).square().sum(1)
    acc = LatentStatsAccumulator(3).add_moments(torch.full((7, 3), 16.0), mean, m2)
    ref_mean, ref_std = _reference(z)
    assert torch.allclose(acc.mean, ref_mean, rtol=1e-12) and torch.allclose(acc.std(), ref_std, rtol=1e-10)
    assert acc.count.tolist() == [112.0] * 3


def test_compute_needs_two_values():
    acc = LatentStatsAccumulator(2)
    acc.update(torch.zeros(1, 2, 1, 1))
    with pytest.raises(ValueError, match="at least 2"):
        acc.compute()


def _data(rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    return 1e3 + torch.randn(3 + 2 * rank, 3, 4, 4, generator=g, dtype=torch.float64)  # uneven per rank


def _all_reduce_worker(rank, world_size, init_file, out):
    init_gloo(rank, world_size, init_file)
    acc = LatentStatsAccumulator(3)
    for part in _data(rank).split(2):
        acc.update(part)
    acc.all_reduce()
    torch.save(acc.state_dict(), f"{out}/rank{rank}.pt")


def test_all_reduce_over_two_processes_equals_one_process_on_the_union(tmp_path):
    run_distributed(_all_reduce_worker, 2, str(tmp_path))
    union = torch.cat([_data(0), _data(1)])
    mean, std = _reference(union)
    for rank in range(2):
        acc = LatentStatsAccumulator(3)
        acc.load_state_dict(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True))
        assert acc.count.tolist() == [union.numel() / 3] * 3
        assert torch.allclose(acc.mean, mean, rtol=1e-12, atol=0)
        assert torch.allclose(acc.std(), std, rtol=1e-12, atol=0)


def test_save_writes_exactly_the_lightningdit_format_and_loads_back(tmp_path):
    stats = LatentStats(torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 0.25]), 0.5)
    path = stats.save(tmp_path / LATENT_STATS_FILE)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"mean", "std"}
    for v in raw.values():
        assert v.shape == (1, 3, 1, 1) and v.dtype == torch.float32
    assert raw["mean"].flatten().tolist() == [0.5, -2.0, 3.0]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic write left nothing behind
    loaded = LatentStats.load(path, multiplier=0.5)
    assert loaded == stats and LatentStats.load(path) != stats  # multiplier comes from the caller, not the file


def test_load_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LatentStats.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"mean": torch.zeros(1, 2, 1, 1)}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt misses key\(s\) \['std'\]"):
        LatentStats.load(bad)
    torch.save({"mean": torch.zeros(1, 2, 1, 1), "std": torch.tensor([1.0, -1.0]).reshape(1, 2, 1, 1)}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt.*positive.*\[1\]"):
        LatentStats.load(bad)
    torch.save({"mean": torch.zeros(1, 2, 1, 1), "std": torch.ones(1, 3, 1, 1)}, bad)
    with pytest.raises(ValueError, match="2 values and 'std' 3"):
        LatentStats.load(bad)
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read"):
        LatentStats.load(bad)


def test_save_to_checkpoint_needs_a_pretrained_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_to_checkpoint(tmp_path / "missing", _stats())
    with pytest.raises(FileNotFoundError, match="not a pretrained directory.*config.json"):
        save_to_checkpoint(tmp_path, _stats())


@pytest.mark.parametrize(
    ("name", "channels", "overrides"),
    [
        ("unitok_tiny_img_p16_d8", 8, {}),
        ("vtp_s_f16d64", 64, {"vision_depth": 1, "decoder_depth": 1, "text_depth": 1, "text_vocab_size": 64}),
    ],
)
def test_load_pretrained_attaches_stored_stats_outside_the_state_dict(tmp_path, name, channels, overrides):
    model = unitok.create_model(name, **overrides)
    model.save_pretrained(tmp_path)
    plain = unitok.load_pretrained(tmp_path)
    assert plain.latent_stats is None
    with pytest.raises(RuntimeError, match="no latent statistics.*image.latent_stats --ckpt DIR store_in_checkpoint"):
        stats_for(plain)
    assert load_from_checkpoint(tmp_path) is None
    keys = set(plain.state_dict())

    stats = _stats(channels)
    assert save_to_checkpoint(tmp_path, stats) == tmp_path / LATENT_STATS_FILE
    loaded = unitok.load_pretrained(tmp_path)
    assert loaded.latent_stats == stats and stats_for(loaded) is loaded.latent_stats
    assert set(loaded.state_dict()) == keys  # a plain attribute, not a buffer
    loaded.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again" / LATENT_STATS_FILE).exists()  # the released layout stays unchanged
