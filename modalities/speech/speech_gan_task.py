"""Speech stage 2: GAN training of the waveform decoder of a stage-1 speech tokenizer (the image ``vtp_gan`` on audio).

Trained: the decoder (``decoder_embed``, ``decoder``, ``decoder_head``), and with ``train_encoder`` also the
encoder and its bottleneck (then a weighted ``kl`` term applies to a Gaussian bottleneck); everything else (the text
tower, the CLIP head) stays frozen, in eval mode. With the encoder frozen its pass runs without gradient and the
latent space of stage 1 is kept exactly. The exported model is the whole speech tokenizer.

Generator loss, as Semantic-VAE: the composer's reconstruction terms (auraloss mel / STFT / L1 / SI-SDR) + KL,
plus after ``adversarial.disc_start`` ``disc_weight·λ·L_adv + feature_matching_weight·L_fm`` (least-squares GAN,
λ = 1 unless ``adversarial.adaptive``; L_fm = L1 between the discriminator feature maps of the reconstruction and
of the (detached) original; Semantic-VAE: 1 and 2). Discriminator: :class:`~.discriminator.SpeechDiscriminator`
(MPD + multi-band multi-resolution STFT discriminator) on originals vs reconstructions, least-squares loss, trained
by the trainer's auxiliary optimiser (``disc_optim``) from ``disc_start``.

Shape legend:
    B: batch, T: samples, N: frames, L: latent channels
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from unitok.config import build_config, to_dict
from unitok.engine import stage2
from unitok.engine.optim import OptimConfig
from unitok.engine.stage2 import PartlyTrainable
from unitok.engine.task import Task
from unitok.losses.adversarial import AdversarialConfig, AdversarialLoss, generator_side_maps, split_feature_maps
from unitok.losses.compose import LossComposer
from unitok.losses.regularizers import KLLoss
from unitok.modalities.speech.adapter import valid_lengths
from unitok.modalities.speech.discriminator import SpeechDiscriminator, SpeechDiscriminatorConfig
from unitok.modalities.speech.perceptual import AudioReconstructionConfig
from unitok.modalities.speech.speech_task import check_reconstruction_params, composed_reconstruction
from unitok.modalities.speech.vtp_speech import SpeechTokenizerModel

DECODER = ("autoencoder.decoder_embed", "autoencoder.decoder", "autoencoder.decoder_head")
ENCODER = ("autoencoder.patch_embed", "autoencoder.encoder", "autoencoder.bottleneck", "autoencoder.bottleneck_logvar")


def _adversarial() -> AdversarialConfig:
    # Semantic-VAE (DAC GANLoss): least-squares GAN, adversarial weight 1, no adaptive weight, no warm-up
    return AdversarialConfig(disc_start=0, disc_weight=1.0, gen_loss="least_squares", disc_loss="least_squares",
                             adaptive=False)  # fmt: skip


def _disc_optim() -> OptimConfig:
    # Semantic-VAE: AdamW lr 1e-4, betas (0.8, 0.99), torch's default weight decay 0.01, grad-norm clip 10
    return OptimConfig(lr=1e-4, min_lr=1e-4, weight_decay=0.01, weight_decay_end=0.01, betas=(0.8, 0.99),
                       grad_clip=10.0)  # fmt: skip


@dataclass
class SpeechGANTaskConfig:
    """Attributes:
    init_from: the stage-1 model: a run directory (its ``model/``, else its latest checkpoint), a
        ``save_pretrained`` directory, a ``checkpoints/`` directory or a checkpoint file (EMA weights when saved).
    train_encoder: also train the encoder and bottleneck (False keeps the stage-1 latent space exactly).
    sample_latents: decode samples of a Gaussian bottleneck (Semantic-VAE), not its mean.
    reconstruction: resolutions of the auraloss terms; their weights are ``losses.terms`` (rec_mel, ...).
    adversarial: disc_start, disc_weight (adversarial weight), generator / discriminator losses, adaptive weight.
    feature_matching_weight: weight of the feature-matching term (Semantic-VAE: 2).
    discriminator: MPD periods, MRD FFT sizes and bands, widths.
    disc_optim: the discriminator's AdamW and lr schedule (over the whole run).
    """

    init_from: str = ""
    train_encoder: bool = False
    sample_latents: bool = True
    reconstruction: AudioReconstructionConfig = field(default_factory=AudioReconstructionConfig)
    adversarial: AdversarialConfig = field(default_factory=_adversarial)
    feature_matching_weight: float = 2.0
    discriminator: SpeechDiscriminatorConfig = field(default_factory=SpeechDiscriminatorConfig)
    disc_optim: OptimConfig = field(default_factory=_disc_optim)


def load_stage1(model: SpeechTokenizerModel, init_from: str) -> str:
    """Load the stage-1 weights into ``model`` (strict: same configuration, keys and shapes); returns the source."""

    def saved_config(source: str) -> dict:
        return to_dict(SpeechTokenizerModel.read_pretrained_config(source))

    return stage2.load_stage1(model, init_from, what="speech tokenizer", example="runs/speech_tiny",
                              saved_config=saved_config, wanted_config=to_dict(model.config))  # fmt: skip


class SpeechDecoderStudent(PartlyTrainable):
    """A speech tokenizer with only its decoder (and optionally encoder) trainable.

    ``forward(audio (B, 1, T), lengths (B,)) -> {recon (B, 1, T), mean (B, N, L), logvar (Gaussian), mask (B, N)}``.
    """

    def __init__(self, model: SpeechTokenizerModel, train_encoder: bool = False, sample_latents: bool = True):
        if model.autoencoder.decoder is None:
            raise ValueError("GAN training needs a speech tokenizer with a decoder")
        encoder = [n for n in ENCODER if getattr(model.autoencoder, n.split(".")[1]) is not None]
        super().__init__(model, DECODER + (tuple(encoder) if train_encoder else ()))
        self.train_encoder, self.sample_latents = train_encoder, sample_latents

    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight (for the adaptive weight)."""
        return self.model.autoencoder.decoder_head.weight

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            tokens, feats = m.encode_features(audio, lengths)
            mean, logvar = m.autoencoder.posterior(feats.tokens)
            z = m.autoencoder.sample_latents(mean, logvar) if self.sample_latents else mean
        out = {"recon": m.decode_tokens(tokens.with_x(z)), "mean": mean, "mask": tokens.mask}
        if logvar is not None:
            out["logvar"] = logvar
        return out


