"""unitok-extract end to end on a tiny CutSet: shards, index and statistics equal a direct computation; the
sampled latents do not depend on the batch size; a re-run skips finished shards; unreadable audio is counted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import unitok
from unitok.latent_stats import LatentStats, LatentStatsAccumulator
from unitok.modalities.speech.extract import load_corpus, main
from unitok.modalities.speech.latent_shards import iter_latents, read_shard_info
from unitok.modalities.speech.semantic_vae import create_semantic_vae
from unitok.modalities.speech.tokenizer import SpeechTokenizer, utterance_noise

pytestmark = pytest.mark.usefixtures("one_thread")

#: (sample rate, seconds) of the synthetic utterances: two rates (resampling), lengths not multiples of the hop
CLIPS = [(16000, 0.31), (22050, 0.52), (16000, 0.77), (16000, 0.2), (22050, 0.43)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A saved semantic_vae_tiny and a CutSet of synthetic chirps (wav files + supervisions)."""
    from lhotse import CutSet, Recording, SupervisionSegment

    root = tmp_path_factory.mktemp("extract")
    torch.manual_seed(0)
    create_semantic_vae("semantic_vae_tiny").save_pretrained(root / "model")
    cuts = []
    for i, (sr, seconds) in enumerate(CLIPS):
        t = np.arange(int(sr * seconds)) / sr
        wav = 0.3 * np.sin(2 * math.pi * (120 + 60 * i) * t * (1 + t)) + 0.01 * np.random.default_rng(i).normal(
            size=t.size
        )
        sf.write(root / f"utt{i}.wav", wav.astype("float32"), sr)
        rec = Recording.from_file(root / f"utt{i}.wav", recording_id=f"spk/utt{i}")
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(f"spk/utt{i}", rec.id, 0.0, rec.duration, text=f"utterance {i}")]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(root / "cuts.jsonl.gz")
    return {"root": root, "model": root / "model", "cuts": root / "cuts.jsonl.gz"}


def _extract(corpus, out: Path, *extra: str) -> None:
    main(["--ckpt", str(corpus["model"]), "--cuts", str(corpus["cuts"]), "--out", str(out), "--shard-size", "2",
          "--num-workers", "0", "--device", "cpu", *extra])  # fmt: skip


def _latents(out: Path, kind: str = "z") -> dict[str, torch.Tensor]:
    return {utt["id"]: lat for utt, lat in iter_latents(out, kind)}


