"""The VTP pre-training objective: image-text contrastive + DINO/iBOT self-distillation + reconstruction.

``VTPStudent`` (the one trainable module, so DDP/FSDP see a single forward) runs only the branches whose
inputs are present; ``VTPTask`` decides them from the loss weights, so an objective with weight 0 costs
nothing (AE-only, CLIP+AE, SSL+AE and CLIP+SSL+AE are recipes). The paper's batch sampling: all B image-text
pairs of a step go to the contrastive loss; the SSL and reconstruction losses each take their own random subset
(``ssl_batch``, ``rec_batch``). CLIP and SSL read un-bottlenecked features; reconstruction reads the
bottlenecked patch tokens. When both CLIP and reconstruction run, the reconstruction subset reuses the
encoder pass of the CLIP images (same images, same encoder, no masks).

Shape legend:
    B: image-text pairs, Bs: SSL subset, Br: reconstruction subset, G = 2 global crops, L: local crops,
    N: patches per global crop, D: width, K: prototypes, E: CLIP embedding width
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from unitok.engine.self_distillation import SSL_TERMS, SelfDistillationConfig, SelfDistillationMixin, head_logits
from unitok.engine.task import Task, random_subset
from unitok.losses.compose import LossComposer
from unitok.losses.contrastive import ContrastiveLoss, clamp_logit_scale_
from unitok.losses.reconstruction import ReconstructionLoss
from unitok.masking import sample_ibot_masks
from unitok.modalities.image.vtp import VTPModel
from unitok.models.heads import DINOHead


@dataclass
class VTPTaskConfig(SelfDistillationConfig):
    """Attributes (GUESSES where the paper is silent are marked in the recipes), besides the self-distillation ones
    of :class:`~unitok.engine.self_distillation.SelfDistillationConfig` (head, temperatures, EMA, iBOT masks):
    contrastive: 'clip' (softmax) or 'siglip' (sigmoid, needs init_logit_bias).
    ssl_batch, rec_batch: subset sizes of the SSL and reconstruction losses (0 or >= B: the whole batch); when the
        data makes crops for its first n samples only (multicrop ``crops_per_batch``), they are the SSL subset.
    vgg_weights: torchvision VGG16 file for LPIPS (only read when the LPIPS weight is > 0).
    """

    contrastive: str = "clip"
    ssl_batch: int = 0
    rec_batch: int = 0
    vgg_weights: str | None = None


class VTPStudent(nn.Module):
    """VTP model + DINO head; ``forward(inputs)`` runs the branches whose inputs are given.

    Inputs (all optional): ``clip_images`` (B, 3, S, S) and ``text`` (B, T); ``ssl_global`` (G·Bs, 3, g, g) with
    ``ibot_masks`` (G·Bs, N); ``ssl_local`` (L·Bs, 3, l, l); ``rec_images`` (Br, 3, S, S) or ``rec_index`` (Br,)
    into ``clip_images`` (reuses the CLIP encoder pass). The EMA teacher runs the same forward with
    ``teacher_masks`` (G·Bs, N) instead of ``ibot_masks``: the patches whose logits it returns, on unmasked crops.
    """

    def __init__(self, model: VTPModel, head: DINOHead | None):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m, out = self.model, {}
        if "clip_images" in inputs:
            tokens, feats = m.encode_features(inputs["clip_images"])
            out["image_features"] = m.clip_feature_from(feats)
            out["text_features"] = m.get_clip_text_feature(inputs["text"])
            if "rec_index" in inputs:
                out["recon"] = m.decode_features(feats.tokens[inputs["rec_index"]], tokens.meta["grid"])
        if "rec_images" in inputs:
            tokens, feats = m.encode_features(inputs["rec_images"])
            out["recon"] = m.decode_features(feats.tokens, tokens.meta["grid"])
        if "ssl_global" in inputs:
            _, g = m.encode_features(inputs["ssl_global"], inputs.get("ibot_masks"))
            loc = m.encode_features(inputs["ssl_local"])[1] if "ssl_local" in inputs else None
            patches = inputs.get("ibot_masks", inputs.get("teacher_masks"))
            out.update(head_logits(self.head, g, patches, loc))  # one head pass over CLS, masked and local CLS
        return out


class VTPTask(SelfDistillationMixin, Task):
    """CLIP + DINO/iBOT/KoLeo + L1/LPIPS reconstruction on one VTP model, with an EMA teacher."""

    trainable = ("student",)
    teachers = ("teacher",)

    def __init__(self, model: VTPModel, composer: LossComposer, cfg: VTPTaskConfig, total_steps: int):
        super().__init__()
        self.cfg, self.composer, self.total_steps = cfg, composer, total_steps
        self.use_clip = composer.any_active("clip")
        self.use_ssl = any(composer.active(t) for t in SSL_TERMS)
        self.use_rec = composer.any_active("rec")
        if self.use_clip and model.text is None:
            raise ValueError("the contrastive loss is weighted but the model has no text tower (train_clip=False)")
        if self.use_rec and model.autoencoder.decoder is None:
            raise ValueError("the reconstruction loss is weighted but the model has no decoder")
        width = model.config.vision_embed_dim
        head = None
        if self.use_ssl:
            head = DINOHead(width, cfg.head_prototypes, cfg.head_hidden, cfg.head_bottleneck, cfg.head_layers)
        self.student = VTPStudent(model, head)
        self.teacher = self._make_vtp_teacher() if self.use_ssl else None
        self.tokenizer = model.get_tokenizer() if self.use_clip else None
        self.contrastive = ContrastiveLoss(cfg.contrastive)
        self._init_self_distillation(cfg, total_steps)
        perceptual = None
        if composer.active("rec_lpips"):
            from unitok.losses.perceptual import LPIPS

            perceptual = LPIPS(vgg_weights=cfg.vgg_weights)  # stops at start-up, saying where the VGG file goes
        self.reconstruction = ReconstructionLoss(partial(model.adapter.denormalize, clamp=False), perceptual)

    def _make_vtp_teacher(self) -> VTPStudent:
        """EMA teacher: a frozen copy of the student's trunk and head (no decoder, no text tower)."""
        model = self.student.model
        unused = [(model.autoencoder, n) for n in ("decoder", "decoder_embed", "decoder_head")]
        unused += [(model, "text"), (model, "visual_proj")]
        return self._make_teacher(unused)

    def export_model(self) -> VTPModel:
        return self.student.model

    # ------------------------------------------------------------------------------------------ inputs
    def _inputs(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        images = batch["image"]
        B, device = images.shape[0], images.device
        inputs: dict[str, torch.Tensor] = {}
        if self.use_clip:
            inputs["clip_images"] = images
            inputs["text"] = self.tokenizer(batch["text"]).to(device)
        if self.use_rec:
            idx = random_subset(B, self.cfg.rec_batch, device)
            if self.use_clip:
                inputs["rec_index"] = idx if idx is not None else torch.arange(B, device=device)
            else:
                inputs["rec_images"] = images if idx is None else images[idx]
            inputs["rec_target"] = images if idx is None else images[idx]
        if self.use_ssl:
            n_crops = batch["global_crops"][0].shape[0]
            if n_crops < B:  # the data made crops for its first samples only (augment crops_per_batch): the subset
                if self.cfg.ssl_batch not in (0, n_crops):
                    raise ValueError(
                        f"task.params.ssl_batch={self.cfg.ssl_batch} but the data made crops for "
                        f"{n_crops} samples per batch (multicrop.crops_per_batch): make them equal"
                    )
                idx = None
            else:
                idx = random_subset(B, self.cfg.ssl_batch, device)
            pick = (lambda x: x) if idx is None else (lambda x: x[idx])
            glob = torch.cat([pick(c) for c in batch["global_crops"]])
            inputs["ssl_global"] = glob
            if batch.get("local_crops"):
                inputs["ssl_local"] = torch.cat([pick(c) for c in batch["local_crops"]])
            if self.composer.active("ibot"):
                grid = self.student.model.adapter.grid_size(*glob.shape[-2:])
                inputs["ibot_masks"] = sample_ibot_masks(
                    glob.shape[0], grid, (self.cfg.mask_ratio_min, self.cfg.mask_ratio_max), self.cfg.mask_probability,
                    generator=torch.default_generator,
                ).to(device)  # fmt: skip
        return inputs

    # ------------------------------------------------------------------------------------------ losses
    def training_forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = self._inputs(batch, step)
        out = self.call("student", {k: v for k, v in inputs.items() if k != "rec_target"})
        terms: dict[str, torch.Tensor] = {}
        if self.use_clip:  # the 0-d logit scale / bias are left out of FSDP (plain tensors): readable out here
            m = self.student.model
            terms.update(self.contrastive(out["image_features"], out["text_features"], m.logit_scale, m.logit_bias))
        if self.use_rec:
            terms.update(self.reconstruction(out["recon"], inputs["rec_target"]))
        if self.use_ssl:
            terms.update(self._ssl_terms(inputs, out, step))
        return self.composer(terms, step)

    # ------------------------------------------------------------------------------------------ step hooks
    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = self.student.model
        if m.logit_scale is not None:
            clamp_logit_scale_(m.logit_scale)
        self._update_teacher(step)
