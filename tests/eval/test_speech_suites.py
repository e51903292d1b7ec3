"""Speech evaluation: the tokenizer view over the Semantic-VAE baseline, CutSet utterances, the four speech suites
and the F5-TTS WER protocol."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from unitok.eval.checkpoints import LoadedCheckpoint
from unitok.eval.context import EvalContext, EvalOptions
from unitok.eval.metrics.text import f5_normalize, utterance_wers
from unitok.eval.suites import (
    speech_intelligibility,
    speech_latent_stats,
    speech_reconstruction,
    speech_speaker_similarity,
)
from unitok.latent_stats import LatentStats
from unitok.modalities.speech.semantic_vae import create_semantic_vae
from unitok.modalities.speech.tokenizer import SpeechTokenizer, utterance_noise

SR = 16000
TEXTS = ["Hello there, world!", "The cat sat.", "A quick test of speech", "Well-known facts", "Don't stop now"]


@pytest.fixture(scope="module")
def cuts_dir(tmp_path_factory):
    """cuts_val.jsonl.gz of 5 synthetic utterances (pitched tones with noise), 0.4 to 0.9 s, 2 speakers."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    root = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    recs, sups = [], []
    for i, text in enumerate(TEXTS):
        n = int(SR * (0.4 + 0.125 * i))
        t = np.arange(n) / SR
        wav = 0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        wav = (wav + 0.01 * rng.standard_normal(n)).astype(np.float32)
        soundfile.write(root / f"u{i}.wav", wav, SR)
        (root / f"u{i}.txt").write_text(text)
        rec = Recording.from_file(root / f"u{i}.wav", recording_id=f"u{i}")
        recs.append(rec)
        sups.append(SupervisionSegment(f"u{i}", f"u{i}", 0, rec.duration, text=text, speaker=f"s{i % 2}"))
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs),
                                 supervisions=SupervisionSet.from_segments(sups))  # fmt: skip
    cuts.to_file(root / "cuts_val.jsonl.gz")
    return root


@pytest.fixture(scope="module")
def svae():
    torch.manual_seed(0)
    return create_semantic_vae("semantic_vae_tiny", with_projector=False).eval().requires_grad_(False)


def _ctx(model, data, out, **options):
    ckpt = LoadedCheckpoint(model, "/nowhere/svae", "pretrained_dir", "svae", {}, {"id": "svae"})
    opts = {"num_workers": 0, "batch_size": 2, "chunk_size": 3, "progress": False, **options}
    return EvalContext(ckpt, str(data), Path(out), EvalOptions(**opts))


class _Identity(torch.nn.Module):
    """A perfect 'tokenizer': the latent is the waveform itself in frames of 400 samples."""

    sample_rate, hop_length, latent_dim = SR, 400, 400

    def encode(self, audio, lengths):
        return {"mean": torch.nn.functional.pad(audio, (0, -audio.shape[1] % 400)).view(audio.shape[0], -1, 400)}

    def decode(self, latents, lengths):
        return latents.flatten(1)


def test_tokenizer_encodes_each_utterance_as_the_official_code_and_seeds_its_noise(svae, cuts_dir):
    from unitok.eval.speech_data import SpeechCuts, collate_speech

    ds = SpeechCuts(cuts_dir / "cuts_val.jsonl.gz", SR)
    batch = collate_speech([ds[1], ds[3]])
    tok = SpeechTokenizer(svae)
    out = tok.encode(batch["audio"], batch["audio_lens"], [1, 3], seed=7)
    n = int(batch["audio_lens"][0])
    frames = math.ceil(n / 400)
    assert out["frames"].tolist() == [frames, math.ceil(int(batch["audio_lens"][1]) / 400)]
    eps = utterance_noise((1, frames, 8), 7, 1)
    ref = svae.encode(batch["audio"][:1, None, :n], eps=eps)
    assert torch.equal(out["mean"][0, :frames], ref["mu"][0]) and torch.equal(out["z"][0, :frames], ref["z"][0])
    assert out["mean"][0, frames:].abs().sum() == 0  # padding frames are zero
    alone = tok.encode(batch["audio"][:1, :n], batch["audio_lens"][:1], [1], seed=7)
    assert torch.equal(alone["z"][0], out["z"][0, :frames])  # the batch does not change an utterance's sample
    audio = tok.decode(out["mean"], batch["audio_lens"])
    assert audio.shape == batch["audio"].shape and audio[0, n:].abs().sum() == 0
    with pytest.raises(ValueError, match="not a speech tokenizer"):
        SpeechTokenizer(torch.nn.Linear(2, 2))