class SpeechGANTask(Task):
    """Reconstruction (+ KL) + least-squares GAN with feature matching; a SpeechDiscriminator in the auxiliary phase."""

    trainable = ("student", "discriminator")
    aux_trainable = ("discriminator",)

    def __init__(self, model: SpeechTokenizerModel, composer: LossComposer, cfg: SpeechGANTaskConfig):
        super().__init__()
        if not isinstance(model, SpeechTokenizerModel):
            raise TypeError(f"the speech GAN task trains a unitok_speech_* model, got {type(model).__name__}")
        self.init_source = load_stage1(model, cfg.init_from)
        self.cfg, self.composer = cfg, composer
        self.use_kl = composer.active("kl")
        if self.use_kl and not (cfg.train_encoder and model.is_gaussian):
            raise ValueError(
                "the KL loss is weighted but the encoder is frozen or the bottleneck is linear: set "
                "task.params.train_encoder=true with a Gaussian bottleneck, or the kl weight to 0"
            )
        self.student = SpeechDecoderStudent(model, cfg.train_encoder, cfg.sample_latents)
        self.discriminator = SpeechDiscriminator(cfg.discriminator)
        self.aux_optim = cfg.disc_optim
        self.adversarial = AdversarialLoss(cfg.adversarial)
        self.reconstruction = composed_reconstruction(composer, cfg.reconstruction, model.sample_rate)
        self.kl = KLLoss()

    def export_model(self) -> SpeechTokenizerModel:
        return self.student.model

    @staticmethod
    def _audio(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, T) audio zeroed past each clip's length and (B,) lengths."""
        audio = batch["audio"]
        audio = audio.unsqueeze(1) if audio.ndim == 2 else audio
        lengths = valid_lengths(batch.get("audio_lens"), audio.shape[0], audio.shape[-1], device=audio.device)
        return audio * (torch.arange(audio.shape[-1], device=audio.device) < lengths[:, None, None]), lengths

    def training_forward(self, batch: dict[str, Any], step: int, cache: dict[str, Any]):
        audio, lengths = self._audio(batch)
        out = self.call("student", audio, lengths)
        terms = self.reconstruction(out["recon"], audio, lengths)
        if self.use_kl:
            terms.update(self.kl(out["mean"], out["logvar"], out["mask"]))
        loss, report = self.composer(terms, step)
        if self.adversarial.active(step):  # the discriminator runs bare and frozen here (see Task.call)
            gan = self._generator_terms(loss, out["recon"], audio)
            loss = loss + gan["gan_loss"]
            report.update({k: float(v.detach()) for k, v in gan.items()}, loss=float(loss.detach()))
        cache["recon"] = out["recon"].detach()
        return loss, report

    def _generator_terms(self, rec_loss: torch.Tensor, recon: torch.Tensor, audio: torch.Tensor):
        """``gan_loss`` = disc_weight·λ·L_adv + fm_weight·L_fm, and its parts for the report."""
        d_fake, d_real = generator_side_maps(lambda x: self.call("discriminator", x), recon, audio)
        return self.adversarial.feature_map_generator_terms(
            rec_loss, d_fake, d_real, self.student.last_layer(), self.cfg.feature_matching_weight
        )

    def aux_active(self, step: int) -> bool:
        return self.adversarial.active(step)

    def aux_forward(self, batch: dict[str, Any], step: int, cache: dict[str, Any]):
        """Least-squares loss on originals vs the main phase's reconstructions, in one discriminator call."""
        audio, _ = self._audio(batch)
        maps = self.call("discriminator", torch.cat([audio, cache["recon"]]))
        d_real, d_fake = split_feature_maps(maps, audio.shape[0])
        terms = self.adversarial.feature_map_discriminator_terms(d_fake, d_real)
        return terms["disc_loss"], {k: float(v.detach()) for k, v in terms.items()}


def build_speech_gan_task(cfg, model: SpeechTokenizerModel, params: dict[str, Any]) -> SpeechGANTask:
    """Stage-2 GAN task of the speech tokenizer from ``task.params`` (:class:`SpeechGANTaskConfig`)."""
    check_reconstruction_params(params)
    return SpeechGANTask(model, LossComposer(cfg.losses), build_config(SpeechGANTaskConfig, params))
