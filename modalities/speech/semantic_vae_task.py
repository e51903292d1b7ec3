"""Training task of the Semantic-VAE and acoustic-VAE baselines (``unitok-train`` task ``semantic_vae``).

The official ``scripts/train.py`` (DAC's loop) on the unitok trainer. Generator loss, each a
:class:`~unitok.losses.compose.LossComposer` term (weight 0 switches a term off; a term missing from
``losses.terms`` is off): ``mel`` 15 (DAC multi-scale mel L1), ``adv_feat`` 2 (feature matching), ``adv_gen`` 1
(least-squares GAN), ``kl`` 0.01, ``align`` 1 (cosine alignment of the sampled latent with projected SSL
features; needs ``DAC.distill``), and ``stft`` / ``waveform`` (L1) computed for the log only (weight 0, as
upstream). ``mel``, ``stft``, ``waveform`` and ``kl`` are computed and logged whenever configured, ``align`` and
the adversarial terms only at weight > 0. The vanilla acoustic VAE: ``align`` weight 0 and
``model.overrides.dac.distill: false``.

Discriminator (:class:`SpeechDiscriminator`: MPD + multi-band MRD, from the model's ``Discriminator`` block) with
the least-squares loss, trained by the trainer's auxiliary optimiser from ``disc_warmup_step``. As upstream it is
updated **first** in each step (``disc_first``, ``Task.aux_first``): the auxiliary phase encodes and decodes the
batch without gradients and keeps the reparameterisation noise, then the generator phase runs the generator again
with that noise (the same reconstruction, one extra generator forward) and meets the freshly updated
discriminator. ``disc_first: false`` reuses the generator phase's reconstruction for a discriminator step after
it (cheaper; the generator then sees the discriminator of the previous step). Before ``disc_warmup_step`` the
adversarial terms still count (upstream computes them with the untrained discriminator), only its update waits.

Batches: ``audio`` (B, T) or (B, 1, T) fixed-length crops, ``audio_lens`` (B,), ``text``; with
``ssl.source: batch`` also ``ssl_features`` (B, S, E) and ``ssl_lens`` (B,) (see :mod:`.semantic_vae_guidance`).

Shape legend:
    B: batch, T: samples, N: latent frames, C: latent width, S: SSL frames, E: SSL width
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from unitok.engine.optim import OptimConfig
from unitok.engine.task import Task
from unitok.losses.adversarial import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    generator_side_maps,
    split_feature_maps,
)
from unitok.losses.compose import LossComposer
from unitok.modalities.speech.discriminator import SpeechDiscriminator, SpeechDiscriminatorConfig
from unitok.modalities.speech.losses import (
    MelLossConfig,
    MelSpectrogramLoss,
    MultiScaleSTFTLoss,
    STFTLossConfig,
    at_model_rate,
)
from unitok.modalities.speech.semantic_vae import SemanticVAE
from unitok.modalities.speech.semantic_vae_guidance import SSLGuidanceConfig, build_guidance, guidance_features

#: generator loss terms (``losses.terms`` names)
TERMS = ("mel", "stft", "waveform", "kl", "align", "adv_gen", "adv_feat")
#: terms computed and logged whenever configured, even at weight 0 (the others need weight > 0)
LOGGED = ("mel", "stft", "waveform", "kl")


def _disc_optim() -> OptimConfig:
    # conf/svae/example.yml: AdamW lr 1e-4, betas (0.8, 0.99), torch's default weight decay 0.01,
    # ExponentialLR gamma 0.999996 per step, grad-norm clip 10
    return OptimConfig(lr=1e-4, betas=(0.8, 0.99), weight_decay=0.01, weight_decay_end=0.01, grad_clip=10.0,
                       schedule="exponential", gamma=0.999996)  # fmt: skip


@dataclass
class SemanticVAETaskConfig:
    """Attributes:
    disc_warmup_step: first step that updates the discriminator (example.yml: 0; the script's default 5000).
    pad_to_seconds: zero-pad shorter batches to this length (upstream's loader pads every clip to its 3 s crop, so
        every loss sees 3 s); None: as the batch comes.
    disc_first: update the discriminator before the generator in each step (upstream order).
    discriminator: :class:`SpeechDiscriminatorConfig` fields replacing those from the model's ``Discriminator``
        block (e.g. narrower ``period_channels`` / ``band_channels`` for a CPU-sized run).
    disc_optim: the discriminator's AdamW, schedule and clipping.
    ssl: the alignment term's guidance features.
    mel: the mel loss (example.yml: 7 scales; its sample rate follows the model).
    stft: the logged multi-scale STFT loss.
    """

    disc_warmup_step: int = 0
    pad_to_seconds: float | None = None
    disc_first: bool = True
    discriminator: dict[str, Any] = field(default_factory=dict)
    disc_optim: OptimConfig = field(default_factory=_disc_optim)
    ssl: SSLGuidanceConfig = field(default_factory=SSLGuidanceConfig)
    mel: MelLossConfig = field(default_factory=MelLossConfig)
    stft: STFTLossConfig = field(default_factory=STFTLossConfig)


def _check_terms(composer: LossComposer, model: SemanticVAE) -> None:
    unknown = [n for n in composer.cfg.terms if not any(t == n or t.startswith(n + "_") for t in TERMS)]
    if unknown:
        raise ValueError(f"unknown Semantic-VAE loss term(s) {unknown}; the terms are {list(TERMS)}")
    align, distill = composer.active("align"), model.config.dac.distill
    if align != distill:
        fix = ("set model.overrides.dac.distill=true (the projector exists only then)" if align else
               "set model.overrides.dac.distill=false for the vanilla acoustic VAE (its SSL projector would be "
               "left untrained)")  # fmt: skip
        raise ValueError(f"the align loss weight is {'> 0' if align else '0'} but DAC.distill is {distill}: {fix}")


class SemanticVAETask(Task):
    """Generator (:class:`SemanticVAE`) + speech discriminator with DAC's losses; see the module docstring."""

    trainable = ("generator", "discriminator")
    aux_trainable = ("discriminator",)

    def __init__(self, model: SemanticVAE, composer: LossComposer, cfg: SemanticVAETaskConfig):
        super().__init__()
        if not isinstance(model, SemanticVAE):
            raise TypeError(f"the semantic_vae task trains a SemanticVAE preset, got {type(model).__name__}")
        _check_terms(composer, model)
        self.cfg, self.composer = cfg, composer
        self.generator = model
        mel = at_model_rate(cfg.mel, model.sample_rate, "task.params.mel")
        self.mel = MelSpectrogramLoss(mel) if "mel" in composer.cfg.terms else None
        self.stft = MultiScaleSTFTLoss(cfg.stft) if "stft" in composer.cfg.terms else None
        self.ssl_teacher = None
        if composer.active("align"):
            self.ssl_teacher = build_guidance(cfg.ssl, model.config.dac.distill_hidden_dim, model.sample_rate)
        elif model.projectors is not None:  # kept for the released layout, unused: frozen (DDP expects no gradient)
            model.projectors.requires_grad_(False)
        self.adversarial = composer.active("adv_gen") or composer.active("adv_feat")
        self.discriminator = None
        if self.adversarial:
            self.discriminator = SpeechDiscriminator(self._disc_config(model, cfg.discriminator))
            self.aux_optim, self.aux_first = cfg.disc_optim, cfg.disc_first
        else:  # no adversarial term: a single-phase task
            self.trainable, self.aux_trainable = ("generator",), ()

    @staticmethod
    def _disc_config(model: SemanticVAE, overrides: dict[str, Any]) -> SpeechDiscriminatorConfig:
        from unitok.config import build_config

        base = SpeechDiscriminatorConfig.from_dac(model.config.discriminator)
        return build_config(SpeechDiscriminatorConfig, dataclasses.asdict(base), overrides)

    def export_model(self) -> SemanticVAE:
        return self.generator

    # ------------------------------------------------------------------------------------------ helpers
    def audio(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's audio as (B, 1, T) float, zero-padded to ``pad_to_seconds``."""
        wav = batch["audio"]
        if wav.dim() == 2:
            wav = wav.unsqueeze(1)
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(
                f"batch['audio'] must be (B, T) or (B, 1, T) mono audio, got {tuple(batch['audio'].shape)}"
            )
        if self.cfg.pad_to_seconds:
            wav = F.pad(wav, (0, max(0, round(self.cfg.pad_to_seconds * self.generator.sample_rate) - wav.shape[-1])))
        return wav.float()

    def _reconstruction_terms(self, out: dict[str, torch.Tensor], real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The configured terms among mel, stft, waveform (L1) and KL, whatever their weights (logged-only ones, at
        weight 0, without autograd)."""
        fake, terms, active = out["audio"], {}, self.composer.active
        if self.mel is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and active("mel")):
                terms["mel_loss"] = self.mel(fake, real)
        if self.stft is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and active("stft")):
                terms["stft_loss"] = self.stft(fake, real)
        if "waveform" in self.composer.cfg.terms:
            with torch.set_grad_enabled(torch.is_grad_enabled() and active("waveform")):
                terms["waveform_loss"] = F.l1_loss(fake, real)
        if "kl" in self.composer.cfg.terms:
            terms["kl_loss"] = out["kl_loss"]
        return terms

    def _adversarial_terms(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Generator side: the discriminator runs bare and frozen (see ``Task.call``); real maps need no graph."""
        d_fake, d_real = generator_side_maps(lambda x: self.call("discriminator", x), fake, real)
        terms = {}
        if self.composer.active("adv_gen"):
            terms["adv_gen_loss"] = generator_adversarial_loss(d_fake, "least_squares")
        if self.composer.active("adv_feat"):
            terms["adv_feat_loss"] = feature_matching_loss(d_fake, d_real)
        return terms

    def _guidance(self, batch: dict[str, Any], real: torch.Tensor, cache: dict[str, Any]) -> tuple:
        """(ssl_features, ssl_lens) of the batch (None, None without the alignment term), computed once per step."""
        if "ssl" not in cache:
            active = self.composer.active("align")
            cache["ssl"] = (
                guidance_features(self.cfg.ssl, self.ssl_teacher, batch, real[:, 0]) if active else (None,) * 2
            )
        return cache["ssl"]

    # ------------------------------------------------------------------------------------------ phases
    def training_forward(self, batch: dict[str, Any], step: int, cache: dict[str, Any] | None = None):
        """Generator phase: reconstruction, KL, alignment and adversarial terms -> (loss, report)."""
        cache = {} if cache is None else cache
        real = self.audio(batch)
        out = self.call("generator", real, *self._guidance(batch, real, cache), eps=cache.get("eps"))
        fake = out["audio"]
        terms = self._reconstruction_terms(out, real)
        if "align_loss" in out:
            terms["align_loss"] = out["align_loss"]
        if self.adversarial:
            terms.update(self._adversarial_terms(fake, real))
        loss, report = self.composer(terms, step)
        if not self.aux_first:
            cache["fake"] = fake.detach()
        return loss, report

    def aux_active(self, step: int) -> bool:
        return self.adversarial and step >= self.cfg.disc_warmup_step

    @torch.no_grad()
    def _fake_for_discriminator(self, batch: dict[str, Any], real: torch.Tensor, cache: dict[str, Any]):
        """Discriminator first: the generator's forward without gradients (through ``forward``, so FSDP gathers its
        weights), keeping its noise (and the guidance) for the generator phase."""
        gen = self.generator
        frames = -(-real.shape[-1] // gen.hop_length)
        cache["eps"] = torch.randn(real.shape[0], frames, gen.latent_dim, device=real.device, dtype=real.dtype)
        return self.call("generator", real, *self._guidance(batch, real, cache), eps=cache["eps"])["audio"]

    def aux_forward(self, batch: dict[str, Any], step: int, cache: dict[str, Any]):
        """Discriminator phase: least-squares loss on real clips vs reconstructions, in one discriminator call."""
        real = self.audio(batch)
        fake = self._fake_for_discriminator(batch, real, cache) if self.aux_first else cache["fake"]
        d_real, d_fake = split_feature_maps(self.call("discriminator", torch.cat([real, fake])), real.shape[0])
        loss = discriminator_loss(d_fake, d_real, "least_squares")
        return loss, {"disc_loss": float(loss.detach())}


def build_semantic_vae_task(cfg, model, params: dict[str, Any]) -> SemanticVAETask:
    """The ``semantic_vae`` task from a run configuration (``task.params``: :class:`SemanticVAETaskConfig`)."""
    from unitok.config import build_config

    return SemanticVAETask(model, LossComposer(cfg.losses), build_config(SemanticVAETaskConfig, params))