def test_eval_data_reads_manifests_and_folders_of_audio(cuts_dir, tmp_path):
    from unitok.eval.speech_data import SpeechCuts, resolve_manifest

    assert resolve_manifest(cuts_dir, "val") == cuts_dir / "cuts_val.jsonl.gz"
    with pytest.raises(FileNotFoundError, match="no cuts_train.jsonl.gz"):
        resolve_manifest(cuts_dir, "train")
    folder = SpeechCuts(cuts_dir, SR)  # the wav + txt files themselves
    manifest = SpeechCuts(cuts_dir / "cuts_val.jsonl.gz", 8000)  # resampled on the fly
    assert [folder[i]["text"] for i in range(5)] == TEXTS and folder[0]["speaker"] is None
    assert len(manifest[0]["audio"]) == len(folder[0]["audio"]) // 2


def test_reconstruction_suite_metrics_audio_and_batch_independence(svae, cuts_dir, tmp_path):
    cfg = speech_reconstruction.SpeechReconstructionConfig(save_audio=2)
    out = speech_reconstruction.run(_ctx(svae, cuts_dir, tmp_path / "a"), cfg)
    assert set(out.metrics) == {"mel_distance", "stft_distance", "si_sdr"} | ({"pesq"} if "pesq" in out.metrics
                                                                               else set())  # fmt: skip
    assert all(math.isfinite(v) for v in out.metrics.values()) and out.metrics["mel_distance"] > 0
    assert out.data["num_samples"] == 5
    wav, sr = soundfile.read(tmp_path / "a" / "speech.reconstruction" / "orig_000001.wav")
    assert sr == SR and len(wav) == int(SR * 0.525)
    assert not (tmp_path / "a" / "speech.reconstruction" / "orig_000002.wav").exists()
    shared = tmp_path / "a" / "cache"  # another --out with the same --cache-dir still gets its WAV files
    speech_reconstruction.run(_ctx(svae, cuts_dir, tmp_path / "a2", cache_dir=shared), cfg)
    assert (tmp_path / "a2" / "speech.reconstruction" / "rec_000001.wav").is_file()
    other = speech_reconstruction.run(_ctx(svae, cuts_dir, tmp_path / "b", batch_size=3, chunk_size=2), cfg)
    assert other.metrics == pytest.approx(out.metrics, rel=1e-5)
    perfect = speech_reconstruction.run(_ctx(_Identity(), cuts_dir, tmp_path / "c"), cfg)
    assert perfect.metrics["mel_distance"] == pytest.approx(0, abs=1e-6) and perfect.metrics["si_sdr"] > 60


def test_latent_stats_suite_equals_the_statistics_of_the_valid_frames(svae, cuts_dir, tmp_path):
    from unitok.eval.speech_data import SpeechCuts

    cfg = speech_latent_stats.SpeechLatentStatsConfig(split="val", latent="z", seed=3)
    out = speech_latent_stats.run(_ctx(svae, cuts_dir, tmp_path, precision="bf16"), cfg)  # encodes in fp32 still
    ds = SpeechCuts(cuts_dir / "cuts_val.jsonl.gz", SR)
    frames = []
    for i in range(len(ds)):
        wav = ds[i]["audio"]
        eps = utterance_noise((1, math.ceil(len(wav) / 400), 8), 3, i)
        frames.append(svae.encode(wav[None, None], eps=eps)["z"][0])
    flat = torch.cat(frames).double()
    saved = LatentStats.load(tmp_path / "latents_stats.pt")
    assert torch.allclose(saved.mean.flatten().double(), flat.mean(0), atol=1e-6)
    assert torch.allclose(saved.std.flatten().double(), flat.std(0), rtol=1e-5)
    assert out.data["latent_frames"] == flat.shape[0]
    speech_latent_stats.run(_ctx(svae, cuts_dir, tmp_path / "bf16", precision="bf16"), replace(cfg, bf16=True))
    assert not torch.equal(LatentStats.load(tmp_path / "bf16" / "latents_stats.pt").mean, saved.mean)


def _tiny_sv_model(path: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16, 32), tdnn_kernel=(3, 3, 1),
                      tdnn_dilation=(1, 2, 1), xvector_output_dim=16, num_buckets=32,
                      max_bucket_distance=64)  # fmt: skip
    WavLMForXVector(cfg).save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True).save_pretrained(path)
    return path


