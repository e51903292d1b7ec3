"""The speech tokenizer and its tasks: model API and checkpoints, each objective alone (cost and gradients), 1-D crops
and iBOT masks on valid frames, WavLM alignment from a local directory, the Gaussian KL, the GAN phases, and a few
real Trainer steps on synthetic audio (sines and noise with made-up transcripts)."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

import unitok
from unitok.config import build_config
from unitok.engine.optim import OptimConfig
from unitok.engine.trainer import TrainConfig, Trainer
from unitok.losses.compose import LossComposer
from unitok.losses.regularizers import gaussian_kl
from unitok.modalities.speech.crops import AudioMultiCrop, AudioMultiCropConfig
from unitok.modalities.speech.speech_gan_task import SpeechGANTask, SpeechGANTaskConfig
from unitok.modalities.speech.speech_task import SpeechTask, SpeechTaskConfig, build_speech_task
from unitok.modalities.speech.teachers import SSLTeacher, SSLTeacherConfig
from unitok.modalities.speech.vtp_speech import SpeechTokenizerModel
from unitok.train import build_task, load_run_config

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "debug"
PRESET = "unitok_speech_tiny_p320_d64"
TINY = {"encoder": {"depth": 1}, "decoder": {"depth": 1}, "text": {"depth": 1, "context_length": 16}}
SR = 16000
TASK = {  # a CPU-sized task: small head, short crops, short FFTs
    "head_prototypes": 64, "head_hidden": 32, "head_bottleneck": 16,
    "crops": {"global_seconds": 0.2, "local_seconds": 0.06, "n_local": 2},
    "reconstruction": {"mel_fft_sizes": [64, 128, 256], "mel_bins": [10, 20, 40], "stft_fft_sizes": [256, 128]},
}  # fmt: skip
TERMS = ("clip", "dino", "ibot", "koleo", "rec_mel", "rec_stft", "rec_l1", "rec_sisdr", "kl", "align")


def tiny_model(seed: int = 0, **overrides) -> SpeechTokenizerModel:
    torch.manual_seed(seed)
    return unitok.create_model(PRESET, **{**TINY, "bottleneck": "gaussian", **overrides})


def synthetic_batch(batch: int = 4, seconds: float = 0.3, seed: int = 0) -> dict:
    """Sines of different pitches plus a little noise, lengths from 1/3 of the clip to all of it, transcripts."""
    g = torch.Generator().manual_seed(seed)
    T = int(seconds * SR)
    t = torch.arange(T) / SR
    freqs = 110 * 2 ** (torch.arange(batch) / 3)
    audio = 0.4 * torch.sin(2 * math.pi * freqs[:, None] * t) + 0.01 * torch.randn(batch, T, generator=g)
    lens = torch.linspace(T // 3, T, batch).long()
    audio = audio * (torch.arange(T)[None] < lens[:, None])
    return {"audio": audio, "audio_lens": lens, "text": [f"a tone of {int(f)} hertz" for f in freqs]}


def weights(*active: str) -> LossComposer:
    return LossComposer({"terms": {t: {"weight": 1.0 if t in active else 0.0} for t in TERMS}})


def make_task(*active: str, wavlm=None, model=None, **params) -> SpeechTask:
    cfg = build_config(SpeechTaskConfig, TASK, {"teacher": {"path": str(wavlm) if wavlm else None}}, params)
    return SpeechTask(model or tiny_model(), weights(*active), cfg, total_steps=100)


# ---------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("bottleneck", ["linear", "gaussian"])
def test_encode_decode_shapes_lengths_and_latent_rate(bottleneck):
    model = tiny_model(bottleneck=bottleneck).eval()
    batch = synthetic_batch(3, seconds=0.25)
    audio, lens = batch["audio"], batch["audio_lens"]
    assert model.latent_rate == 50.0 and model.sample_rate == SR and model.hop_length == 320
    z = model.encode(audio[:, None], lens)  # (B, 1, T) and (B, T) both work
    assert z.shape == (3, math.ceil(4000 / 320), 64) and torch.equal(z, model.encode(audio, lens))
    frames = model.frames(lens)
    assert all(bool((z[b, frames[b] :] == 0).all()) and bool(z[b, frames[b] - 1].abs().sum() > 0) for b in range(3))
    assert torch.allclose(model.encode(audio[:1, : lens[0]]), z[:1, : frames[0]], atol=1e-5)  # padding is invisible
    wave = model.decode(z, lens)
    assert wave.shape == (3, 1, int(lens.max())) and bool((wave[0, 0, lens[0] :] == 0).all())
    assert model.decode(z).shape == (3, 1, z.shape[1] * 320)
    posterior = model.posterior(audio, lens)
    assert ("logvar" in posterior) == (bottleneck == "gaussian") and torch.equal(posterior["frames"], frames)
    if bottleneck == "gaussian":
        assert not torch.equal(model.encode(audio, lens, sample=True), z)
    slower = SpeechTokenizerModel({**model.config.__dict__, "frame_size": 400})
    assert slower.latent_rate == 40.0 and slower.encode(audio, lens).shape[1] == math.ceil(4000 / 400)


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (
        cfg["model_type"] == "unitok_speech" and cfg["preset"] == PRESET and cfg["config"]["bottleneck"] == "gaussian"
    )
    loaded = unitok.load_pretrained(tmp_path)
    assert isinstance(loaded, SpeechTokenizerModel) and loaded.config == model.config
    batch = synthetic_batch(2)
    assert torch.equal(
        loaded.encode(batch["audio"], batch["audio_lens"]), model.encode(batch["audio"], batch["audio_lens"])
    )
    tok = loaded.get_tokenizer()(batch["text"])
    assert torch.equal(loaded.get_clip_text_feature(tok), model.get_clip_text_feature(tok))
    cfg["model_type"] = "vtp"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a unitok speech tokenizer"):
        SpeechTokenizerModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- objectives
def _calls(module) -> list[int]:
    calls = [0]
    if module is not None:
        module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _has_grad(module) -> bool:
    return module is not None and any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


# term -> parts that must get gradients; every other part must get none (and the decoder / text tower / head /
# projector / WavLM must not even run unless listed)
EXPECTED = {
    "clip": {"encoder", "text", "audio_proj"},
    "dino": {"encoder", "head"},
    "ibot": {"encoder", "head"},
    "koleo": {"encoder"},
    "rec_mel": {"encoder", "bottleneck", "decoder"},
    "rec_stft": {"encoder", "bottleneck", "decoder"},
    "rec_l1": {"encoder", "bottleneck", "decoder"},
    "rec_sisdr": {"encoder", "bottleneck", "decoder"},
    "kl": {"encoder", "bottleneck"},
    "align": {"encoder", "bottleneck", "projector"},
}


@pytest.mark.parametrize("term", TERMS)
def test_each_objective_alone_is_finite_and_moves_only_its_parts(term, wavlm_dir):
    task = make_task(term, wavlm=wavlm_dir if term == "align" else None)
    m = task.student.model
    parts = {"encoder": m.autoencoder.encoder, "bottleneck": m.autoencoder.bottleneck, "decoder": m.autoencoder.decoder,
             "text": m.text, "audio_proj": m.audio_proj, "head": task.student.head,
             "projector": task.student.projector}  # fmt: skip
    calls = {name: _calls(parts[name]) for name in ("decoder", "text", "head", "projector")}
    wavlm = _calls(task.ssl_teacher)
    task.train()
    loss, report = task.training_forward(synthetic_batch(), step=0)
    loss.backward()
    assert torch.isfinite(loss) and report[f"{term}_loss"] == pytest.approx(report["loss"], rel=1e-5)
    assert {k for k in report if k.endswith("_loss") and "/" not in k} == {f"{term}_loss"}  # nothing else computed
    expected = EXPECTED[term]
    for name, module in parts.items():
        assert _has_grad(module) == (name in expected), f"{term}: gradient of {name}"
    for name, count in calls.items():
        ran = name in expected or (name == "head" and term == "koleo")  # KoLeo reads the CLS, the head still runs
        assert (count[0] > 0) == ran, f"{term}: {name} ran {count[0]} times"
    assert (wavlm[0] > 0) == (term == "align")
    assert (task.teacher is not None) == (term in ("dino", "ibot", "koleo"))
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert any(n.startswith("text.") for n in frozen) == (term != "clip")  # unreached parts are out of the optimiser


def test_crops_are_windows_of_the_valid_samples():
    audio = torch.arange(2 * 4000, dtype=torch.float32).view(2, 4000)
    lens = torch.tensor([4000, 1000])
    crops = AudioMultiCrop(AudioMultiCropConfig(0.15, 0.04, n_local=3, gain_db=0.0), SR, 320)
    out = crops(audio, lens, generator=torch.Generator().manual_seed(0))
    assert out["global_crops"].shape == (4, 2560) and out["local_crops"].shape == (6, 640)
    assert out["global_lens"].tolist() == [2560, 1000, 2560, 1000] and out["local_lens"].tolist() == [640, 640] * 3
    for crop, n, b in zip(out["global_crops"], out["global_lens"], [0, 1, 0, 1], strict=True):
        start = int(crop[0]) - b * 4000
        assert start % 320 == 0 and torch.equal(crop[:n], audio[b, start : start + n]) and not crop[n:].any()


def test_ibot_masks_only_valid_frames_and_the_teacher_sees_the_same_tokens():
    task = make_task("ibot", mask_probability=1.0, mask_ratio_min=0.3, mask_ratio_max=0.6)
    seen = {}
    task.teacher.register_forward_pre_hook(lambda mod, args: seen.update(teacher=args[0]))
    batch = synthetic_batch(4, seconds=0.3)
    batch["audio_lens"] = torch.tensor([4800, 900, 1500, 4800])  # two clips shorter than the 0.2 s global crops
    inputs, _ = task._inputs(batch)
    masks, lens = inputs["ibot_masks"], inputs["ssl_global_lens"]
    valid = torch.arange(masks.shape[1])[None] < task.student.model.frames(lens)[:, None]
    assert masks.any() and not (masks & ~valid).any()
    out = task.student(inputs)
    task._ssl_terms(inputs, out, step=0)
    assert torch.equal(seen["teacher"]["teacher_masks"], masks) and "ibot_masks" not in seen["teacher"]
    assert torch.equal(seen["teacher"]["ssl_global_lens"], lens)


# ---------------------------------------------------------------------------------------------- alignment
def test_wavlm_teacher_from_a_local_directory(wavlm_dir, tmp_path):
    batch = synthetic_batch(2, seconds=0.25)
    last = SSLTeacher(SSLTeacherConfig(path=str(wavlm_dir), layer=-1))
    first = SSLTeacher(SSLTeacherConfig(path=str(wavlm_dir), layer=0))
    feats, frames = last(batch["audio"], batch["audio_lens"])
    assert feats.shape == (2, 12, 32) and frames.tolist() == [
        (n - 400) // 320 + 1 for n in batch["audio_lens"].tolist()
    ]
    assert not torch.allclose(first(batch["audio"], batch["audio_lens"])[0], feats)
    assert not any(p.requires_grad for p in last.parameters()) and not last.train().model.training
    lengths, want = torch.arange(0, 3000, 7), torch.arange(0, 3000, 7)
    for kernel, stride in zip(last.model.config.conv_kernel, last.model.config.conv_stride, strict=True):
        want = torch.div(want - kernel, stride, rounding_mode="floor") + 1
    assert torch.equal(last.frame_lengths(lengths), want.clamp_min(0))  # the conv arithmetic, none negative
    with pytest.raises(FileNotFoundError, match="wavlm-large.*nowhere"):
        SSLTeacher(SSLTeacherConfig(path=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        SSLTeacher(SSLTeacherConfig(path=str(wavlm_dir), layer=5))


def test_alignment_loss_is_the_masked_negative_cosine_to_projected_teacher_features(wavlm_dir):
    task = make_task("align", wavlm=wavlm_dir, sample_latents=False)  # the mean: deterministic
    assert not [k for k in task.state_dict() if k.startswith("ssl_teacher.")]  # never saved in checkpoints
    batch = synthetic_batch(3)
    inputs, (audio, lens) = task._inputs(batch)
    out = task.student(inputs)
    frames = task.student.model.frames(lens)
    feats, _ = task.ssl_teacher(audio, lens)
    assert torch.equal(inputs["ssl_features"], feats) and out["align_target"].shape == out["z"].shape
    assert not out["align_target"][2, frames[2] :].any()  # projected targets are zero past the clip
    cos = torch.nn.functional.cosine_similarity(out["z"], out["align_target"], dim=-1)
    want = torch.stack([-cos[b, : frames[b]].mean() for b in range(3)]).mean().detach()
    _, report = task.training_forward(batch, step=0)
    assert report["align_loss"] == pytest.approx(want.item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------- Gaussian bottleneck
def test_gaussian_kl_matches_semantic_vae_and_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    upstream = (-0.5 * torch.sum(1 + logvar - mean.pow(2) - (logvar.exp() + 1e-6), dim=-1)).mean()  # Semantic-VAE
    assert gaussian_kl(mean, logvar) == pytest.approx(float(upstream), rel=1e-6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    per_frame = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert gaussian_kl(mean, logvar, mask) == pytest.approx(float(per_frame[mask].mean()), abs=1e-5)
    model = tiny_model()
    with torch.no_grad():
        model.autoencoder.bottleneck_logvar.weight.fill_(10.0)
    feats = torch.randn(1, 4, 64).abs()
    _, lv = model.autoencoder.posterior(feats)
    assert float(lv.max()) == 12.0 and float(model.autoencoder.posterior(-feats)[1].min()) == -12.0  # Semantic-VAE


def test_configuration_mistakes_are_named():
    with pytest.raises(ValueError, match="bottleneck is linear"):
        make_task("kl", model=tiny_model(bottleneck="linear"))
    with pytest.raises(FileNotFoundError, match="task.params.teacher.path"):
        make_task("align")
    cfg = load_run_config(RECIPES / "speech_tiny.yaml")
    with pytest.raises(ValueError, match="losses.terms"):
        build_speech_task(cfg, tiny_model(), {"reconstruction": {"mel_weight": 2.0}})


# ---------------------------------------------------------------------------------------------- training
class SyntheticSpeech(torch.utils.data.Dataset):
    """Clips of sines and noise of different lengths with transcripts (map-style, for the Trainer)."""

    def __init__(self, n: int = 8, seconds: float = 0.25):
        batch = synthetic_batch(n, seconds)
        self.items = [{"audio": a, "audio_lens": n_, "text": t}
                      for a, n_, t in zip(batch["audio"], batch["audio_lens"], batch["text"], strict=True)]  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _train_cfg(steps: int, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, precision="fp32", device="cpu", progress=False, log_every=1,
                       ckpt_every=1000, **kw)  # fmt: skip


def test_trainer_steps_reduce_the_reconstruction_loss(tmp_path):
    from unitok.engine.logging import read_metrics

    task = make_task("rec_mel", "rec_l1", "kl", "clip", "dino")
    optim = OptimConfig(lr=2e-3, min_lr=2e-3, weight_decay=0.0, weight_decay_end=0.0, grad_clip=3.0)
    trainer = Trainer(task, SyntheticSpeech(), default_collate, optim, _train_cfg(12), tmp_path)
    teacher0 = task.teacher.head.mlp[0].weight.clone()
    trainer.fit()
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "rec_mel_loss" in r]
    first, last = rows[0], rows[-1]
    assert len(rows) == 12 and last["rec_mel_loss"] < 0.85 * first["rec_mel_loss"], (first, last)
    assert all(math.isfinite(v) for v in last.values() if isinstance(v, float)) and "skipped" not in last
    teacher = task.teacher.head.mlp[0].weight
    assert not torch.equal(teacher, teacher0) and not torch.equal(teacher, task.student.head.mlp[0].weight)  # EMA
    assert (tmp_path / "checkpoints").is_dir()


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech_stage1")
    tiny_model(seed=1).save_pretrained(path)
    return path


def _gan_task(stage1: Path, **params) -> SpeechGANTask:
    cfg = build_config(SpeechGANTaskConfig, {
        "init_from": str(stage1), "reconstruction": TASK["reconstruction"],
        "adversarial": {"disc_start": 1},
        "discriminator": {"periods": [2, 3], "fft_sizes": [256, 128], "period_channels": [4, 8, 8, 8, 8],
                          "band_channels": 4},
    }, params)  # fmt: skip
    composer = LossComposer({"terms": {"rec_mel": {"weight": 15.0}, "rec_l1": {"weight": 1.0}}})
    return SpeechGANTask(tiny_model(seed=2), composer, cfg)


def _same(before, params) -> bool:
    return all(torch.equal(a, p) for a, p in zip(before, params, strict=True))


def test_gan_phases_move_only_their_own_parameters(stage1, tmp_path):
    task = _gan_task(stage1)
    loaded = unitok.load_pretrained(stage1).state_dict()
    assert all(torch.equal(v, task.student.model.state_dict()[k]) for k, v in loaded.items())  # init_from
    trainer = Trainer(task, SyntheticSpeech(), default_collate, OptimConfig(lr=1e-3), _train_cfg(2), tmp_path)
    gen, disc = trainer.phases
    student = [p for p in task.student.parameters() if p.requires_grad]
    critic = list(task.discriminator.parameters())
    assert {id(p) for p in student} == {id(p) for p in gen.params()}
    assert {id(p) for p in critic} == {id(p) for p in disc.params()}
    assert all(n.startswith("autoencoder.decoder") for n, p in task.student.model.named_parameters() if p.requires_grad)
    seen = {}

    def watch(phase, name, other):
        phase.optimizer.register_step_pre_hook(
            lambda *_: seen.update(
                {name: [p.detach().clone() for p in other], f"{name}_grads": [p.grad for p in other]}
            )
        )
        phase.optimizer.register_step_post_hook(lambda *_: seen.update({f"{name}_kept": _same(seen[name], other)}))

    watch(gen, "gen", critic)
    watch(disc, "disc", student)
    encoder0 = {k: v.clone() for k, v in task.student.model.state_dict().items() if "decoder" not in k}
    critic0 = [p.detach().clone() for p in critic]
    batches = trainer._batches()
    report = trainer.train_step(batches)  # step 0 < disc_start: no GAN term, no discriminator step
    assert "gan_loss" not in report and _same(critic0, critic) and "disc" not in seen
    report = trainer.train_step(batches)  # G step (D frozen, no D gradient), then D step (G untouched)
    assert {"gan_loss", "gan_g", "gan_fm", "disc_loss", "aux_grad_norm"} <= set(report)
    assert seen["gen_kept"] and all(g is None for g in seen["gen_grads"])
    assert seen["disc_kept"] and all(g is None for g in seen["disc_grads"])
    assert not _same(critic0, critic)
    for k, v in task.student.model.state_dict().items():
        if k in encoder0:
            assert torch.equal(v, encoder0[k]), f"{k} moved although frozen"


def test_gan_stage_names_a_missing_or_different_stage1(stage1, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _gan_task(tmp_path / "nowhere")
    cfg = build_config(SpeechGANTaskConfig, {"init_from": str(stage1)})
    with pytest.raises(ValueError, match="different architecture.*decoder"):
        SpeechGANTask(tiny_model(decoder={"depth": 2}), LossComposer({"terms": {"rec_mel": {}}}), cfg)
    with pytest.raises(ValueError, match="encoder is frozen"):
        SpeechGANTask(tiny_model(), LossComposer({"terms": {"rec_mel": {}, "kl": {}}}), cfg)
    trained = _gan_task(stage1, train_encoder=True)
    assert all(p.requires_grad for p in trained.student.model.autoencoder.encoder.parameters())
    assert not any(p.requires_grad for p in trained.student.model.text.parameters())


# ---------------------------------------------------------------------------------------------- recipes
def test_debug_recipe_builds_its_task_and_trains_on_a_batch():
    cfg = load_run_config(RECIPES / "speech_tiny.yaml", ["task.params.head_prototypes=64", "task.params.head_hidden=32",
                          "task.params.crops.global_seconds=0.2", "task.params.crops.local_seconds=0.06"])  # fmt: skip
    task = build_task(cfg)
    assert isinstance(task, SpeechTask) and task.student.model.is_gaussian and task.teacher is not None
    loss, report = task.training_forward(synthetic_batch(4), step=0)
    assert torch.isfinite(loss)
    for term in ("clip", "dino", "ibot", "koleo", "rec_mel", "rec_stft", "rec_l1", "kl"):
        assert f"{term}_loss" in report, term
    assert "align_loss" not in report and task.ssl_teacher is None


def test_debug_gan_recipe_starts_from_a_stage1_export(tmp_path):
    stage1 = build_task(load_run_config(RECIPES / "speech_tiny.yaml"))
    stage1.export_model().save_pretrained(tmp_path / "model")  # what unitok-train writes at the end of stage 1
    cfg = load_run_config(RECIPES / "speech_tiny_gan.yaml", [f"task.params.init_from={tmp_path}"])
    task = build_task(cfg)
    assert isinstance(task, SpeechGANTask) and task.init_source.startswith(str(tmp_path / "model"))
    cache = {}
    loss, report = task.training_forward(synthetic_batch(2), cfg.task.params["adversarial"]["disc_start"], cache)
    disc_loss, disc_report = task.aux_forward(synthetic_batch(2), 0, cache)
    assert torch.isfinite(loss) and torch.isfinite(disc_loss) and {"gan_fm", "gan_g", "rec_mel_loss"} <= set(report)
    assert disc_report["disc_loss"] > 0


def test_debug_recipes_train_end_to_end_when_the_toy_corpus_is_registered(tmp_path):
    from unitok.registry import DATASETS
    from unitok.train import main

    if "speech_toy" not in DATASETS:
        pytest.skip("data set 'speech_toy' is not registered yet (written by the speech-data work)")
    data = [
        f"data.params.root={tmp_path / 'toy'}",
        "data.params.num_train=20",
        "data.params.num_val=5",
        "data.params.max_duration=8.0",
    ]  # 4 clips of 2 s per batch (the batches come from the data)
    small = ["train.steps=2", "train.progress=false", "task.params.head_prototypes=64", "task.params.ssl_batch=2",
             "task.params.rec_batch=2", *data]  # fmt: skip
    main([str(RECIPES / "speech_tiny.yaml"), f"run_dir={tmp_path / 's1'}", *small])
    gan = ["train.steps=2", "train.progress=false", "task.params.adversarial.disc_start=1", *data]
    gan += [f"run_dir={tmp_path / 's2'}", f"task.params.init_from={tmp_path / 's1'}"]
    main([str(RECIPES / "speech_tiny_gan.yaml"), *gan])
    assert isinstance(unitok.load_pretrained(tmp_path / "s2" / "model"), SpeechTokenizerModel)
