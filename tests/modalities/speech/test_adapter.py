import pytest
import torch

import unitok
from unitok.modalities.speech.adapter import SpeechAdapter


def batch_of_lengths(lengths, frame=320):
    T = max(lengths)
    audio = torch.zeros(len(lengths), T)
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n) * 0.1
    return {"audio": audio, "audio_lens": torch.tensor(lengths)}


def test_round_trip_of_clips_of_different_lengths():
    a = SpeechAdapter(frame_size=320)
    batch = batch_of_lengths([16000, 7001, 321])
    t = a.patchify(batch)
    assert t.x.shape == (3, 50, 320) and t.coords.shape == (3, 50, 1)
    assert t.mask.sum(1).tolist() == [50, 22, 2]
    assert torch.equal(a.unpatchify(t), batch["audio"])


def test_padding_samples_are_zeroed_and_stay_zero():
    a = SpeechAdapter(frame_size=160)
    audio = torch.randn(2, 800)  # garbage past the second clip's length
    t = a.patchify({"audio": audio, "audio_lens": torch.tensor([800, 500])})
    assert torch.all(t.x[1].reshape(-1)[500:] == 0)
    back = a.unpatchify(t.with_x(torch.randn_like(t.x)))
    assert torch.all(back[1, 500:] == 0) and back.shape == (2, 800)


def test_time_based_coordinates():
    a = SpeechAdapter(frame_size=320, reference_frames=250)
    t = a.patchify(torch.zeros(1, 1, 640))
    assert torch.allclose(t.coords[0, :, 0], torch.tensor([0.5 / 250, 1.5 / 250]))
    assert a.frame_rate == 50


def test_autoencoder_output_of_a_clip_does_not_depend_on_its_batch():
    a = SpeechAdapter()
    model = unitok.create_model("unitok_tiny_wav_p320_d8").eval()
    batch = batch_of_lengths([9600, 4800])
    with torch.no_grad():
        together = model(a.patchify(batch))
        alone = model(a.patchify({"audio": batch["audio"][1:, :4800]}))
    n = alone["latents"].x.shape[1]
    assert torch.allclose(together["latents"].x[1, :n], alone["latents"].x[0], atol=1e-5)
    wave = a.unpatchify(together["recon"])
    assert wave.shape == batch["audio"].shape and torch.all(wave[1, 4800:] == 0)


def test_wav_is_written(tmp_path):
    import soundfile as sf

    a = SpeechAdapter()
    path = a.to_media(torch.sin(torch.linspace(0, 100, 16000)) * 0.5, str(tmp_path / "x.wav"))
    data, sr = sf.read(path)
    assert sr == 16000 and data.shape == (16000,)


def test_bad_audio_is_named():
    a = SpeechAdapter()
    with pytest.raises(ValueError, match="add a batch dimension"):
        a.patchify(torch.zeros(1000))
    with pytest.raises(ValueError, match="mono"):
        a.patchify(torch.zeros(2, 2, 1000))
    with pytest.raises(ValueError, match="audio_lens must be in"):
        a.patchify({"audio": torch.zeros(2, 100), "audio_lens": torch.tensor([100, 101])})
    with pytest.raises(ValueError, match="audio_lens must have shape"):
        a.patchify({"audio": torch.zeros(2, 100), "audio_lens": torch.tensor([100])})
    with pytest.raises(ValueError, match="floating point"):
        a.patchify(torch.zeros(1, 100, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"frames \(B, N, 320\)"):
        a.unpatchify(torch.zeros(1, 3, 100), {})
