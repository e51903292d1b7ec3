"""Audio reconstruction terms (auraloss): zero for identical clips, masks, gradients, the mel filterbank's numbers."""

import pytest
import torch
import torchaudio

from unitok.modalities.speech.perceptual import (
    AudioReconstructionConfig,
    AudioReconstructionLoss,
    multi_resolution_stft_loss,
)

ALL_TERMS = AudioReconstructionConfig(
    stft_weight=1.0, stft_fft_sizes=[512, 128], mel_weight=2.0, mel_fft_sizes=[256, 64], mel_bins=[40, 10],
    l1_weight=0.5, si_sdr_weight=0.1,
)  # fmt: skip
LOSS_KEYS = {"rec_stft_loss", "rec_mel_loss", "rec_l1_loss", "rec_sisdr_loss"}


def _clips(B=2, T=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T) / 16000
    target = 0.3 * torch.sin(2 * torch.pi * 330 * t) * torch.linspace(0.2, 1, T) + 0.05 * torch.randn(
        B, 1, T, generator=g
    )
    return target, target + 0.05 * torch.randn(B, 1, T, generator=g)


def test_terms_are_zero_for_identical_clips_and_positive_otherwise():
    loss = AudioReconstructionLoss(ALL_TERMS)
    target, prediction = _clips()
    same = loss(target.clone(), target)
    assert LOSS_KEYS | {"rec_si_sdr"} == set(same)
    for key in ("rec_stft_loss", "rec_mel_loss", "rec_l1_loss"):
        assert same[key].item() == 0.0, key
    assert same["rec_si_sdr"].item() > 60  # dB
    diff = loss(prediction, target)
    for key in ("rec_stft_loss", "rec_mel_loss", "rec_l1_loss"):
        assert diff[key].item() > 0, key
    assert 0 < diff["rec_si_sdr"].item() < 30
    assert diff["rec_sisdr_loss"].item() == pytest.approx(-0.1 * diff["rec_si_sdr"].item())
    assert diff["rec_l1_loss"].item() == pytest.approx(0.5 * (prediction - target).abs().mean().item())


def test_default_is_the_semantic_vae_mel_set_and_zero_weights_skip_terms():
    terms = AudioReconstructionLoss()(*_clips(T=8000))
    assert set(terms) == {"rec_mel_loss", "rec_si_sdr"}
    mel = AudioReconstructionLoss().mel
    assert [s.fft_size for s in mel.stft_losses] == [32, 64, 128, 256, 512, 1024, 2048]
    assert [s.fb.shape[1] for s in mel.stft_losses] == [5, 10, 20, 40, 80, 160, 320]
    assert (
        set(AudioReconstructionLoss(AudioReconstructionConfig(mel_weight=0, report_si_sdr=False))(*_clips())) == set()
    )


def test_padding_never_changes_the_terms():
    loss = AudioReconstructionLoss(ALL_TERMS)
    target, prediction = _clips(T=4000)
    lengths = torch.tensor([4000, 2500])
    base = loss(prediction, target, lengths)
    prediction2, target2 = prediction.clone(), target.clone()
    prediction2[1, :, 2500:] = 5.0
    target2[1, :, 2500:] = -3.0
    moved = loss(prediction2, target2, lengths)
    for key, value in base.items():
        assert moved[key].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-7), key
    unmasked = loss(prediction2, target2)
    assert all(unmasked[k].item() != pytest.approx(base[k].item(), rel=1e-3) for k in LOSS_KEYS)
    # L1 is the mean over valid samples; SI-SDR the mean over clips of each clip's own value
    valid = torch.cat([(prediction - target)[0, 0], (prediction - target)[1, 0, :2500]])
    assert base["rec_l1_loss"].item() == pytest.approx(0.5 * valid.abs().mean().item(), rel=1e-5)
    alone = loss(prediction[1:, :, :2500], target[1:, :, :2500])
    first = loss(prediction[:1], target[:1])
    mean = (alone["rec_si_sdr"] + first["rec_si_sdr"]) / 2
    assert base["rec_si_sdr"].item() == pytest.approx(mean.item(), rel=1e-5)


def test_gradients_are_finite_and_stay_out_of_the_padding():
    loss = AudioReconstructionLoss(ALL_TERMS)
    target, prediction = _clips()
    prediction.requires_grad_(True)
    terms = loss(prediction, target, torch.tensor([4000, 3000]))
    sum(v for k, v in terms.items() if k.endswith("_loss")).backward()
    grad = prediction.grad
    assert torch.isfinite(grad).all() and grad[:, :, :3000].abs().sum() > 0
    assert grad[1, :, 3000:].abs().max() == 0
    assert not terms["rec_si_sdr"].requires_grad


def test_mel_term_is_log_mel_l1_with_the_slaney_filterbank():
    """One resolution against torchaudio's MelSpectrogram (librosa-equal Slaney mels, magnitude, centred frames)."""
    target, prediction = _clips()
    got = multi_resolution_stft_loss([256], w_sc=0.0, w_log_mag=1.0, mel_bins=[40])(prediction, target)
    mel = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=256, hop_length=64, power=1.0, n_mels=40, norm="slaney", mel_scale="slaney"
    )
    want = (mel(prediction).log() - mel(target).log()).abs().mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    # averaged over resolutions, as auraloss' MultiResolutionSTFTLoss
    two = multi_resolution_stft_loss([256, 64], 0.0, 1.0, [40, 10])(prediction, target)
    one64 = multi_resolution_stft_loss([64], 0.0, 1.0, [10])(prediction, target)
    assert two.item() == pytest.approx((got.item() + one64.item()) / 2, rel=1e-6)


def test_bad_configs_and_inputs_are_named():
    with pytest.raises(ValueError, match="mel_bins"):
        AudioReconstructionLoss(AudioReconstructionConfig(mel_fft_sizes=[64, 128], mel_bins=[10]))
    with pytest.raises(ValueError, match=">= 0"):
        AudioReconstructionLoss(AudioReconstructionConfig(l1_weight=-1))
    loss = AudioReconstructionLoss()
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        loss(torch.zeros(2, 4000), torch.zeros(2, 4000))
    with pytest.raises(ValueError, match="audio_lens"):
        loss(torch.zeros(2, 1, 4000), torch.zeros(2, 1, 4000), torch.tensor([4000, 5000]))
