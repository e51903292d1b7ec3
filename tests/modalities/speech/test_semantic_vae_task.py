"""The semantic_vae training task: loss terms, phase order and isolation, real trainer steps, resume, registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, default_collate

import unitok
from unitok.engine.trainer import Trainer
from unitok.modalities.speech.semantic_vae import SemanticVAE, create_semantic_vae
from unitok.modalities.speech.semantic_vae_config import SEMANTIC_VAE_PRESETS
from unitok.modalities.speech.semantic_vae_io import EMA_PREFIX
from unitok.modalities.speech.semantic_vae_task import TERMS, SemanticVAETask
from unitok.registry import DATASETS
from unitok.train import build_task, load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "recipes" / "debug" / "semantic_vae_tiny.yaml"
T = 4000  # 0.25 s: enough for the 2048-sample mel / MRD windows, 10 latent frames
FAST = ["train.batch_size=2", "train.progress=false", "train.log_every=1", "train.device=cpu",
        "task.params.pad_to_seconds=null"]  # fmt: skip


class Sines(Dataset):
    """Synthetic speech-like batches: one sine per clip (frequency and amplitude from the index)."""

    def __init__(self, n: int = 64, length: int = T, sample_rate: int = 16000):
        self.n, self.length, self.sample_rate = n, length, sample_rate

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        freq, amp = 100 + 400 * torch.rand(1, generator=g).item(), 0.3 + 0.3 * torch.rand(1, generator=g).item()
        t = torch.arange(self.length) / self.sample_rate
        return {"audio": amp * torch.sin(2 * math.pi * freq * t), "audio_lens": self.length, "text": f"{freq:.0f} Hz"}


def _cfg(*overrides: str):
    return load_run_config(TINY, [*FAST, *overrides])


def _trainer(run_dir=None, *overrides: str) -> tuple[Trainer, SemanticVAETask]:
    cfg = _cfg(*overrides)
    task = build_task(cfg)
    return Trainer(task, Sines(), default_collate, cfg.optim, cfg.train, run_dir), task


def _batch(n: int = 2) -> dict:
    return default_collate([Sines()[i] for i in range(n)])


# ---------------------------------------------------------------------------------------------------- registry
def test_presets_are_registered_models():
    assert set(unitok.list_models("*_vae_*")) == set(SEMANTIC_VAE_PRESETS)
    model = unitok.create_model("semantic_vae_tiny", dac={"distill": False})
    assert isinstance(model, SemanticVAE) and model.projectors is not None and not model.config.dac.distill


def test_load_pretrained_round_trips_saved_and_released_layouts(tmp_path):
    torch.manual_seed(0)
    model = create_semantic_vae("semantic_vae_tiny")
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "semantic_vae"
    released = tmp_path / "released"  # metainfo.json + dac/ema_state_dict.pth; config.json holds argbind params
    (released / "dac").mkdir(parents=True)
    meta = {k: v for k, v in model.config.to_dict().items() if k != "model_type"}
    (released / "metainfo.json").write_text(json.dumps(meta))
    (released / "config.json").write_text(json.dumps({"DAC.vae_dim": 8, "batch_size": 24}))
    ema = {EMA_PREFIX + k: v.clone() + 1 for k, v in model.state_dict().items()}
    torch.save({**ema, "initted": torch.tensor(True), "step": torch.tensor(7)}, released / "dac" / "ema_state_dict.pth")
    want = model.state_dict()
    saved, rel = unitok.load_pretrained(tmp_path / "saved"), unitok.load_pretrained(released)
    assert isinstance(saved, SemanticVAE) and isinstance(rel, SemanticVAE) and saved.latent_stats is None
    got_saved, got_released = saved.state_dict(), rel.state_dict()
    assert all(torch.equal(got_saved[k], v) for k, v in want.items())
    assert all(torch.equal(got_released[k], v + 1) for k, v in want.items())
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'model_type'.*metainfo.json"):
        unitok.load_pretrained(tmp_path / "bare")


# ---------------------------------------------------------------------------------------------------- loss terms
def _weights(**changes: float) -> list[str]:
    return [f"losses.terms.{name}.weight={w}" for name, w in changes.items()]


@pytest.mark.parametrize("term", TERMS)
def test_each_term_switches_off_with_weight_zero(term):
    extra = ["model.overrides.dac.distill=false"] if term == "align" else []
    cfg = _cfg(*_weights(**{term: 0.0}), *extra)
    task = build_task(cfg).train()
    torch.manual_seed(1)
    loss, report = task.training_forward(_batch(), step=0, cache={})
    weights = {t: w.weight for t, w in cfg.losses.terms.items()}
    assert weights[term] == 0 and report[f"weight/{term}_loss"] == 0 if f"{term}_loss" in report else True
    expected = sum(weights[t] * report[f"{t}_loss"] for t in TERMS if f"{t}_loss" in report)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    present = {t for t in TERMS if f"{t}_loss" in report}
    if term in ("mel", "stft", "waveform", "kl"):  # logged at weight 0 (upstream logs stft / L1 so), not optimised
        assert term in present
    elif term == "align":
        assert "align" not in present and task.ssl_teacher is None
    else:
        assert term not in present
    assert present | {term} == set(TERMS)


def test_logged_only_terms_are_computed_without_autograd():
    task = build_task(_cfg()).train()  # stft and waveform at weight 0 (logged), mel optimised
    real = task.audio(_batch())
    fake = real.clone().requires_grad_(True)
    terms = task._reconstruction_terms({"audio": fake, "kl_loss": torch.tensor(0.0)}, real)
    assert terms["mel_loss"].requires_grad
    assert not terms["stft_loss"].requires_grad and not terms["waveform_loss"].requires_grad


def test_without_adversarial_terms_the_task_has_one_phase():
    task = build_task(_cfg(*_weights(adv_gen=0.0, adv_feat=0.0)))
    assert task.discriminator is None and task.trainable == ("generator",) and not task.aux_trainable
    Trainer(task, Sines(), default_collate, _cfg().optim, _cfg().train, None).train_step(iter([_batch()]))


def test_alignment_and_distill_must_agree_and_unknown_terms_are_named():
    with pytest.raises(ValueError, match="distill=false"):
        build_task(_cfg(*_weights(align=0.0)))
    with pytest.raises(ValueError, match="distill=true"):
        build_task(_cfg("model.overrides.dac.distill=false"))
    with pytest.raises(ValueError, match="unknown Semantic-VAE loss term"):
        build_task(_cfg("losses.terms.mell.weight=1.0"))
    with pytest.raises(FileNotFoundError, match="wavlm-large"):
        build_task(_cfg("task.params.ssl.source=teacher"))
    task = build_task(_cfg("task.params.ssl.source=batch")).train()
    with pytest.raises(KeyError, match="ssl_features"):
        task.training_forward(_batch(), 0, {})
    batch = {**_batch(), "ssl_features": torch.randn(2, 12, 32), "ssl_lens": torch.tensor([12, 6])}
    _, report = task.training_forward(batch, 0, {})
    assert report["align_loss"] > -1


# ---------------------------------------------------------------------------------------------------- phases
def test_discriminator_first_sees_the_same_reconstruction_as_the_generator_step():
    task = build_task(_cfg()).train()
    seen = []
    task.discriminator.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    batch, cache = _batch(), {}
    task.aux_forward(batch, 0, cache)
    task.training_forward(batch, 0, cache)
    fake_for_d, fake_for_g = seen[0][2:], seen[1]
    assert torch.equal(fake_for_d, fake_for_g) and torch.equal(seen[2], batch["audio"].unsqueeze(1))


def _same(before, params) -> bool:
    return all(torch.equal(a, p) for a, p in zip(before, params, strict=True))


def test_each_phase_moves_only_its_own_parameters():
    trainer, task = _trainer(None, "task.params.disc_warmup_step=1")
    gen_phase, disc_phase = trainer.phases
    gen, disc = list(task.generator.parameters()), list(task.discriminator.parameters())
    assert task.aux_first and {id(p) for p in gen} == {id(p) for p in gen_phase.params()}
    seen = {}

    def watch(phase, name, other):
        def pre(*_):
            seen[name] = [p.detach().clone() for p in other]
            seen[f"{name}_other_grads"] = [p.grad for p in other]

        phase.optimizer.register_step_pre_hook(pre)
        phase.optimizer.register_step_post_hook(lambda *_: seen.update({f"{name}_kept": _same(seen[name], other)}))

    watch(gen_phase, "gen", disc)
    watch(disc_phase, "disc", gen)
    disc0 = [p.detach().clone() for p in disc]
    batches = trainer._batches()
    report = trainer.train_step(batches)  # step 0 < disc_warmup_step: adversarial terms count, D does not train
    assert "adv_gen_loss" in report and "disc_loss" not in report and _same(disc0, disc) and "disc" not in seen
    gen1 = [p.detach().clone() for p in gen]
    report = trainer.train_step(batches)  # step 1: D step (G untouched), then G step (D untouched)
    assert "disc_loss" in report and "aux_grad_norm" in report
    assert seen["disc_kept"] and all(g is None for g in seen["disc_other_grads"])
    assert seen["gen_kept"] and all(g is None for g in seen["gen_other_grads"])
    assert not _same(disc0, disc) and not _same(gen1, gen)


def test_real_trainer_steps_on_sines_reduce_the_mel_loss():
    trainer, task = _trainer(None, "optim.lr=1e-3", "train.batch_size=4")
    batch = _batch(4)
    real = task.audio(batch)

    def mel() -> float:
        with torch.no_grad():
            eps = torch.zeros(4, T // 400, task.generator.latent_dim)
            return task.mel(task.generator.eval()(real, eps=eps)["audio"], real).item()

    before = mel()
    batches = trainer._batches()
    for _ in range(6):
        report = trainer.train_step(batches)
    assert mel() < 0.9 * before and math.isfinite(report["disc_loss"])


def test_checkpoint_resume_of_both_optimisers_and_the_ema(tmp_path):
    """2 + 1 steps == 3 steps: generator, discriminator, both AdamW states, EMA and the exponential lr."""
    extra = ["train.steps=3", "train.ckpt_every=1", "train.keep_last=0"]
    straight, _ = _trainer(tmp_path / "a", *extra)
    straight.fit()
    for until in (2, None):
        resumed, _ = _trainer(tmp_path / "b", *extra)
        resumed.fit(until=until)
    a, b = straight.state_dict(), resumed.state_dict()
    assert any(k.startswith("discriminator.") for k in a["trainable"])
    for k, v in a["trainable"].items():
        assert torch.equal(v, b["trainable"][k]), k
    for k, v in a["ema"].items():
        assert torch.equal(v, b["ema"][k]), k
    for key in ("optimizer", "aux_optimizer"):
        sa, sb = a[key]["state"], b[key]["state"]
        assert sa.keys() == sb.keys() and sa
        assert all(torch.equal(sa[p][s], sb[p][s]) for p in sa for s in sa[p]), key
    assert straight.phases[1].lr() == pytest.approx(5e-4 * 0.99999**2)


def test_unitok_train_entry_point_exports_the_ema_generator(tmp_path, monkeypatch):
    from unitok.train import main

    get = DATASETS.get
    monkeypatch.setattr(DATASETS, "get", lambda name: (lambda p, split: (Sines(8), default_collate)) if name == "sines"
                        else get(name))  # fmt: skip
    main([str(TINY), f"run_dir={tmp_path}", "data.name=sines", "train.steps=2", "train.ckpt_every=2", *FAST])
    model = unitok.load_pretrained(tmp_path / "model")
    assert isinstance(model, SemanticVAE) and model.projectors is not None
    ckpt = torch.load(tmp_path / "checkpoints" / "step_00000002.pt", weights_only=False)
    assert all(torch.equal(v, ckpt["ema"][k]) for k, v in model.state_dict().items())


@pytest.mark.skipif("speech_toy" not in DATASETS, reason="data set speech_toy is not registered yet (parallel helper)")
def test_tiny_recipe_runs_on_the_toy_corpus(tmp_path):
    from unitok.train import main

    main([str(TINY), f"run_dir={tmp_path}", "train.steps=1", "train.ckpt_every=1", "train.progress=false"])
    assert (tmp_path / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["semantic_vae_16k_d64", "acoustic_vae_16k_d16", "acoustic_vae_16k_d64"])
def test_baseline_recipes_carry_the_example_yml_settings(name):
    from unitok.config import build_config
    from unitok.modalities.speech.semantic_vae_task import SemanticVAETaskConfig

    cfg = load_run_config(REPO / "recipes" / "speech" / f"{name}.yaml")
    params = build_config(SemanticVAETaskConfig, cfg.task.params)  # strict: unknown keys fail
    assert cfg.model.name == name and not cfg.model.overrides and cfg.task.name == "semantic_vae"
    weights = {t: w.weight for t, w in cfg.losses.terms.items()}
    semantic = name.startswith("semantic")
    assert weights == {"mel": 15.0, "adv_feat": 2.0, "adv_gen": 1.0, "kl": 0.01, "align": 1.0 if semantic else 0.0,
                       "stft": 0.0, "waveform": 0.0}  # fmt: skip
    assert SEMANTIC_VAE_PRESETS[name]["DAC"]["distill"] == semantic
    for optim in (cfg.optim, params.disc_optim):
        assert (optim.lr, tuple(optim.betas), optim.schedule, optim.gamma, optim.grad_clip, optim.warmup_steps) == (
            1e-4,
            (0.8, 0.99),
            "exponential",
            0.999996,
            10.0,
            0,
        )
    assert params.disc_warmup_step == 0 and params.disc_first and params.mel.n_mels == [5, 10, 20, 40, 80, 160, 320]
    assert cfg.data.params["crop_seconds"] == 3.0 and cfg.data.params["max_cuts"] * cfg.train.grad_accum == 24
    assert (cfg.train.steps, cfg.train.precision, cfg.train.seed) == (600_000, "fp32", 0) and cfg.train.ema_decay > 0


def _ddp_worker(rank, world_size, init_file, out_dir):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from unitok.engine.distributed import DistInfo
    from unitok.testing import init_gloo

    init_gloo(rank, world_size, init_file)
    torch.manual_seed(0)
    cfg = _cfg("train.batch_size=1", "train.steps=2", "train.strategy=ddp", *_weights(align=0.0),
               "model.overrides.dac.distill=false")  # fmt: skip
    task = build_task(cfg)
    trainer = Trainer(task, Sines(8), default_collate, cfg.optim, cfg.train, None, DistInfo(rank, world_size))
    assert all(isinstance(task._wrapped[n], DDP) for n in ("generator", "discriminator"))
    projector = {k: v.clone() for k, v in task.generator.projectors.state_dict().items()}
    trainer.fit()
    assert all(torch.equal(v, task.generator.projectors.state_dict()[k]) for k, v in projector.items())
    torch.save({k: v.cpu() for k, v in task.state_dict().items()}, f"{out_dir}/rank{rank}.pt")


def test_ddp_trains_the_acoustic_vae_with_its_unused_projector_frozen(tmp_path):
    """2 gloo processes, discriminator first: every gradient synchronised (an unused trainable parameter would
    stop DDP), both ranks end with the same weights, the projector of the acoustic VAE is left alone."""
    from unitok.testing import run_distributed

    run_distributed(_ddp_worker, 2, str(tmp_path), timeout_s=120)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys() and any(k.startswith("discriminator.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_wavlm_teacher_guides_the_alignment_term_on_the_fly(wavlm_dir):
    task = build_task(_cfg("task.params.ssl.source=teacher", f"task.params.ssl.teacher.path={wavlm_dir}")).train()
    assert not task.ssl_teacher.training and not any(p.requires_grad for p in task.ssl_teacher.parameters())
    batch = {**_batch(), "audio_lens": torch.tensor([T, T // 2])}
    feats, frames = task.ssl_teacher(batch["audio"], batch["audio_lens"])
    assert feats.shape == (2, 12, 32) and frames.tolist() == [12, 6]  # 50 Hz WavLM frames of 0.25 s / 0.125 s
    loss, report = task.training_forward(batch, 0, {})
    loss.backward()
    assert math.isfinite(report["align_loss"]) and task.generator.projectors.model[0].weight.grad is not None
    assert not any(k.startswith("ssl_teacher") for k in task.state_dict())  # never saved in checkpoints
    with pytest.raises(ValueError, match="gives 32-d features but the model's projector takes 1024"):
        build_task(_cfg("task.params.ssl.source=teacher", f"task.params.ssl.teacher.path={wavlm_dir}",
                        "model.overrides.dac.distill_hidden_dim=1024"))  # fmt: skip


def test_short_batches_are_padded_to_the_crop():
    batch = _batch()
    wav = build_task(_cfg("task.params.pad_to_seconds=0.5")).audio(batch)
    assert wav.shape == (2, 1, 8000) and torch.equal(wav[:, 0, :T], batch["audio"]) and wav[..., T:].abs().sum() == 0
    assert build_task(_cfg()).audio(batch).shape == (2, 1, T)  # null: as the batch comes
    assert build_task(_cfg("task.params.pad_to_seconds=0.1")).audio(batch).shape == (2, 1, T)  # never cropped


def test_mel_loss_follows_the_model_sample_rate():
    mel = build_task(_cfg()).mel.transforms[0]
    assert mel.sample_rate == 16000
    with pytest.raises(ValueError, match="mel.sample_rate is 24000 Hz but the model runs at 16000"):
        build_task(_cfg("task.params.mel.sample_rate=24000"))
