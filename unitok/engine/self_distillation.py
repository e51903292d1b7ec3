"""Self-distillation with an EMA teacher (DINOv2: DINO on CLS tokens, iBOT on masked tokens, KoLeo), for any task.

:class:`SelfDistillationMixin` holds the modality-agnostic steps shared by the image (VTP) and speech tasks: the
teacher targets (centering or Sinkhorn-Knopp), the loss terms, the frozen prototypes of the first steps and the EMA
update of the teacher. The task supplies the crops and their masks; its trainable ``student`` has a DINO ``head``
and answers ``forward(inputs)`` with ``global_logits`` (and ``masked_patch_logits``, ``local_logits``,
``global_cls``), which :func:`head_logits` computes from the encoder outputs in one head pass. The EMA ``teacher``
runs the same forward on the ``ssl_global*`` inputs with ``teacher_masks``: the tokens whose logits it returns.

Shape legend:
    G = 2 global crops, Bs: samples with crops, L: local crops, N: tokens per global crop, K: prototypes, D: width
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unitok.engine.optim import cosine_schedule
from unitok.losses.distillation import DINOLoss, KoLeoLoss, iBOTPatchLoss, teacher_temperature_schedule

#: the loss terms of self-distillation (their composer names)
SSL_TERMS = ("dino", "ibot", "koleo")
#: global crops per sample (DINOv2)
GLOBAL_CROPS = 2


@dataclass
class SelfDistillationConfig:
    """Attributes:
    head_prototypes, head_hidden, head_bottleneck, head_layers: the shared DINO/iBOT head.
    centering: 'centering' (EMA center) or 'sinkhorn_knopp'.
    student_temp, teacher_temp, teacher_temp_warmup_start, teacher_temp_warmup_steps: temperatures.
    momentum_start, momentum_end: EMA teacher momentum (cosine over the run).
    freeze_last_layer_steps: prototypes frozen for these first steps (DINOv2: one epoch).
    mask_ratio_min, mask_ratio_max, mask_probability: iBOT block masking of the student global crops.
    """

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


def head_logits(head: nn.Module, global_out, patches: torch.Tensor | None, local_out=None) -> dict[str, torch.Tensor]:
    """One head pass over the global CLS tokens, the selected tokens of the global crops and the local CLS tokens.

    Args:
        head: the DINO head.
        global_out: encoder output of the global crops (``cls`` (G·Bs, D), ``tokens`` (G·Bs, N, D)).
        patches: (G·Bs, N) bool, the tokens whose logits are wanted (masked ones for the student), or None.
        local_out: encoder output of the local crops, or None.

    Returns:
        ``global_cls`` (G·Bs, D), ``global_logits`` (G·Bs, K), ``masked_patch_logits`` (M, K) when ``patches``,
        ``local_logits`` (L·Bs, K) when ``local_out``.
    """
    rows = [global_out.cls]
    if patches is not None:
        rows.append(global_out.tokens[patches])
    if local_out is not None:
        rows.append(local_out.cls)
    parts = list(head(torch.cat(rows)).split([r.shape[0] for r in rows]))
    out = {"global_cls": global_out.cls, "global_logits": parts.pop(0)}
    if patches is not None:
        out["masked_patch_logits"] = parts.pop(0)
    if local_out is not None:
        out["local_logits"] = parts.pop(0)
    return out


class SelfDistillationMixin:
    """DINO/iBOT/KoLeo steps for a :class:`~unitok.engine.task.Task` (see the module docstring).

    The task sets ``cfg`` (a :class:`SelfDistillationConfig`), ``composer``, ``student`` (with ``head``) and
    ``teacher`` (None without self-distillation), and calls :meth:`_init_self_distillation` in its constructor.
    """

    def _init_self_distillation(self, cfg: SelfDistillationConfig, total_steps: int) -> None:
        self.dino = DINOLoss(cfg.head_prototypes, cfg.student_temp)
        self.ibot = iBOTPatchLoss(cfg.head_prototypes, cfg.student_temp)
        self.koleo = KoLeoLoss()
        self.momentum_at = cosine_schedule(cfg.momentum_start, cfg.momentum_end, total_steps)

    def _make_teacher(self, unused: Sequence[tuple[nn.Module, str]]) -> nn.Module:
        """EMA teacher: a frozen copy of the student without the ``(owner, attribute)`` submodules it never runs."""
        keep = [getattr(owner, name) for owner, name in unused]
        for owner, name in unused:
            setattr(owner, name, None)
        try:
            teacher = copy.deepcopy(self.student)
        finally:
            for (owner, name), module in zip(unused, keep, strict=True):
                setattr(owner, name, module)
        return teacher.requires_grad_(False).eval()

    def _teacher_targets(self, inputs: dict[str, torch.Tensor], step: int):
        """(CLS targets (G, Bs, K), masked-token targets (M, K) or None) from the teacher on the global crops."""
        cfg = self.cfg
        temp = teacher_temperature_schedule(
            step, cfg.teacher_temp_warmup_steps, cfg.teacher_temp_warmup_start, cfg.teacher_temp
        )
        with torch.no_grad():  # through the teacher's forward: FSDP gathers its shards there
            query = {k: v for k, v in inputs.items() if k.startswith("ssl_global")}
            if "ibot_masks" in inputs:
                query["teacher_masks"] = inputs["ibot_masks"]
            out = self.teacher(query)
            cls_logits, patch_logits = out["global_logits"].float(), out.get("masked_patch_logits")
            patch_logits = patch_logits.float() if patch_logits is not None else None
            cls_logits = cls_logits.view(GLOBAL_CROPS, -1, cls_logits.shape[-1])
            # every rank makes the same collective calls, whatever its number of masked patches
            if cfg.centering == "sinkhorn_knopp":
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

    def _ssl_terms(self, inputs: dict[str, torch.Tensor], out: dict[str, torch.Tensor], step: int):
        """``dino_loss``, ``ibot_loss``, ``koleo_loss`` (the active ones) and their report values."""
        cls_t, patch_t = self._teacher_targets(inputs, step)
        G, terms = GLOBAL_CROPS, {}
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

    def before_optimizer_step(self, step: int) -> None:
        """Freeze the prototypes for the first steps (grad None: AdamW neither moves nor decays them)."""
        head = getattr(self.student, "head", None)
        if head is not None and step < self.cfg.freeze_last_layer_steps:
            for p in head.last_layer_parameters():
                p.grad = None

    @torch.no_grad()
    def _update_teacher(self, step: int) -> None:
        """teacher <- momentum·teacher + (1 - momentum)·student, parameter by parameter (shard-local under FSDP)."""
        if self.teacher is None:
            return
        momentum = self.momentum_at(step)
        student = dict(self.student.named_parameters())
        pairs = [(t, student[n].detach()) for n, t in self.teacher.named_parameters()]
        torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], 1.0 - momentum)
