"""Speech GAN discriminator: the released Semantic-VAE layout, the official outputs (golden file), shapes, STFT framing,
preprocessing, MSD resampling, and a tiny discriminator that learns to tell sines from noise."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from unitok.losses.adversarial import discriminator_loss, feature_matching_loss, generator_adversarial_loss
from unitok.modalities.speech.discriminator import (
    BandDiscriminator,
    SpeechDiscriminator,
    SpeechDiscriminatorConfig,
    resample_like_julius,
)
from unitok.testing import seeded_state_dict

SHARED = Path(os.environ.get("UNITOK_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
KEYS_FULL = SHARED / "parity" / "semantic_vae" / "keys_full.json"
REFERENCE = Path(__file__).parent / "data" / "dac_discriminator_reference.pt"
TINY = dict(period_channels=[4, 8, 8, 8, 8], band_channels=4, scale_channels=[4, 8, 8, 8, 8, 8])


@pytest.fixture(scope="module")
def keys_full() -> dict:
    if not KEYS_FULL.is_file():
        pytest.skip(f"Semantic-VAE parity reference not found at {KEYS_FULL} (set UNITOK_SHARED)")
    return json.loads(KEYS_FULL.read_text())


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


@pytest.fixture(scope="module")
def released(reference) -> SpeechDiscriminator:
    """The released configuration (as recorded in the golden file) with the golden file's seeded weights."""
    torch.manual_seed(0)
    model = SpeechDiscriminator(SpeechDiscriminatorConfig.from_dac(reference["config"])).eval()
    model.load_state_dict(seeded_state_dict({k: v.shape for k, v in model.state_dict().items()}), strict=True)
    return model


def test_released_config_gives_the_released_state_dict_layout_and_parameter_counts(keys_full, reference):
    assert reference["config"] == keys_full["released_config"]["Discriminator"]  # the golden file's model
    model = SpeechDiscriminator(SpeechDiscriminatorConfig.from_dac(keys_full["released_config"]["Discriminator"]))
    got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    assert got == keys_full["discriminator"]
    counts = keys_full["param_counts"]
    mpd = sum(p.numel() for d in model.discriminators[:5] for p in d.parameters())
    mrd = sum(p.numel() for d in model.discriminators[5:] for p in d.parameters())
    assert (mpd, mrd) == (counts["discriminator_mpd (5 periods)"], counts["discriminator_mrd (3 fft sizes x 5 bands)"])
    assert mpd + mrd == counts["discriminator_total"] == 42_519_760


def test_outputs_and_gan_losses_match_the_official_code(reference, released):
    real, fake = reference["inputs"]["real"], reference["inputs"]["fake"]
    with torch.no_grad():
        d_real, d_fake = released(real), released(fake)
    close = dict(rtol=1e-4, atol=1e-5)
    for k, (maps, want) in enumerate(zip(d_real, reference["logits_real"], strict=True)):
        torch.testing.assert_close(maps[-1], want, **close, msg=f"real logits of sub-discriminator {k}")
        got_means = torch.stack([m.abs().mean() for m in maps])
        torch.testing.assert_close(got_means, reference["fmap_abs_mean_real"][k], **close)
    for maps, want in zip(d_fake, reference["logits_fake"], strict=True):
        torch.testing.assert_close(maps[-1], want, **close)
    # DAC GANLoss: Σ over sub-discriminators; feature matching Σ over sub-discriminators and layers
    torch.testing.assert_close(discriminator_loss(d_fake, d_real), reference["disc_loss"], **close)
    torch.testing.assert_close(generator_adversarial_loss(d_fake), reference["gen_loss"], **close)
    torch.testing.assert_close(feature_matching_loss(d_fake, d_real), reference["feat_loss"], **close)


def _strided(n: int, times: int, stride: int, kernel: int, pad: int) -> int:
    for _ in range(times):
        n = (n + 2 * pad - kernel) // stride + 1
    return n