def test_shards_index_and_stats_equal_a_direct_computation(corpus, tmp_path, capsys):
    _extract(corpus, tmp_path / "out", "--batch-size", "3", "--seed", "7")
    assert "5 utterances" in capsys.readouterr().out
    out = tmp_path / "out"
    index = json.loads((out / "index.json").read_text())
    assert [s["file"] for s in index["shards"]] == [f"shard-0000{k}.safetensors" for k in range(3)]
    assert index["num_utterances"] == 5 and index["latent_dim"] == 8 and index["latent_rate_hz"] == 40.0
    model = unitok.load_pretrained(corpus["model"])
    z_got, mean_got = _latents(out, "z"), _latents(out, "mean")
    acc = {k: LatentStatsAccumulator(8, channel_dim=-1) for k in ("z", "mean")}
    records = [u for s in index["shards"] for u in s["utterances"]]
    for utt, rec in zip(load_corpus(str(corpus["cuts"])), records, strict=True):
        audio = torch.from_numpy(utt.cut.resample(16000).load_audio()).float()
        frames = math.ceil(audio.shape[-1] / 400)
        assert rec == {"id": utt.id, "text": utt.text, "frames": frames, "num_samples": audio.shape[-1],
                       "duration": audio.shape[-1] / 16000}  # fmt: skip
        with torch.no_grad():  # alone, unpadded, with the utterance's own noise: upstream's extract_latent.py
            enc = model.encode(audio[None], eps=utterance_noise((1, frames, 8), 7, utt.index))
        torch.testing.assert_close(z_got[utt.id], enc["z"][0], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(mean_got[utt.id], enc["mu"][0], atol=2e-5, rtol=1e-5)
        acc["z"].update(enc["z"][0])
        acc["mean"].update(enc["mu"][0])
    for kind, name in (("z", "latents_stats.pt"), ("mean", "latents_stats_mean.pt")):
        stored, direct = LatentStats.load(out / name), acc[kind].compute()
        torch.testing.assert_close(stored.mean, direct.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stored.std, direct.std, atol=1e-5, rtol=1e-5)


def test_sampled_latents_do_not_depend_on_the_batch_size(corpus, tmp_path):
    _extract(corpus, tmp_path / "b1", "--batch-size", "1")
    _extract(corpus, tmp_path / "b4", "--batch-size", "4", "--shard-size", "5")
    one, four = _latents(tmp_path / "b1"), _latents(tmp_path / "b4")
    assert one.keys() == four.keys() and len(one) == 5
    for key in one:
        torch.testing.assert_close(one[key], four[key], atol=2e-5, rtol=1e-5)
    _extract(corpus, tmp_path / "seed1", "--seed", "1")
    other = _latents(tmp_path / "seed1")
    assert not torch.allclose(other["spk/utt0"], one["spk/utt0"])
    torch.testing.assert_close(_latents(tmp_path / "seed1", "mean")["spk/utt0"], _latents(tmp_path / "b1", "mean")[
        "spk/utt0"], atol=2e-5, rtol=1e-5)  # fmt: skip


def test_rerun_skips_finished_shards_and_refuses_other_settings(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    _extract(corpus, out)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / "shard-00001.safetensors").unlink()
    (out / "index.json").unlink()
    capsys.readouterr()
    _extract(corpus, out)
    assert "(1 written, 2 already done)" in capsys.readouterr().out
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert now["shard-00000.safetensors"] == first["shard-00000.safetensors"]
    assert now["shard-00002.safetensors"] == first["shard-00002.safetensors"] and (out / "index.json").is_file()
    with pytest.raises(SystemExit):
        _extract(corpus, out, "--seed", "3")
    assert "other settings" in capsys.readouterr().err


def test_unreadable_audio_is_counted_and_a_non_speech_model_is_named(corpus, tmp_path, capsys):
    from lhotse import CutSet, Recording

    bad = tmp_path / "bad.wav"
    sf.write(bad, np.zeros(1600, dtype="float32"), 16000)
    cut = Recording.from_file(bad, recording_id="broken").to_cut()
    bad.write_bytes(b"not a wav file")
    cuts = CutSet.from_file(corpus["cuts"]).to_eager() + CutSet.from_cuts([cut])
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    main(["--ckpt", str(corpus["model"]), "--cuts", str(tmp_path / "cuts.jsonl.gz"), "--out", str(tmp_path / "o"),
          "--num-workers", "0", "--device", "cpu"])  # fmt: skip
    assert "1 unreadable" in capsys.readouterr().out
    info = read_shard_info(tmp_path / "o" / "shard-00000.safetensors")
    assert list(info["failed"]) == ["broken"] and len(info["utterances"]) == 5
    unitok.create_model("unitok_tiny_img_p16_d8").save_pretrained(tmp_path / "image_model")
    with pytest.raises(SystemExit):
        main(["--ckpt", str(tmp_path / "image_model"), "--cuts", str(corpus["cuts"]), "--out", str(tmp_path / "x")])
    assert "not a speech tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "torchrun" in capsys.readouterr().out


class _Gaussian(torch.nn.Module):
    """A unitok-style speech model with a Gaussian bottleneck: frames of 400 samples, 8 channels."""

    sample_rate, hop_length, latent_dim = 16000, 400, 8

    def encode(self, audio, lengths):
        frames = torch.nn.functional.pad(audio, (0, -audio.shape[1] % 400)).view(audio.shape[0], -1, 400)
        return {"mean": frames[..., :8], "logvar": frames[..., 8:16]}

    def decode(self, latents, lengths):
        return latents


def test_tokenizer_noise_of_a_gaussian_model_does_not_depend_on_the_batch():
    tok = SpeechTokenizer(_Gaussian())
    audio, lengths = torch.randn(3, 4000) * 0.1, torch.tensor([1000, 4000, 2300])
    together = tok.encode(audio, lengths, [5, 6, 7], seed=2)
    for row in range(3):
        n, frames = int(lengths[row]), int(together["frames"][row])
        alone = tok.encode(audio[row : row + 1, :n], lengths[row : row + 1], [5 + row], seed=2)
        assert torch.equal(alone["z"][0, :frames], together["z"][row, :frames])
        eps = utterance_noise((1, frames, 8), 2, 5 + row)[0]
        mean, logvar = _Gaussian().encode(audio[row : row + 1, :n], None).values()
        assert torch.allclose(together["z"][row, :frames], mean[0] + torch.exp(0.5 * logvar[0]) * eps)


def test_a_unitok_speech_model_extracts_batch_independent_samples(corpus, tmp_path):
    torch.manual_seed(0)
    unitok.create_model("unitok_speech_tiny_p320_d64", bottleneck="gaussian").save_pretrained(tmp_path / "m")
    for batch in ("1", "5"):
        main(["--ckpt", str(tmp_path / "m"), "--cuts", str(corpus["cuts"]), "--out", str(tmp_path / batch),
              "--batch-size", batch, "--num-workers", "0", "--device", "cpu"])  # fmt: skip
    one, five = _latents(tmp_path / "1"), _latents(tmp_path / "5")
    index = json.loads((tmp_path / "5" / "index.json").read_text())
    assert index["model"] == "SpeechTokenizerModel" and index["latent_rate_hz"] == 50.0 and len(five) == 5
    records = {u["id"]: u for s in index["shards"] for u in s["utterances"]}
    for key in one:
        assert one[key].shape == (math.ceil(records[key]["num_samples"] / 320), 64)
        torch.testing.assert_close(one[key], five[key], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_latents(tmp_path / "5", "mean")["spk/utt0"], five["spk/utt0"])


def test_wav_folder_ids_transcripts_and_unreadable_files(tmp_path):
    (tmp_path / "spk").mkdir()
    sf.write(tmp_path / "spk" / "a.wav", np.zeros(800, dtype="float32"), 16000)
    sf.write(tmp_path / "spk" / "b.flac", np.zeros((1200, 2), dtype="float32"), 22050)
    sf.write(tmp_path / "c.wav", np.zeros(400, dtype="float32"), 16000)
    (tmp_path / "spk" / "a.normalized.txt").write_text("hello world\n")
    (tmp_path / "spk" / "b.lab").write_text("bee")
    (tmp_path / "bad.wav").write_text("not audio")
    items = load_corpus(wavs=str(tmp_path))
    assert [(u.id, u.text, u.index) for u in items] == [("c", "", 0), ("spk/a", "hello world", 1), ("spk/b", "bee", 2)]
    assert items[2].cut.num_channels == 2 and items[2].cut.sampling_rate == 22050  # every channel, averaged on load
