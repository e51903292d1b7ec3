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

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from unitok.engine.optim import cosine_schedule
from unitok.engine.task import Task
from unitok.losses.compose import LossComposer
from unitok.losses.contrastive import ContrastiveLoss, clamp_logit_scale_
from unitok.losses.distillation import DINOLoss, KoLeoLoss, iBOTPatchLoss, teacher_temperature_schedule
from unitok.losses.reconstruction import ReconstructionLoss
from unitok.masking import sample_ibot_masks
from unitok.modalities.image.vtp import VTPModel
from unitok.models.heads import DINOHead

SSL_TERMS = ("dino", "ibot", "koleo")


@dataclass
class VTPTaskConfig:
    """Attributes (GUESSES where the paper is silent are marked in the recipes):
    contrastive: 'clip' (softmax) or 'siglip' (sigmoid, needs init_logit_bias).
    ssl_batch, rec_batch: subset sizes of the SSL and reconstruction losses (0 or >= B: the whole batch); when the
        data makes crops for its first n samples only (multicrop ``crops_per_batch``), they are the SSL subset.
    head_prototypes, head_hidden, head_bottleneck, head_layers: the shared DINO/iBOT head.
    centering: 'centering' (EMA center) or 'sinkhorn_knopp'.
    student_temp, teacher_temp, teacher_temp_warmup_start, teacher_temp_warmup_steps: temperatures.
    momentum_start, momentum_end: EMA teacher momentum (cosine over the run).
    freeze_last_layer_steps: prototypes frozen for these first steps (DINOv2: one epoch).
    mask_ratio_min, mask_ratio_max, mask_probability: iBOT block masking of the student global crops.
    vgg_weights: torchvision VGG16 file for LPIPS (only read when the LPIPS weight is > 0).
    """

    contrastive: str = "clip"
    ssl_batch: int = 0
    rec_batch: int = 0
    head_prototypes: int = 65536
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_layers: int = 3
    centering: str = "centering"
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_warmup_start: float = 0.04
    teacher_temp_warmup_steps: int = 0
    momentum_start: float = 0.992
    momentum_end: float = 1.0
    freeze_last_layer_steps: int = 0
    mask_ratio_min: float = 0.1
    mask_ratio_max: float = 0.5
    mask_probability: float = 0.5
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
            out["global_cls"] = g.cls
            rows = [g.cls]
            patches = inputs.get("ibot_masks", inputs.get("teacher_masks"))
            if patches is not None:
                rows.append(g.tokens[patches])
            if "ssl_local" in inputs:
                _, loc = m.encode_features(inputs["ssl_local"])
                rows.append(loc.cls)
            logits = self.head(torch.cat(rows))  # one head pass over CLS, masked patches and local CLS
            sizes = [r.shape[0] for r in rows]
            parts = list(logits.split(sizes))
            out["global_logits"] = parts.pop(0)
            if patches is not None:
                out["masked_patch_logits"] = parts.pop(0)
            if "ssl_local" in inputs:
                out["local_logits"] = parts.pop(0)
        return out


