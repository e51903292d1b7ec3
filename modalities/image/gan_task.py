"""VTP stage 2: GAN fine-tuning of the pixel decoder of a stage-1 model, encoder frozen.

Trained: the pixel decoder (``decoder_embed``, ``decoder``, ``decoder_head``: everything after the latents), so
the latent space of stage 1 is kept exactly. Frozen: the encoder trunk, its patch embedding, the bottleneck and
the CLIP head; latents are computed under ``no_grad``. The exported model is the whole VTP model.

Generator loss: ``L_rec + disc_weight·λ·L_G`` after ``disc_start`` (L_rec = the composer's weighted L1 + LPIPS,
λ the adaptive weight on the decoder's last layer, :mod:`unitok.losses.adversarial`). Discriminator: a
PatchGAN on reconstructions vs originals, both mapped to [-1, 1] (GUESS: the LPIPS/taming input range), hinge
loss, trained by the trainer's auxiliary optimiser (``disc_optim``) from ``disc_start``.

Shape legend:
    B: batch, H/W: pixels, h/w: PatchGAN logit map
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from unitok.engine import stage2
from unitok.engine.optim import OptimConfig
from unitok.engine.stage2 import PartlyTrainable
from unitok.engine.task import Task
from unitok.losses.adversarial import AdversarialConfig, AdversarialLoss
from unitok.losses.compose import LossComposer
from unitok.losses.reconstruction import ReconstructionLoss
from unitok.modalities.image.discriminator import PatchDiscriminator, PatchDiscriminatorConfig
from unitok.modalities.image.vtp import VTPModel

#: modules of the VTP autoencoder that stage 2 trains
PIXEL_DECODER = ("decoder_embed", "decoder", "decoder_head")


def _disc_optim() -> OptimConfig:
    # GUESS (taming VQGAN / LDM): Adam betas (0.5, 0.9), no weight decay, constant lr
    return OptimConfig(lr=1e-4, min_lr=1e-4, weight_decay=0.0, weight_decay_end=0.0, betas=(0.5, 0.9))


@dataclass
class VTPGANTaskConfig:
    """Attributes:
    init_from: the stage-1 model: a run directory (its ``model/``, else its latest checkpoint), a
        ``save_pretrained`` directory, a ``checkpoints/`` directory or a checkpoint file (EMA weights when saved).
    vgg_weights: torchvision VGG16 file for LPIPS (only read when the LPIPS weight is > 0).
    adversarial: disc_start, disc_weight, generator / discriminator losses, adaptive weight.
    discriminator: the PatchGAN.
    disc_optim: the discriminator's AdamW and lr schedule (over the whole run).
    """

    init_from: str = ""
    vgg_weights: str | None = None
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    discriminator: PatchDiscriminatorConfig = field(default_factory=PatchDiscriminatorConfig)
    disc_optim: OptimConfig = field(default_factory=_disc_optim)


def load_stage1(model: VTPModel, init_from: str) -> str:
    """Load the stage-1 weights into ``model`` (strict: same configuration, keys and shapes); returns the source."""
    from unitok.modalities.image.vtp_config import VTPConfig
    from unitok.models.pretrained import read_config

    return stage2.load_stage1(
        model, init_from, what="VTP", example="runs/image_tiny",
        saved_config=lambda source: dataclasses.asdict(VTPConfig.from_dict(read_config(source))),
        wanted_config=dataclasses.asdict(model.config),
        load_pretrained=lambda sd, source: model.load_official_state_dict(sd, source=source),
    )  # fmt: skip


class PixelDecoderStudent(PartlyTrainable):
    """A VTP model with everything but the pixel decoder frozen: ``forward(images (B, 3, H, W)) -> recon``."""

    def __init__(self, model: VTPModel):
        if model.autoencoder.decoder is None:
            raise ValueError("GAN fine-tuning needs a model with a pixel decoder (train_reconstruction=True)")
        super().__init__(model, [f"autoencoder.{name}" for name in PIXEL_DECODER])

    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight as the latest forward used it (FSDP2 keeps the root unsharded until backward)."""
        return self.model.autoencoder.decoder_head.weight

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            latents = self.model.get_reconstruction_latents(images)
        return self.model.get_latents_decoded_images(latents)


class VTPGANTask(Task):
    """L1 + LPIPS + adaptive-weighted GAN on the pixel decoder; a PatchGAN trained in the auxiliary phase."""

    trainable = ("student", "discriminator")
    aux_trainable = ("discriminator",)

    def __init__(self, model: VTPModel, composer: LossComposer, cfg: VTPGANTaskConfig):
        super().__init__()
        self.init_source = load_stage1(model, cfg.init_from)
        self.cfg, self.composer = cfg, composer
        self.student = PixelDecoderStudent(model)
        self.discriminator = PatchDiscriminator(cfg.discriminator)
        self.aux_optim = cfg.disc_optim
        self.adversarial = AdversarialLoss(cfg.adversarial)
        perceptual = None
        if composer.active("rec_lpips"):
            from unitok.losses.perceptual import LPIPS

            perceptual = LPIPS(vgg_weights=cfg.vgg_weights)  # stops at start-up, saying where the VGG file goes
        self.reconstruction = ReconstructionLoss(partial(model.adapter.denormalize, clamp=False), perceptual)

    def export_model(self) -> VTPModel:
        return self.student.model

    def _disc_input(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space images -> [-1, 1] (unclamped) for the discriminator."""
        return 2 * self.student.model.adapter.denormalize(images, clamp=False) - 1

    def training_forward(self, batch: dict[str, Any], step: int, cache: dict[str, Any]):
        images = batch["image"]
        recon = self.call("student", images)
        loss, report = self.composer(self.reconstruction(recon, images), step)
        if self.adversarial.active(step):  # the discriminator runs bare and frozen here (see Task.call)
            logits_fake = self.call("discriminator", self._disc_input(recon))
            terms = self.adversarial.generator_terms(loss, logits_fake, self.student.last_layer())
            loss = loss + terms["gan_loss"]
            report.update({k: float(v.detach()) for k, v in terms.items()}, loss=float(loss.detach()))
        cache["recon"] = recon.detach()
        return loss, report

    def aux_active(self, step: int) -> bool:
        return self.adversarial.active(step)

    def aux_forward(self, batch: dict[str, Any], step: int, cache: dict[str, Any]):
        """Hinge (or vanilla) loss on originals vs the main phase's reconstructions, in one discriminator call."""
        real = self._disc_input(batch["image"])
        logits = self.call("discriminator", torch.cat([real, self._disc_input(cache["recon"])]))
        terms = self.adversarial.discriminator_terms(*logits.chunk(2))
        return terms["disc_loss"], {k: float(v.detach()) for k, v in terms.items()}
