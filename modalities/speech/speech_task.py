"""Pre-training objective of the speech tokenizer: the VTP objectives on audio, plus the Semantic-VAE ones.

Terms (composer names; each one with weight 0 costs nothing: its branch, head or teacher is never built or run):
    clip        speech-text contrastive between the utterance embedding and its transcript (open_clip ClipLoss).
    dino, ibot, koleo   self-distillation with an EMA teacher (:mod:`unitok.engine.self_distillation`): DINO on
                the CLS of 2 global + n local random time crops of the batch audio (:mod:`.crops`), iBOT on 1-D
                block-masked frames of the global crops (only valid frames are masked), KoLeo on the global CLS.
    rec_mel, rec_stft, rec_l1, rec_sisdr   audio reconstruction through auraloss (:mod:`.perceptual`) with length
                masks; each is computed only when weighted (``task.params.reconstruction`` sets resolutions, not
                weights).
    kl          KL of a Gaussian bottleneck to N(0, I) over valid frames (Semantic-VAE's form).
    align       Semantic-VAE's semantic alignment: -cos(latents, projected frozen WavLM / HuBERT features) over valid
                frames; the teacher features are interpolated to the latent frames by Semantic-VAE's projector.

Batch sampling as VTP: the contrastive loss takes all B clips; the latent losses (reconstruction, KL, alignment)
take a random subset (``rec_batch``) that reuses the contrastive encoder pass; the crops are cut from their own
random subset (``ssl_batch``). The latent losses read the sampled latents of a Gaussian bottleneck (Semantic-VAE
decodes and aligns the sample) unless ``sample_latents`` is False. Parameters that no weighted term reaches (e.g.
the text tower without the contrastive loss) are frozen, so they stay out of the optimiser and of DDP.

Batches: ``audio`` (B, T) or (B, 1, T), ``audio_lens`` (B,) samples (optional), ``text`` (B transcripts).

Shape legend:
    B: clips, Br: latent-loss subset, Bs: SSL subset, T: samples, N: frames, L: latent channels, D: width,
    S: teacher frames, E: teacher width, K: prototypes
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unitok.adapter import Tokens
from unitok.engine.self_distillation import SSL_TERMS, SelfDistillationConfig, SelfDistillationMixin, head_logits
from unitok.engine.task import Task, random_subset
from unitok.losses.alignment import masked_negative_cosine
from unitok.losses.compose import LossComposer
from unitok.losses.contrastive import ContrastiveLoss, clamp_logit_scale_
from unitok.losses.regularizers import KLLoss
from unitok.masking import sample_ibot_masks
from unitok.modalities.speech.adapter import valid_lengths
from unitok.modalities.speech.crops import AudioMultiCrop, AudioMultiCropConfig
from unitok.modalities.speech.losses import at_model_rate
from unitok.modalities.speech.perceptual import AudioReconstructionConfig, AudioReconstructionLoss
from unitok.modalities.speech.teachers import SSLTeacherConfig
from unitok.modalities.speech.vtp_speech import SpeechTokenizerModel
from unitok.models.heads import DINOHead

#: composer term -> the AudioReconstructionConfig weight it switches on
RECONSTRUCTION_TERMS = {"rec_stft": "stft_weight", "rec_mel": "mel_weight", "rec_l1": "l1_weight",
                        "rec_sisdr": "si_sdr_weight"}  # fmt: skip


def composed_reconstruction(
    composer: LossComposer, cfg: AudioReconstructionConfig, sample_rate: int
) -> AudioReconstructionLoss:
    """The auraloss terms at the model's ``sample_rate``, weight 1 for the weighted composer terms (the composer
    weighs them), 0 (not computed) for the others."""
    weights = {w: float(composer.active(term)) for term, w in RECONSTRUCTION_TERMS.items()}
    cfg = at_model_rate(cfg, sample_rate, "task.params.reconstruction")
    return AudioReconstructionLoss(dataclasses.replace(cfg, **weights))


def check_reconstruction_params(params: dict[str, Any]) -> None:
    """Refuse reconstruction weights in ``task.params`` (they are ``losses.terms``), naming the right keys."""
    weights = sorted(set(params.get("reconstruction") or {}) & set(RECONSTRUCTION_TERMS.values()))
    if weights:
        raise ValueError(
            f"task.params.reconstruction.{weights[0]}: the reconstruction weights are loss terms here; set "
            f"losses.terms.{{{', '.join(RECONSTRUCTION_TERMS)}}} instead"
        )


@dataclass
class SpeechTaskConfig(SelfDistillationConfig):
    """Attributes, besides the self-distillation ones (DINO head, temperatures, EMA, iBOT masks):
    contrastive: 'clip' (softmax) or 'siglip' (sigmoid, needs the model's init_logit_bias).
    ssl_batch, rec_batch: subset sizes of the SSL and latent losses (0 or >= B: the whole batch).
    crops: the 1-D multi-crop of the SSL subset.
    reconstruction: resolutions of the auraloss terms; their weights come from the composer (``losses.terms``).
    teacher: the frozen SSL model of the alignment term (a local WavLM / HuBERT directory and its layer).
    projector_blocks: Conv-GroupNorm-Mish blocks of the alignment projector (Semantic-VAE: 2, width 2·L).
    sample_latents: the latent losses read a sample of a Gaussian bottleneck (Semantic-VAE), not its mean.
    """

    contrastive: str = "clip"
    ssl_batch: int = 0
    rec_batch: int = 0
    crops: AudioMultiCropConfig = field(default_factory=AudioMultiCropConfig)
    reconstruction: AudioReconstructionConfig = field(default_factory=AudioReconstructionConfig)
    teacher: SSLTeacherConfig = field(default_factory=SSLTeacherConfig)
    projector_blocks: int = 2
    sample_latents: bool = True


class SpeechStudent(nn.Module):
    """Speech tokenizer + DINO head + alignment projector; ``forward(inputs)`` runs the branches whose inputs are given.

    Inputs (all optional): ``audio`` (B, T) + ``audio_lens`` (one clean encoder pass) with ``text`` (B, C) for the
    contrastive branch and ``latent_index`` (Br,) for the latent branch (posterior, sample, decoder, and with
    ``ssl_features`` (Br, S, E) the alignment targets); ``ssl_global`` (2·Bs, Tg) + ``ssl_global_lens`` with
    ``ibot_masks`` (2·Bs, Ng) (or ``teacher_masks`` for the EMA teacher) and ``ssl_local`` + ``ssl_local_lens``.
    """

    def __init__(self, model: SpeechTokenizerModel, head: DINOHead | None, projector: nn.Module | None,
                 sample_latents: bool = True, decode: bool = True):  # fmt: skip
        super().__init__()
        self.model, self.head, self.projector = model, head, projector
        self.sample_latents, self.decode = sample_latents, decode

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m, out = self.model, {}
        if "audio" in inputs:
            tokens, feats = m.encode_features(inputs["audio"], inputs["audio_lens"])
            if "text" in inputs:
                out["audio_features"] = m.utterance_embedding(tokens, feats)
                out["text_features"] = m.get_clip_text_feature(inputs["text"])
            if "latent_index" in inputs:
                out.update(self._latent_branch(tokens, feats.tokens, inputs))
        if "ssl_global" in inputs:
            _, g = m.encode_features(inputs["ssl_global"], inputs["ssl_global_lens"], inputs.get("ibot_masks"))
            loc = m.encode_features(inputs["ssl_local"], inputs["ssl_local_lens"])[1] if "ssl_local" in inputs else None
            patches = inputs.get("ibot_masks", inputs.get("teacher_masks"))
            out.update(head_logits(self.head, g, patches, loc))  # one head pass over CLS, masked and local CLS
        return out

    def _latent_branch(self, tokens: Tokens, features: torch.Tensor, inputs: dict[str, torch.Tensor]):
        """Posterior of the selected clips, their latents, reconstruction and alignment targets."""
        ae, idx = self.model.autoencoder, inputs["latent_index"]
        mask = tokens.mask[idx]
        mean, logvar = ae.posterior(features[idx])
        z = ae.sample_latents(mean, logvar) if self.sample_latents else mean
        out = {"mean": mean, "z": z, "latent_mask": mask}
        if logvar is not None:
            out["logvar"] = logvar
        if self.decode:
            meta = {"lengths": tokens.meta["lengths"][idx], "num_samples": tokens.meta["num_samples"]}
            out["recon"] = self.model.decode_tokens(Tokens(x=z, coords=tokens.coords[idx], mask=mask, meta=meta))
        if "ssl_features" in inputs:
            out["align_target"] = self.projector(inputs["ssl_features"], mask.sum(1), z.shape[1])
        return out


class SpeechTask(SelfDistillationMixin, Task):
    """CLIP + DINO/iBOT/KoLeo + auraloss reconstruction + KL + WavLM alignment on one speech tokenizer."""

    trainable = ("student",)
    teachers = ("teacher",)

    def __init__(self, model: SpeechTokenizerModel, composer: LossComposer, cfg: SpeechTaskConfig, total_steps: int):
        super().__init__()
        self.cfg, self.composer, self.total_steps = cfg, composer, total_steps
        self.use_clip = composer.any_active("clip")
        self.use_ssl = any(composer.active(t) for t in SSL_TERMS)
        self.use_rec = composer.any_active("rec")
        self.use_kl, self.use_align = composer.active("kl"), composer.active("align")
        self._check_model(model)
        head = None
        if self.use_ssl:
            head = DINOHead(model.config.encoder.dim, cfg.head_prototypes, cfg.head_hidden, cfg.head_bottleneck,
                            cfg.head_layers)  # fmt: skip
        self.ssl_teacher, projector = None, None
        if self.use_align:
            from unitok.modalities.speech.semantic_vae_modules import SSLProjector
            from unitok.modalities.speech.teachers import SSLTeacher

            self.ssl_teacher = SSLTeacher(cfg.teacher)  # stops here, saying where the weights go, when missing
            L = model.latent_dim
            projector = SSLProjector(cfg.projector_blocks, self.ssl_teacher.feature_dim, 2 * L, L)
        self.student = SpeechStudent(model, head, projector, cfg.sample_latents, decode=self.use_rec)
        self.teacher = self._make_speech_teacher() if self.use_ssl else None
        self.tokenizer = model.get_tokenizer() if self.use_clip else None
        self.contrastive = ContrastiveLoss(cfg.contrastive)
        self._init_self_distillation(cfg, total_steps)
        self.reconstruction = composed_reconstruction(composer, cfg.reconstruction, model.sample_rate)
        self.kl = KLLoss()
        self.crops = AudioMultiCrop(cfg.crops, model.sample_rate, model.frame_size)
        self._freeze_unused(model)

    def _check_model(self, model: SpeechTokenizerModel) -> None:
        if not isinstance(model, SpeechTokenizerModel):
            raise TypeError(f"the speech task trains a unitok_speech_* model, got {type(model).__name__}")
        if self.use_clip and model.text is None:
            raise ValueError("the contrastive loss is weighted but the model has no text tower (config.text is None)")
        if self.use_rec and model.autoencoder.decoder is None:
            raise ValueError("the reconstruction loss is weighted but the model has no decoder")
        if self.use_kl and not model.is_gaussian:
            raise ValueError("the KL loss is weighted but the bottleneck is linear: set model bottleneck=gaussian")

    def _make_speech_teacher(self) -> SpeechStudent:
        """EMA teacher: the student's encoder trunk and DINO head (no bottleneck, decoder, text tower, projector)."""
        m, ae = self.student.model, self.student.model.autoencoder
        parts = ("bottleneck", "bottleneck_logvar", "decoder_embed", "decoder", "decoder_head")
        unused = [(ae, n) for n in parts] + [(m, n) for n in ("text", "audio_proj", "logit_scale", "logit_bias")]
        return self._make_teacher([*unused, (self.student, "projector")])

    def _freeze_unused(self, model: SpeechTokenizerModel) -> None:
        """Parameters no weighted term reaches stay out of the optimiser (and of DDP's gradient buckets)."""
        ae = model.autoencoder
        latents = self.use_rec or self.use_kl or self.use_align
        unused = [
            ((model.text, model.audio_proj, model.logit_scale, model.logit_bias), not self.use_clip),
            ((ae.decoder_embed, ae.decoder, ae.decoder_head), not self.use_rec),
            ((ae.bottleneck,), not latents),
            ((ae.bottleneck_logvar,), not (self.use_kl or (latents and self.cfg.sample_latents))),
        ]
        for parts, frozen in unused:
            for part in (p for p in parts if p is not None and frozen):
                part.requires_grad_(False)

    def export_model(self) -> SpeechTokenizerModel:
        return self.student.model

    # ------------------------------------------------------------------------------------------ inputs
    def _inputs(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(student inputs, (target audio (Br, T), lengths (Br,)) of the latent losses or None)."""
        audio = batch["audio"]
        audio = audio[:, 0] if audio.ndim == 3 else audio
        B, T = audio.shape
        device = audio.device
        lens = valid_lengths(batch.get("audio_lens"), B, T, device=device)
        inputs: dict[str, torch.Tensor] = {}
        target = None
        if self.use_rec or self.use_kl or self.use_align:
            idx = random_subset(B, self.cfg.rec_batch, device)
            target = (audio, lens) if idx is None else (audio[idx], lens[idx])
            if self.use_clip:  # the latent branch reuses the contrastive encoder pass
                inputs["latent_index"] = idx if idx is not None else torch.arange(B, device=device)
            else:
                inputs.update(audio=target[0], audio_lens=target[1])
                inputs["latent_index"] = torch.arange(target[0].shape[0], device=device)
            if self.use_align:
                inputs["ssl_features"] = self.ssl_teacher(*target)[0]
        if self.use_clip:
            inputs.update(audio=audio, audio_lens=lens, text=self.tokenizer(list(batch["text"])).to(device))
        if self.use_ssl:
            inputs.update(self._ssl_inputs(audio, lens))
        return inputs, target

    def _ssl_inputs(self, audio: torch.Tensor, lens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Global / local crops of the SSL subset and the iBOT masks of the global ones (valid frames only)."""
        idx = random_subset(audio.shape[0], self.cfg.ssl_batch, audio.device)
        crops = self.crops(audio, lens) if idx is None else self.crops(audio[idx], lens[idx])
        inputs = {"ssl_global": crops["global_crops"], "ssl_global_lens": crops["global_lens"]}
        if "local_crops" in crops:
            inputs.update(ssl_local=crops["local_crops"], ssl_local_lens=crops["local_lens"])
        if self.composer.active("ibot"):
            rows, n = crops["global_crops"].shape[0], self.crops.global_samples // self.crops.frame_size
            masks = sample_ibot_masks(
                rows, (n,), (self.cfg.mask_ratio_min, self.cfg.mask_ratio_max), self.cfg.mask_probability,
                generator=torch.default_generator,
            ).to(audio.device)  # fmt: skip
            frames = self.student.model.frames(crops["global_lens"])
            inputs["ibot_masks"] = masks & (torch.arange(n, device=audio.device)[None] < frames[:, None])
        return inputs

    # ------------------------------------------------------------------------------------------ losses
    def training_forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        inputs, target = self._inputs(batch)
        out = self.call("student", inputs)
        terms: dict[str, torch.Tensor] = {}
        if self.use_clip:  # the 0-d logit scale / bias are left out of FSDP (plain tensors): readable out here
            m = self.student.model
            terms.update(self.contrastive(out["audio_features"], out["text_features"], m.logit_scale, m.logit_bias))
        if self.use_rec:
            terms.update(self.reconstruction(out["recon"], target[0].unsqueeze(1), target[1]))
        if self.use_kl:
            terms.update(self.kl(out["mean"], out["logvar"], out["latent_mask"]))
        if self.use_align:
            terms["align_loss"] = masked_negative_cosine(out["z"], out["align_target"], out["latent_mask"])
        if self.use_ssl:
            terms.update(self._ssl_terms(inputs, out, step))
        return self.composer(terms, step)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if self.use_clip:
            clamp_logit_scale_(self.student.model.logit_scale)
        self._update_teacher(step)


def build_speech_task(cfg, model: SpeechTokenizerModel, params: dict[str, Any]) -> SpeechTask:
    """The speech pre-training task from ``task.params`` (:class:`SpeechTaskConfig`)."""
    from unitok.config import build_config

    check_reconstruction_params(params)
    return SpeechTask(model, LossComposer(cfg.losses), build_config(SpeechTaskConfig, params), cfg.train.steps)