@pytest.mark.parametrize("T", [16000, 15850])
def test_output_structure_and_shapes(T):
    model = SpeechDiscriminator(SpeechDiscriminatorConfig(**TINY))
    with torch.no_grad():
        out = model(torch.randn(2, 1, T))
    assert len(out) == 8 and [len(maps) for maps in out] == [6] * 5 + [26] * 3
    for maps, period in zip(out[:5], [2, 3, 5, 7, 11], strict=True):
        rows = _strided(T // period + 1, 4, 3, 5, 2)  # DAC pads a whole period when T % P == 0
        assert [m.shape[1] for m in maps] == [4, 8, 8, 8, 8, 1]
        assert maps[-1].shape == (2, 1, rows, period)
    for maps, n_fft in zip(out[5:], [2048, 1024, 512], strict=True):
        n_bins = n_fft // 2 + 1
        edges = [int(f * n_bins) for f in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)]
        widths = [_strided(hi - lo, 3, 2, 9, 4) for lo, hi in zip(edges, edges[1:], strict=False)]
        assert maps[-1].shape == (2, 1, math.ceil(T / (n_fft // 4)), sum(widths))
        assert [m.shape[-1] for m in maps[4:25:5]] == widths  # the last map of each band stack


def _audiotools_stft(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Transcription of audiotools ``AudioSignal.stft(match_stride=True)``: pad, centred STFT, drop 2 frames a side."""
    hop = n_fft // 4
    right, pad = math.ceil(x.shape[-1] / hop) * hop - x.shape[-1], (n_fft - hop) // 2
    x = F.pad(x, (pad, pad + right), mode="reflect")
    spec = torch.stft(x[:, 0], n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True)
    return spec[..., 2:-2]


@pytest.mark.parametrize("T", [3000, 3072, 4097])
def test_mrd_spectrogram_frames_as_audiotools(T):
    mrd = BandDiscriminator(512, channels=2)
    x = torch.randn(2, 1, T)
    spec = mrd.spectrogram(x)  # (B, 2, K, F)
    assert spec.shape == (2, 2, math.ceil(T / 128), 257)
    torch.testing.assert_close(torch.complex(spec[:, 0], spec[:, 1]).transpose(1, 2), _audiotools_stft(x, 512))
    # frame k covers samples [128 k - 192, 128 k + 320): an impulse at n reaches exactly those frames
    n = 1500
    impulse = torch.zeros(1, 1, T)
    impulse[..., n] = 1.0
    hit = mrd.spectrogram(impulse).abs().sum(dim=(0, 1, 3)) > 0
    want = [128 * k - 192 < n < 128 * k + 320 for k in range(hit.numel())]
    assert hit.tolist() == want


def test_preprocessing_removes_dc_and_peak_and_clips_are_independent():
    model = SpeechDiscriminator(SpeechDiscriminatorConfig(**TINY, rates=[1]))
    x = torch.randn(3, 1, 4000)
    with torch.no_grad():
        base = model(x)
        shifted = model(torch.cat([3.0 * x[:1] + 0.25, x[1:]]))
        alone = model(x[2:])
    for a, b, c in zip(base, shifted, alone, strict=True):
        torch.testing.assert_close(a[-1], b[-1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a[-1][2:], c[-1], rtol=1e-4, atol=1e-5)
    pre = SpeechDiscriminator.preprocess(3.0 * x + 0.25)
    torch.testing.assert_close(pre.mean(-1), torch.zeros(3, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(pre.abs().amax(-1), torch.full((3, 1), 0.8))


def test_msd_is_supported_and_resamples_like_julius():
    model = SpeechDiscriminator(SpeechDiscriminatorConfig(**TINY, periods=[], fft_sizes=[], rates=[1, 2]))
    with torch.no_grad():
        out = model(torch.randn(2, 1, 4000))
    assert [maps[-1].shape[-1] for maps in out] == [_strided(4000, 4, 4, 41, 20), _strided(2000, 4, 4, 41, 20)]
    assert [maps[-1].shape[1] for maps in out] == [1, 1] and [len(maps) for maps in out] == [7, 7]
    t = torch.arange(15851) / 16000
    y = resample_like_julius(torch.sin(2 * torch.pi * 440 * t).view(1, 1, -1), 16000, 8000)
    assert y.shape == (1, 1, 7925)
    want = torch.sin(2 * torch.pi * 440 * torch.arange(7925) / 8000)
    assert (y[0, 0, 100:-100] - want[100:-100]).abs().max() < 1e-3


def test_bad_inputs_and_configs_are_named():
    model = SpeechDiscriminator(SpeechDiscriminatorConfig(**TINY))
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        model(torch.randn(2, 4000))
    with pytest.raises(ValueError, match="FFT size 2048 needs more than"):
        model(torch.randn(1, 1, 800))
    with pytest.raises(ValueError, match="unknown DAC Discriminator arguments"):
        SpeechDiscriminatorConfig.from_dac({"periods": [2], "msd_rates": [1]})
    with pytest.raises(NotImplementedError, match="use_msstft_replace_mrd"):
        SpeechDiscriminatorConfig.from_dac({"use_msstft_replace_mrd": True})
    with pytest.raises(ValueError, match="bands"):
        BandDiscriminator(512, bands=[[0.5, 0.5]])


def _sines(n: int, T: int, gen: torch.Generator) -> torch.Tensor:
    freq = 200 + 2000 * torch.rand(n, 1, 1, generator=gen)
    phase = 2 * torch.pi * torch.rand(n, 1, 1, generator=gen)
    return torch.sin(2 * torch.pi * freq * torch.arange(T) / 16000 + phase)


def test_tiny_discriminator_learns_sines_from_noise():
    torch.manual_seed(0)
    cfg = SpeechDiscriminatorConfig(periods=[2, 3], fft_sizes=[128], period_channels=[8] * 5, band_channels=8)
    model = SpeechDiscriminator(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        loss = discriminator_loss(model(torch.randn(4, 1, 1024, generator=gen)), model(_sines(4, 1024, gen)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.4 * sum(losses[:3]), losses
    with torch.no_grad():
        d_real, d_fake = model(_sines(8, 1024, gen)), model(torch.randn(8, 1, 1024, generator=gen))
    margins = [(r[-1].mean() - f[-1].mean()).item() for r, f in zip(d_real, d_fake, strict=True)]
    assert min(margins) > 0.2, margins  # every sub-discriminator scores fresh sines above fresh noise