class VTPTask(Task):
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
        self.teacher = self._make_teacher() if self.use_ssl else None
        self.tokenizer = model.get_tokenizer() if self.use_clip else None
        self.contrastive = ContrastiveLoss(cfg.contrastive)
        self.dino = DINOLoss(cfg.head_prototypes, cfg.student_temp)
        self.ibot = iBOTPatchLoss(cfg.head_prototypes, cfg.student_temp)
        self.koleo = KoLeoLoss()
        perceptual = None
        if composer.active("rec_lpips"):
            from unitok.losses.perceptual import LPIPS

            perceptual = LPIPS(vgg_weights=cfg.vgg_weights)  # stops at start-up, saying where the VGG file goes
        self.reconstruction = ReconstructionLoss(partial(model.adapter.denormalize, clamp=False), perceptual)
        self.momentum_at = cosine_schedule(cfg.momentum_start, cfg.momentum_end, total_steps)

    def _make_teacher(self) -> VTPStudent:
        """EMA teacher: a frozen copy of the student's trunk and head (no decoder, no text tower)."""
        model = self.student.model
        unused = [(model.autoencoder, n) for n in ("decoder", "decoder_embed", "decoder_head")]
        unused += [(model, "text"), (model, "visual_proj")]
        keep = [getattr(owner, name) for owner, name in unused]
        for owner, name in unused:
            setattr(owner, name, None)
        try:
            teacher = copy.deepcopy(self.student)
        finally:
            for (owner, name), module in zip(unused, keep, strict=True):
                setattr(owner, name, module)
        return teacher.requires_grad_(False).eval()

    def export_model(self) -> VTPModel:
        return self.student.model

    # ------------------------------------------------------------------------------------------ inputs
    @staticmethod
    def _subset(batch_size: int, size: int, device) -> torch.Tensor | None:
        if size <= 0 or size >= batch_size:
            return None
        return torch.randperm(batch_size)[:size].to(device)

    def _inputs(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        images = batch["image"]
        B, device = images.shape[0], images.device
        inputs: dict[str, torch.Tensor] = {}
        if self.use_clip:
            inputs["clip_images"] = images
            inputs["text"] = self.tokenizer(batch["text"]).to(device)
        if self.use_rec:
            idx = self._subset(B, self.cfg.rec_batch, device)
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
                idx = self._subset(B, self.cfg.ssl_batch, device)
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
    def _teacher_targets(self, inputs: dict[str, torch.Tensor], step: int):
        temp = teacher_temperature_schedule(
            step, self.cfg.teacher_temp_warmup_steps, self.cfg.teacher_temp_warmup_start, self.cfg.teacher_temp
        )
        with torch.no_grad():  # through the teacher's forward: FSDP gathers its shards there
            query = {"ssl_global": inputs["ssl_global"]}
            if "ibot_masks" in inputs:
                query["teacher_masks"] = inputs["ibot_masks"]
            out = self.teacher(query)
            cls_logits, patch_logits = out["global_logits"].float(), out.get("masked_patch_logits")
            patch_logits = patch_logits.float() if patch_logits is not None else None
            G = 2
            cls_logits = cls_logits.view(G, -1, cls_logits.shape[-1])
            # every rank makes the same collective calls, whatever its number of masked patches
            if self.cfg.centering == "sinkhorn_knopp":
                cls_t = self.dino.sinkhorn_knopp_teacher(cls_logits, temp)
                patch_t = self.ibot.sinkhorn_knopp_teacher(patch_logits, temp) if "ibot_masks" in inputs else None
            else:
                cls_t = self.dino.softmax_center_teacher(cls_logits, temp)
                self.dino.update_center(cls_logits)
                patch_t = None
                if "ibot_masks" in inputs:
                    patch_t = self.ibot.softmax_center_teacher(patch_logits, temp)
                    self.ibot.update_center(patch_logits)
        return cls_t, patch_t

    def _ssl_terms(self, inputs, out, step) -> dict[str, torch.Tensor]:
        cls_t, patch_t = self._teacher_targets(inputs, step)
        G, terms = 2, {}
        student_global = out["global_logits"].view(G, -1, out["global_logits"].shape[-1])
        if self.composer.active("dino"):
            local = out.get("local_logits")
            local = local.view(-1, student_global.shape[1], local.shape[-1]) if local is not None else None
            terms.update(self.dino.terms(student_global, local, cls_t))
        if "ibot_masks" in inputs:
            terms.update(self.ibot.terms(out["masked_patch_logits"], patch_t, inputs["ibot_masks"]))
        if self.composer.active("koleo"):
            terms.update(self.koleo.terms(out["global_cls"].view(G, -1, out["global_cls"].shape[-1])))
        return terms

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
    def before_optimizer_step(self, step: int) -> None:
        """Freeze the prototypes for the first steps (grad None: AdamW neither moves nor decays them)."""
        if self.student.head is not None and step < self.cfg.freeze_last_layer_steps:
            for p in self.student.head.last_layer_parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = self.student.model
        if m.logit_scale is not None:
            clamp_logit_scale_(m.logit_scale)
        if self.teacher is not None:
            momentum = self.momentum_at(step)
            student = dict(self.student.named_parameters())
            pairs = [(t, student[n].detach()) for n, t in self.teacher.named_parameters()]
            torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], 1.0 - momentum)