def test_speaker_similarity_is_one_for_a_perfect_tokenizer(svae, cuts_dir, tmp_path):
    sv = _tiny_sv_model(tmp_path / "sv")
    cfg = speech_speaker_similarity.SpeakerSimilarityConfig(sv_model=str(sv))
    perfect = speech_speaker_similarity.run(_ctx(_Identity(), cuts_dir, tmp_path / "a"), cfg)
    assert perfect.metrics["similarity"] == pytest.approx(1.0, abs=1e-5)
    real = speech_speaker_similarity.run(_ctx(svae, cuts_dir, tmp_path / "b"), cfg)
    assert real.metrics["similarity"] < 0.999
    with pytest.raises(FileNotFoundError, match="wavlm-base-plus-sv"):
        speech_speaker_similarity.run(
            _ctx(svae, cuts_dir, tmp_path / "c"),
            speech_speaker_similarity.SpeakerSimilarityConfig(sv_model=str(tmp_path)),
        )


def test_f5_normalisation_and_mean_of_utterance_wers():
    assert f5_normalize("Don't stop, Well-known  facts!") == "dont stop wellknown facts"
    # zhon.hanzi.punctuation too, as F5-TTS: curly quotes, full-width marks, dashes, ellipses (no space inserted)
    assert f5_normalize("“Hello”， world。") == "hello world" and f5_normalize("“Hello”，world。") == "helloworld"
    assert f5_normalize("Don’t stop — now…") == "dont stop now"
    wers = utterance_wers(["the cat sat", "a b c d", ""], ["the cat", "a b c d", "x"])
    assert wers[:2] == [pytest.approx(1 / 3), 0.0] and math.isnan(wers[2])
    with pytest.raises(ValueError, match="2 references but 1"):
        utterance_wers(["a", "b"], ["a"])


def test_intelligibility_suite_averages_per_utterance_wers(svae, cuts_dir, tmp_path, monkeypatch):
    heard = {}

    class FakeASR:
        window_seconds, identity = 30.0, "fake"

        def transcribe(self, audios):  # the reference text of the utterance of that length, one word lost when short
            texts = []
            for audio in audios:
                n = len(audio)
                text = TEXTS[round((n / SR - 0.4) / 0.125)]
                heard[n] = True
                texts.append(text if n > SR * 0.6 else " ".join(text.split()[1:]))
            return texts

    def fake_transcriber(cfg, device):
        return FakeASR()

    monkeypatch.setattr(speech_intelligibility, "load_transcriber", fake_transcriber)
    cfg = speech_intelligibility.IntelligibilityConfig()
    out = speech_intelligibility.run(_ctx(svae, cuts_dir, tmp_path), cfg)
    expected = np.mean([1 / len(f5_normalize(t).split()) if 0.4 + 0.125 * i <= 0.6 else 0.0
                        for i, t in enumerate(TEXTS)])  # fmt: skip
    assert out.metrics["wer"] == pytest.approx(expected) and out.metrics["wer_original"] == pytest.approx(expected)
    rows = [json.loads(line) for line in (tmp_path / out.artifacts["transcripts"]).read_text().splitlines()]
    assert [r["reference"] for r in rows] == TEXTS and len(heard) == 5
    stale = tmp_path / "b" / "speech.intelligibility" / "utterances" / "000007.json"  # of an earlier, larger run
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"cut_id": "old", "reference": "x", "hypothesis": "y"}) + "\n")
    for out_dir in ("a", "b"):  # one cache: the second --out still gets its transcripts
        again = speech_intelligibility.run(_ctx(svae, cuts_dir, tmp_path / out_dir, cache_dir=tmp_path / "c"), cfg)
        lines = (tmp_path / out_dir / again.artifacts["transcripts"]).read_text().splitlines()
        assert [json.loads(line)["reference"] for line in lines] == TEXTS
    FakeASR.window_seconds = 0.7  # the two longest utterances would be cut: refused before any work
    with pytest.raises(ValueError, match=r"at most 0.7 s .* 0.9 s: pass speech.intelligibility.max_seconds=0.7"):
        speech_intelligibility.run(_ctx(svae, cuts_dir, tmp_path / "long"), cfg)
    assert not (tmp_path / "long" / "speech.intelligibility").exists()
    short = speech_intelligibility.IntelligibilityConfig(max_seconds=0.7)
    assert speech_intelligibility.run(_ctx(svae, cuts_dir, tmp_path / "short"), short).metrics["wer"] >= 0
    part = speech_intelligibility.run(_ctx(svae, cuts_dir, tmp_path / "part", max_samples=3), short)  # a subset
    lines = (tmp_path / "part" / part.artifacts["transcripts"]).read_text().splitlines()
    assert len(lines) == 3 and {json.loads(line)["reference"] for line in lines} < set(TEXTS)
    with pytest.raises(FileNotFoundError, match="asr_model needs a local model directory"):
        speech_intelligibility.WhisperTranscriber(None)
    with pytest.raises(FileNotFoundError, match="whisper-large-v3"):
        speech_intelligibility.WhisperTranscriber(tmp_path)


WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of GPT-2 byte-level BPE (what Whisper's vocabulary starts with)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    rest = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(rest)}
    return [chars[b] for b in range(256)]


def _tiny_whisper(path: Path) -> dict[str, int]:
    """A random-init Whisper with a byte-only tokenizer and the released generation settings, built offline."""
    import transformers as tf

    path.mkdir(parents=True)
    vocab = {c: i for i, c in enumerate(_byte_alphabet())}
    ids = {s: len(vocab) + i for i, s in enumerate(WHISPER_SPECIALS)}
    (path / "vocab.json").write_text(json.dumps(vocab | ids))
    (path / "merges.txt").write_text("#version: 0.2\n")
    eot = ids["<|endoftext|>"]
    files = str(path / "vocab.json"), str(path / "merges.txt")
    tokenizer = tf.WhisperTokenizer(*files, unk_token=WHISPER_SPECIALS[0], bos_token=WHISPER_SPECIALS[0],
                                    eos_token=WHISPER_SPECIALS[0], pad_token=WHISPER_SPECIALS[0])  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    tf.WhisperProcessor(tf.WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(path)
    cfg = tf.WhisperConfig(vocab_size=len(vocab) + len(ids), num_mel_bins=80, d_model=32, encoder_layers=1,
                           decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_target_positions=32, eos_token_id=eot, pad_token_id=eot,
                           bos_token_id=eot, decoder_start_token_id=ids["<|startoftranscript|>"],
                           suppress_tokens=None, begin_suppress_tokens=None)  # fmt: skip
    torch.manual_seed(0)
    model = tf.WhisperForConditionalGeneration(cfg)
    model.generation_config = tf.GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        is_multilingual=True, lang_to_id={"<|en|>": ids["<|en|>"]}, max_length=16,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
    )  # fmt: skip
    model.save_pretrained(path)
    return ids


def test_intelligibility_suite_runs_a_local_whisper_with_the_english_transcription_prompt(cuts_dir, tmp_path):
    ids = _tiny_whisper(tmp_path / "whisper")
    transcriber = speech_intelligibility.WhisperTranscriber(tmp_path / "whisper", num_beams=2)
    prompts = []  # the decoder's input at its first step of each generate call

    def record(module, args, kwargs):
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is not None and tokens.shape[1] > 1:
            prompts.append(tokens[0].tolist())

    transcriber.model.model.decoder.register_forward_pre_hook(record, with_kwargs=True)
    audio = torch.from_numpy(soundfile.read(cuts_dir / "u0.wav", dtype="float32")[0])
    text = transcriber(audio)
    assert isinstance(text, str) and text == transcriber(audio)  # beam search is deterministic
    batch = [audio[: SR // 2], audio, audio.flip(0)]
    assert transcriber.transcribe(batch) == [transcriber(a) for a in batch]  # one window per utterance: batch-free
    with pytest.raises(ValueError, match="at most 30 s, got an utterance of 31.0 s"):
        transcriber.transcribe([audio, torch.zeros(31 * SR)])
    assert prompts[0] == [ids[s] for s in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")]
    assert not any(s in text for s in WHISPER_SPECIALS)

    cfg = speech_intelligibility.IntelligibilityConfig(asr_model=str(tmp_path / "whisper"), num_beams=2)
    out = speech_intelligibility.run(_ctx(_Identity(), cuts_dir, tmp_path / "run"), cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / out.artifacts["transcripts"]).read_text().splitlines()]
    assert [r["hypothesis"] for r in rows] == [r["hypothesis_original"] for r in rows]  # lossless: same transcripts
    assert rows[0]["hypothesis"] == text and out.metrics["wer"] == out.metrics["wer_original"]
    assert out.details["protocol"]["asr_model"] == str(tmp_path / "whisper")


def test_tokenizer_over_a_unitok_speech_model_samples_its_gaussian_posterior(cuts_dir, tmp_path):
    import unitok

    torch.manual_seed(0)
    model = unitok.create_model("unitok_speech_tiny_p320_d64", bottleneck="gaussian").eval()
    tok = SpeechTokenizer(model)
    assert tok.latent_rate == 50 and tok.hop_length == 320
    audio = torch.randn(2, 3200) * 0.1
    lengths = torch.tensor([3200, 1600])
    out = tok.encode(audio, lengths, [4, 9], seed=1)
    post = model.posterior(audio, lengths)
    assert torch.equal(out["mean"], post["mean"]) and out["frames"].tolist() == [10, 5]
    assert not torch.equal(out["z"], out["mean"]) and out["z"][1, 5:].abs().sum() == 0
    again = tok.encode(audio[1:, :1600], lengths[1:], [9], seed=1)
    assert torch.allclose(again["z"][0], out["z"][1, :5], atol=1e-5)  # seeded by the utterance, not the batch
    metrics = speech_reconstruction.run(
        _ctx(model, cuts_dir, tmp_path), speech_reconstruction.SpeechReconstructionConfig()
    )
    assert math.isfinite(metrics.metrics["mel_distance"])


def test_tokenizer_refuses_a_model_that_is_not_a_speech_tokenizer():
    with pytest.raises(ValueError, match="Linear is not a speech tokenizer .no encode / decode.: pass a Semantic-VAE"):
        SpeechTokenizer(torch.nn.Linear(2, 2))

    class ImageCodec(torch.nn.Module):
        def encode(self, x):
            return x

        def decode(self, z):
            return z

    with pytest.raises(ValueError, match="ImageCodec is not a speech tokenizer .no sample_rate."):
        SpeechTokenizer(ImageCodec())


@pytest.fixture(scope="module")
def espeak_dir(tmp_path_factory):
    """cuts_val.jsonl.gz of the embedded espeak-ng corpus: 2 held-out sentences x 2 voices."""
    from unitok.modalities.speech.toy import write_toy_corpus

    root = tmp_path_factory.mktemp("espeak")
    write_toy_corpus(root, num_train=1, num_val=2, voices=["en-us+f5", "en-us+m1"], progress=False)
    return root


class _Noise(_Identity):
    """A useless 'tokenizer': white noise of the utterance's length and level, whatever the input."""

    def decode(self, latents, lengths):
        audio = latents.flatten(1)
        g = torch.Generator().manual_seed(0)
        return torch.randn(audio.shape, generator=g) * audio.std(dim=1, keepdim=True)


def test_offline_asr_and_speaker_model_tell_a_perfect_from_a_useless_tokenizer(espeak_dir, tmp_path):
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("resemblyzer")
    asr = speech_intelligibility.IntelligibilityConfig(asr="pocketsphinx")
    perfect = speech_intelligibility.run(_ctx(_Identity(), espeak_dir, tmp_path / "a"), asr)
    noise = speech_intelligibility.run(_ctx(_Noise(), espeak_dir, tmp_path / "b"), replace(asr, reference_audio=False))
    assert perfect.metrics["wer"] == perfect.metrics["wer_original"] and "wer_original" not in noise.metrics
    assert perfect.metrics["wer"] < 0.9 and noise.metrics["wer"] > 0.95  # it hears words in espeak-ng speech
    assert perfect.details["protocol"]["asr_model"].startswith("pocketsphinx")
    asr_model = speech_intelligibility.load_transcriber(asr, "cpu")
    clips = [torch.from_numpy(soundfile.read(f, dtype="float32")[0]) for f in sorted(espeak_dir.rglob("*.wav"))[:2]]
    assert asr_model.transcribe(clips) == asr_model.transcribe(clips[::-1])[::-1]  # no state between utterances

    sv = speech_speaker_similarity.SpeakerSimilarityConfig(sv="resemblyzer")
    same = speech_speaker_similarity.run(_ctx(_Identity(), espeak_dir, tmp_path / "c"), sv)
    lost = speech_speaker_similarity.run(_ctx(_Noise(), espeak_dir, tmp_path / "d"), sv)
    assert same.metrics["similarity"] == pytest.approx(1.0, abs=1e-5) and lost.metrics["similarity"] < 0.8
    assert same.details["protocol"]["sv_model"].startswith("resemblyzer")


def test_offline_backends_are_chosen_by_name_and_refuse_a_model_path(espeak_dir, tmp_path):
    ctx = _ctx(_Identity(), espeak_dir, tmp_path)
    with pytest.raises(ValueError, match="asr must be 'whisper' or 'pocketsphinx', got 'vosk'"):
        speech_intelligibility.run(ctx, speech_intelligibility.IntelligibilityConfig(asr="vosk"))
    with pytest.raises(ValueError, match="asr=pocketsphinx uses its bundled model: drop asr_model"):
        speech_intelligibility.run(ctx, speech_intelligibility.IntelligibilityConfig(asr="pocketsphinx", asr_model="x"))
    with pytest.raises(ValueError, match="sv must be 'transformers' or 'resemblyzer', got 'ecapa'"):
        speech_speaker_similarity.run(ctx, speech_speaker_similarity.SpeakerSimilarityConfig(sv="ecapa"))
    with pytest.raises(ValueError, match="sv=resemblyzer uses its bundled model: drop sv_model"):
        speech_speaker_similarity.run(ctx, speech_speaker_similarity.SpeakerSimilarityConfig(sv="resemblyzer",
                                                                                             sv_model="x"))  # fmt: skip


def test_released_semantic_vae_folder_is_evaluated_and_refuses_to_store_statistics(svae, tmp_path):
    from unitok.eval.checkpoints import load_checkpoint_for_eval

    released = tmp_path / "released"  # metainfo.json + dac/weights.pth (online weights), no config.json
    (released / "dac").mkdir(parents=True)
    (released / "metainfo.json").write_text(json.dumps({k: v for k, v in svae.config.to_dict().items()
                                                          if k != "model_type"}))  # fmt: skip
    torch.save(svae.state_dict(), released / "dac" / "weights.pth")
    ckpt = load_checkpoint_for_eval(released)
    assert ckpt.kind == "pretrained_dir" and ckpt.name == "released"
    assert ckpt.identity["file"] == str((released / "dac" / "weights.pth").resolve())
    assert all(torch.equal(v, svae.state_dict()[k]) for k, v in ckpt.model.state_dict().items())
    ema = {f"ema_model.{k}": v + 1 for k, v in svae.state_dict().items()}
    torch.save(ema, released / "dac" / "ema_state_dict.pth")  # the EMA weights are read when present
    with_ema = load_checkpoint_for_eval(released)
    assert with_ema.identity["file"] == str((released / "dac" / "ema_state_dict.pth").resolve())
    ctx = EvalContext(ckpt, str(tmp_path / "no_data"), tmp_path / "out", EvalOptions(progress=False))
    cfg = speech_latent_stats.SpeechLatentStatsConfig(split="val", store_in_checkpoint=True)
    with pytest.raises(FileNotFoundError, match="not a pretrained directory.*missing config.json, model.safetensors"):
        speech_latent_stats.run(ctx, cfg)  # before reading any data


def test_reconstruction_mel_distance_uses_the_model_sample_rate():
    from unitok.modalities.speech.losses import MelLossConfig, MelSpectrogramLoss

    torch.manual_seed(0)
    x, y = torch.randn(1, 1, 24000), torch.randn(1, 1, 24000)
    mel = speech_reconstruction._metric_fns(speech_reconstruction.SpeechReconstructionConfig(), 24000)[0]
    assert mel(x, y) == MelSpectrogramLoss(MelLossConfig(sample_rate=24000))(x, y)
    assert mel(x, y) != MelSpectrogramLoss()(x, y)  # the 16 kHz filters


def test_to_16k_resamples_as_torchaudio_with_one_kernel_per_rate():
    import torchaudio

    from unitok.eval.suites.speech_common import _resampler_to_16k, to_16k

    audio = torch.randn(24000)
    assert torch.allclose(to_16k(audio, 24000), torchaudio.functional.resample(audio, 24000, 16000), atol=1e-6)
    assert to_16k(audio, 16000) is audio
    hits = _resampler_to_16k.cache_info().hits
    to_16k(audio[:1000], 24000)
    assert _resampler_to_16k.cache_info().hits == hits + 1


@pytest.mark.parametrize("suite", [speech_intelligibility, speech_speaker_similarity, speech_latent_stats])
def test_every_speech_suite_refuses_an_unknown_latent_before_loading_models(suite, svae, tmp_path):
    cfg_class = next(v for k, v in vars(suite).items() if k.endswith("Config") and isinstance(v, type))
    with pytest.raises(ValueError, match="latent must be 'mean' or 'z', got 'x'"):
        suite.run(_ctx(svae, tmp_path / "no_data", tmp_path), cfg_class(latent="x"))
