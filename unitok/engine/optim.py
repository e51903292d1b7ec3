"""AdamW parameter groups (weight-decay exclusions, layer-wise lr decay) and per-step schedules.

Conventions (DINOv2 ``param_groups`` and open_clip): no weight decay on biases, norm weights, LayerScale gains,
the logit scale/bias and learned tokens; layer-wise lr decay ``decay ** (depth - i)`` for block ``i`` of a
stack, ``decay ** (depth + 1)`` for its embeddings and tokens, 1 for its final norm and for heads; an extra
``patch_embed_lr_mult`` on the patch embedding. Each group carries ``lr_mult`` and ``wd_mult`` that
:func:`apply_schedules` multiplies into the scheduled lr and weight decay at every step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

_NO_WD_NAMES = ("cls_token", "reg_token", "mask_token", "logit_scale", "logit_bias", "positional_embedding")


@dataclass
class OptimConfig:
    """Attributes:
    lr: peak learning rate (after warm-up).
    min_lr: final learning rate of the cosine decay.
    warmup_steps: linear lr warm-up from 0.
    weight_decay, weight_decay_end: cosine weight-decay schedule (DINOv2: 0.04 -> 0.4; equal = constant).
    betas, eps: AdamW.
    layer_decay: layer-wise lr decay (1.0 disables it).
    patch_embed_lr_mult: extra lr multiplier of the patch embedding (DINOv2: 0.2).
    grad_clip: max gradient norm (0 disables clipping).
    schedule: 'cosine' (warm-up, then half-cosine to ``min_lr``) or 'exponential' (warm-up, then
        ``lr · gamma^(step - warmup_steps)`` per optimiser step, torch's ``ExponentialLR``; ``min_lr`` unused).
    gamma: decay factor per step of the exponential schedule (DAC / Semantic-VAE: 0.999996).
    """

    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 1.0
    patch_embed_lr_mult: float = 1.0
    grad_clip: float = 0.0
    schedule: str = "cosine"
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {list(LR_SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"optim.gamma must be in (0, 1], got {self.gamma}")


#: names of the learning-rate schedules (:func:`lr_schedule`)
LR_SCHEDULES = ("cosine", "exponential")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, 1-d parameters (norms, LayerScale gains), learned tokens and CLIP temperatures get no decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf == "bias" or leaf in _NO_WD_NAMES or "norm" in name or leaf == "gamma"


def layer_id(name: str, depth: int) -> int:
    """Layer index for layer-wise lr decay: 0 for embeddings and tokens, i + 1 for block i, depth + 1 otherwise."""
    m = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    leaf = name.rsplit(".", 1)[-1]
    if "patch_embed" in name or leaf in ("cls_token", "reg_token", "mask_token") or "pos_embed" in name:
        return 0
    return depth + 1


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    patch_embed_lr_mult: float = 1.0,
    decayed_prefixes: Iterable[str] = ("autoencoder.encoder.", "autoencoder.patch_embed.", "encoder.", "patch_embed."),
    depth: int | None = None,
) -> list[dict]:
    """AdamW groups with ``lr_mult`` / ``wd_mult`` for every trainable parameter of ``model``.

    Layer-wise decay applies to parameters under ``decayed_prefixes`` (the encoder trunk and its patch embedding);
    everything else (decoder, heads, text tower) gets lr multiplier 1.

    Args:
        depth: number of blocks of the decayed trunk (found from the parameter names when None).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    prefixes = tuple(decayed_prefixes)
    if depth is None:
        ids = [
            int(m.group(1)) for n, _ in named if n.startswith(prefixes) for m in [re.search(r"blocks\.(\d+)\.", n)] if m
        ]
        depth = max(ids) + 1 if ids else 0
    groups: dict[tuple[float, float], dict] = {}
    for name, p in named:
        lr_mult = 1.0
        if layer_decay != 1.0 and name.startswith(prefixes):
            lr_mult = layer_decay ** (depth + 1 - layer_id(name, depth))
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if no_weight_decay(name, p) else 1.0
        key = (lr_mult, wd_mult)
        group = groups.setdefault(key, {"params": [], "names": [], "lr_mult": lr_mult, "wd_mult": wd_mult})
        group["params"].append(p)
        group["names"].append(name)
    return [dict(g, weight_decay=weight_decay * g["wd_mult"]) for g in groups.values()]


def build_adamw(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused when every parameter is on one device type (CUDA, or CPU without
    FSDP's DTensors): one kernel per step instead of a dozen per tensor."""
    from torch.distributed.tensor import DTensor

    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, cfg.patch_embed_lr_mult)
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    fused = devices == {"cuda"} or (devices == {"cpu"} and not any(isinstance(p, DTensor) for p in params))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, start_warmup: float = 0.0
) -> Callable[[int], float]:
    """DINOv2's scheduler: linear warm-up ``start_warmup -> base`` then half-cosine ``base -> final``; final after.

    The warm-up is an inclusive linspace over ``warmup_steps`` values, as upstream (its last step is ``base``).
    """
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")

    def value(step: int) -> float:
        if step < warmup_steps:
            return start_warmup + (base - start_warmup) * step / max(1, warmup_steps - 1)
        if step >= total_steps:
            return final
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t))

    return value


def exponential_schedule(base: float, gamma: float, warmup_steps: int = 0) -> Callable[[int], float]:
    """Linear warm-up from 0 (as :func:`cosine_schedule`), then ``base · gamma^(step - warmup_steps)``.

    Without warm-up this is torch's ``ExponentialLR`` stepped once per optimiser step (value at step 0: ``base``).
    """

    def value(step: int) -> float:
        if step < warmup_steps:
            return base * step / max(1, warmup_steps - 1)
        return base * gamma ** (step - warmup_steps)

    return value


def lr_schedule(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The learning rate of every optimiser step for ``cfg.schedule``."""
    if cfg.schedule == "exponential":
        return exponential_schedule(cfg.lr, cfg.gamma, cfg.warmup_steps)
    return cosine_schedule(cfg.lr, cfg.min_lr, total_steps, cfg.warmup_steps)


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's lr and weight decay from the scheduled values and the group's multipliers."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
        g["weight_decay"] = weight_decay * g.get("wd_mult", 1.0)
